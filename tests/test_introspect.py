"""Gate introspection: per-layer lambda and per-example token gates."""

import pytest
import torch

from adaprefix import (AdapterRoutingError, AdaptivePrefixConfig, ConfigError, adapter_runtime, attach,
                       collect_token_gates, effective_gates, last_token_gates, layer_gates)
from tiny_models import tiny_batch, tiny_model


def test_gates_report_what_the_forward_used():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=0.0))
    with torch.no_grad():
        model.adaprefix.token_gate.bias.copy_(torch.linspace(-2, 2, 12).view(3, 4))
        model.adaprefix.layer_gate.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))
    ids, mask = tiny_batch()
    model(input_ids=ids, attention_mask=mask)
    expected = torch.sigmoid(torch.linspace(-2, 2, 12).view(3, 4))
    gates = last_token_gates(model)
    assert gates.shape == (2, 3, 4)
    torch.testing.assert_close(gates, expected.expand(2, 3, 4))
    torch.testing.assert_close(layer_gates(model), torch.tensor([0.5, 1.0, 2.0]))
    torch.testing.assert_close(effective_gates(model, gates), expected * torch.tensor([[0.5], [1.0], [2.0]]))


def test_token_gates_depend_on_the_input_and_collect_over_batches():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=1.0))
    batches = [dict(zip(("input_ids", "attention_mask"), tiny_batch(seed=s))) for s in (1, 2)]
    gates = collect_token_gates(model, batches)
    assert gates.shape == (4, 3, 4)
    assert not torch.allclose(gates[0], gates[1]), "the token gate is computed per example"


def test_decoder_per_query_gates_are_summarised_over_real_tokens():
    model = attach(tiny_model("llama"), AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=1.0))
    ids, mask = tiny_batch()  # the second example has 3 padding positions
    model(input_ids=ids, attention_mask=mask)
    per_query = adapter_runtime(model).token_gates[0]  # (B, T, l)
    summary = last_token_gates(model)
    assert summary.shape == (2, 3, 4)
    torch.testing.assert_close(summary[0, 0], per_query[0].mean(0))
    torch.testing.assert_close(summary[1, 0], per_query[1, :6].mean(0))  # padding positions left out


def test_collect_refuses_a_method_without_token_gate():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method="pt2", prefix_length=4))
    assert layer_gates(model) is None
    with pytest.raises(ConfigError, match="method: 'pt2' has no token gate to collect"):
        collect_token_gates(model, [dict(zip(("input_ids", "attention_mask"), tiny_batch()))])


def test_last_token_gates_after_a_forward_with_adapter_names_is_refused():
    # A routed forward records no gates (its rows may run adapters whose gates differ in shape); the gates of the
    # forward before it must not be handed out as its own.
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=1.0))
    ids, mask = tiny_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        before = last_token_gates(model)
        model(input_ids=ids[:1], attention_mask=mask[:1], adapter_names=["default"])
        with pytest.raises(AdapterRoutingError, match="last_token_gates: the last forward ran with adapter_names"):
            last_token_gates(model)
        model(input_ids=ids, attention_mask=mask)  # a plain forward records its gates again
    torch.testing.assert_close(last_token_gates(model), before)
