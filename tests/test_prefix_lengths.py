"""Per-layer prefix lengths (PT-2*): each layer owns l_i pseudo tokens, a layer with 0 runs as the host's."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach, load_adapter
from adaprefix.config import ConfigError
from adaprefix.introspect import effective_gates, last_token_gates
from test_equivalence import _reference_bert_apt
from tiny_models import tiny_batch, tiny_model


def _per_layer_past(model):
    """Each layer's (key, value), (1, heads, l_i, head_dim), from its raw (l_i, 2 * kv_dim) parameter by the
    documented layout (pseudo token, key|value, head, head_dim), independently of PrefixEncoder.forward."""
    heads = model.config.num_attention_heads
    past = []
    for weight in model.adaprefix.prefix.embedding:
        kv = weight.detach().view(weight.shape[0], 2, heads, weight.shape[1] // (2 * heads))  # (l_i, 2, H, hd)
        past.append((kv[:, 0].transpose(0, 1).unsqueeze(0), kv[:, 1].transpose(0, 1).unsqueeze(0)))
    return past


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("lengths", [[3, 5, 1], [0, 4, 2], [6, 0, 0]])
def test_apt_with_per_layer_lengths_matches_the_hand_written_reference(impl, lengths):
    model = tiny_model("bert", impl)
    attach(model, AdaptivePrefixConfig(prefix_lengths=lengths, token_gate_weight_std=0.5, prefix_dropout=0.0))
    a = model.adaprefix
    with torch.no_grad():
        for bias in a.token_gate.bias:
            bias.normal_()
        a.layer_gate.scale.uniform_(0.3, 2.0)
    ids, mask = tiny_batch()
    reference = _reference_bert_apt(model, ids, mask, _per_layer_past(model), [w.detach() for w in a.token_gate.weight],
                                    [b.detach() for b in a.token_gate.bias], a.layer_gate.scale.detach())
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, reference, rtol=1e-5, atol=1e-6)


def test_a_layer_without_prefix_runs_exactly_as_the_base_model():
    model = tiny_model("llama", "sdpa")
    ids, mask = tiny_batch(pad_last=0)
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_lengths=[0, 3, 2]))
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.equal(ours[1], base[1])  # layer 1 has no prefix
    assert not torch.allclose(ours[2], base[2])  # layer 2 has one


def test_parameters_are_exactly_the_layers_pseudo_tokens():
    model = tiny_model("bert", "eager")
    kv_dim = model.config.hidden_size
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier"))
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_lengths=[2, 7, 0]))
    assert model.trainable_parameter_count() == (2 + 7 + 0) * 2 * kv_dim + head
    assert model.adapter_config.prefix_length == 7


def test_gradients_reach_every_layer_s_prefix_and_nothing_frozen():
    model = tiny_model("gpt2", "eager")
    attach(model, AdaptivePrefixConfig(method="apt", prefix_lengths=[3, 1, 2], prefix_dropout=0.0))
    ids, mask = tiny_batch(pad_last=0)
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == p.requires_grad, name


def test_saved_per_layer_adapter_reloads_to_identical_outputs(tmp_path):
    model = tiny_model("bert", "eager")
    attach(model, AdaptivePrefixConfig(prefix_lengths=[4, 0, 1], prefix_dropout=0.0)).eval()
    ids, mask = tiny_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    model.save_adapter(tmp_path)
    fresh = load_adapter(tiny_model("bert", "eager"), tmp_path).eval()
    assert fresh.adapter_config.prefix_lengths == [4, 0, 1]
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, expected)


def test_gate_introspection_marks_missing_pseudo_tokens_as_nan():
    model = tiny_model("bert", "eager")
    attach(model, AdaptivePrefixConfig(prefix_lengths=[2, 0, 1])).eval()
    ids, mask = tiny_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    gates = last_token_gates(model)  # (B, layers, longest)
    assert gates.shape == (ids.shape[0], 3, 2)
    assert torch.isfinite(gates[:, 0]).all() and torch.isnan(gates[:, 1]).all()
    assert torch.isfinite(gates[:, 2, 0]).all() and torch.isnan(gates[:, 2, 1]).all()
    assert torch.isnan(effective_gates(model, gates)[1]).all()


@pytest.mark.parametrize("kwargs,message", [
    ({"prefix_lengths": []}, "one integer >= 0 per layer"),
    ({"prefix_lengths": [0, 0]}, "at least one > 0"),
    ({"prefix_lengths": [2, -1]}, "one integer >= 0 per layer"),
    ({"prefix_lengths": [2, 1.5]}, "one integer >= 0 per layer"),
    ({"prefix_lengths": [2, 2], "prefix_projection": True}, "cannot be combined"),
])
def test_bad_per_layer_lengths_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AdaptivePrefixConfig(**kwargs)


def test_lengths_for_another_number_of_layers_are_refused_at_attach():
    with pytest.raises(ConfigError, match=r"prefix_lengths: expected one length per layer \(3\), got 2"):
        attach(tiny_model("bert", "eager"), AdaptivePrefixConfig(prefix_lengths=[1, 2]))


@pytest.mark.parametrize("name", ["deberta-v2", "mpnet"])  # the patched attentions
def test_patched_layer_without_prefix_runs_as_the_host_s(name):
    model = tiny_model(name, "eager")
    ids, mask = tiny_batch()
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    attach(model, AdaptivePrefixConfig(prefix_lengths=[0, 2, 1], prefix_dropout=0.0))
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.equal(ours[1], base[1]) and not torch.allclose(ours[2], base[2])


def test_generation_with_per_layer_lengths_equals_recomputation():
    model = attach(tiny_model("llama", "sdpa"), AdaptivePrefixConfig(prefix_lengths=[2, 0, 3])).eval()
    ids, mask = tiny_batch(pad_last=0)
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
        recomputed = model(input_ids=generated).logits[:, ids.shape[1] - 1:-1].argmax(-1)
    assert torch.equal(recomputed, generated[:, ids.shape[1]:])
