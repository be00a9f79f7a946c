"""Gate-pruned adapters (adaprefix.pruning): removing the tokens whose exact gates are 0 changes nothing."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, ConfigError, attach, load_adapter
from adaprefix.pruning import PruningWarning, max_gates, prune_adapter
from tiny_models import DECODERS, tiny_batch, tiny_model

OPEN, SHUT = 30.0, -200.0  # token-gate biases whose sigmoid is exactly 1.0 and 0.0 in float32
PATTERN = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 0, 1, 0]], dtype=torch.bool)


def _batches(name):
    ids, mask = tiny_batch(pad_last=0 if name in DECODERS else 3)
    return [dict(input_ids=ids, attention_mask=mask)]


def _exact_with_pattern(name, pattern=PATTERN):
    model = attach(tiny_model(name, "sdpa"), AdaptivePrefixConfig(gate_mode="exact", prefix_length=5,
                                                                  prefix_dropout=0.0, prefix_init_std=1.0))
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(torch.tensor([0.7, -1.2, 2.0]))
        model.adaprefix.token_gate.weight.zero_()
        model.adaprefix.token_gate.bias.copy_(torch.where(pattern, OPEN, SHUT))
    return model


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_removing_tokens_whose_gates_are_exactly_0_changes_nothing(name, tmp_path):
    model = _exact_with_pattern(name)
    batch = _batches(name)[0]
    with torch.no_grad():
        before = model(**batch).logits
    params_before = model.trainable_parameter_count()
    result = prune_adapter(model, _batches(name), threshold=0.0)
    assert result.kept == [[0, 2], [], [0, 1, 3]] and result.lengths == [2, 0, 3]
    assert model.adapter_config.prefix_lengths == [2, 0, 3]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=1e-5, atol=1e-6)
    assert model.trainable_parameter_count() < params_before
    model.save_adapter(tmp_path)  # a pruned adapter is an ordinary one with per-layer lengths
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(tiny_model(name, "sdpa"), tmp_path)(**batch).logits, before,
                                   rtol=1e-5, atol=1e-6)


def test_a_pruned_adapter_keeps_its_name(tmp_path):
    _exact_with_pattern("bert").save_adapter(tmp_path / "trained")
    model = load_adapter(tiny_model("bert", "sdpa"), tmp_path / "trained", adapter_name="mine")
    prune_adapter(model, _batches("bert"), threshold=0.0)
    assert model.active_adapter == "mine" and list(model.peft_config) == ["mine"]


def test_the_largest_gate_over_examples_and_positions_decides():
    model = _exact_with_pattern("llama", torch.ones_like(PATTERN))
    gates = max_gates(model, _batches("llama"))
    torch.testing.assert_close(gates, torch.tensor([0.7, 1.2, 2.0])[:, None].expand(3, 5))
    with torch.no_grad():  # token 4 of layer 0: a gate of 0.7 * sigmoid(-3) ~ 0.033 everywhere
        model.adaprefix.token_gate.bias[0, 4] = -3.0
    result = prune_adapter(model, _batches("llama"), threshold=0.05)
    assert result.kept == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert abs(float(result.max_gates[0, 4]) - 0.7 * float(torch.sigmoid(torch.tensor(-3.0)))) < 1e-6


def test_what_cannot_be_pruned_is_refused_by_name():
    with pytest.raises(ConfigError, match="threshold: expected a number >= 0, got -0.1"):
        prune_adapter(_exact_with_pattern("bert"), _batches("bert"), threshold=-0.1)
    with pytest.raises(ConfigError, match="no pseudo token's gate exceeds threshold 5 .*use a lower threshold"):
        prune_adapter(_exact_with_pattern("bert"), _batches("bert"), threshold=5)
    pt2 = attach(tiny_model("bert", "sdpa"), AdaptivePrefixConfig(method="pt2", prefix_length=3))
    with pytest.raises(ConfigError, match=r"^prune: method 'pt2' has no gate to prune by; train an apt adapter "
                                          r"\(gate_mode 'exact'\)$"):
        prune_adapter(pt2, _batches("bert"), threshold=0.1)
    scaled = attach(tiny_model("bert", "sdpa"), AdaptivePrefixConfig(prefix_length=3))
    with pytest.warns(PruningWarning, match="gate_mode 'scale'"):
        prune_adapter(scaled, _batches("bert"), threshold=0.1)
