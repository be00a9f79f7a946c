"""The hand-written attention paths (per-query gates, DeBERTa): attention dropout, and the weights they report."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from adaprefix.attention import (LayerPrefix, _inner_function, explicit_mask, fast_path, layer_site,
                                 per_query_gated_attention, prefix_attention, widen_mask)
from tiny_models import tiny_batch, tiny_model

P = 0.5


def _random_inputs(batch=2, heads=4, kv_heads=2, length=6, hd=8, l=3):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, length, hd)
    k, v = torch.randn(batch, kv_heads, length, hd), torch.randn(batch, kv_heads, length, hd)
    prefix = LayerPrefix(torch.randn(1, kv_heads, l, hd), torch.randn(1, kv_heads, l, hd), torch.rand(batch, length, l))
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    return q, k, v, causal, prefix


@pytest.mark.parametrize("training", [False, True])
def test_per_query_weights_reported_are_the_ones_the_output_is_made_of(training):
    q, k, v, causal, prefix = _random_inputs()
    module = torch.nn.Module().train(training)
    out, weights = per_query_gated_attention(module, q, k, v, causal, prefix, dropout=P)
    rep = q.shape[1] // k.shape[1]
    values = torch.cat([prefix.values.expand(2, -1, -1, -1), v], dim=2).repeat_interleave(rep, dim=1)
    torch.testing.assert_close(out, (weights @ values).transpose(1, 2), rtol=1e-5, atol=1e-6)
    if not training:  # gates below one scale the prefix columns: rows no longer sum to one
        assert torch.all(weights.sum(-1) < 1.0)


def test_per_query_attention_dropout_drops_at_the_configured_rate():
    q, k, v, causal, prefix = _random_inputs(batch=8, length=16, l=16)
    module = torch.nn.Module()
    _, plain = per_query_gated_attention(module.eval(), q, k, v, causal, prefix, dropout=P)
    _, dropped = per_query_gated_attention(module.train(), q, k, v, causal, prefix, dropout=P)
    visible = plain > 0
    zeroed = (dropped[visible] == 0).float().mean().item()
    assert abs(zeroed - P) < 0.05, zeroed
    kept = dropped[visible & (dropped > 0)] / plain[visible & (dropped > 0)]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - P)))


def _attention_in_a_model(name, **overrides):
    model = tiny_model(name, "eager", **overrides)
    attach(model, AdaptivePrefixConfig(prefix_length=8, prefix_dropout=0.0, token_gate_weight_std=0.5))
    ids, mask = tiny_batch(batch=4, length=12, pad_last=0)
    return model, ids, mask


@pytest.mark.parametrize("name,field", [("llama", "attention_dropout"), ("deberta-v2", "attention_probs_dropout_prob"),
                                        ("mpnet", "attention_probs_dropout_prob")])
def test_hand_written_paths_apply_the_models_attention_dropout(name, field):
    model, ids, mask = _attention_in_a_model(name, **{field: P})
    model.train()
    torch.manual_seed(0)
    first = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    second = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert not torch.allclose(first.logits, second.logits), "training forwards must differ by attention dropout"
    for dropped in first.attentions:
        prefix_columns = dropped[..., :8]  # always visible, gates > 0: any zero here is dropout
        zeroed = (prefix_columns == 0).float().mean().item()
        assert abs(zeroed - P) < 0.1, zeroed


# Per-query gates take the fused path where it applies, else the hand-written eager one: both are checked.
@pytest.mark.parametrize("gated", [None, "fused", "eager"])
@pytest.mark.parametrize("length", [2, 5])  # 2: the shortest prompt whose causal mask is not trivial
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_seam_keeps_a_causal_module_causal_without_a_mask_and_leaves_modules_without_prefix_alone(impl, length,
                                                                                                  gated):
    model = attach(tiny_model("llama", impl), AdaptivePrefixConfig(prefix_length=3))
    module = model.model.layers[0].self_attn
    torch.manual_seed(0)
    batch, hd = 2, module.head_dim
    q = torch.randn(batch, 4, length, hd)
    k, v = torch.randn(batch, 2, length, hd), torch.randn(batch, 2, length, hd)
    gate = torch.rand(batch, length, 3) if gated else None
    layer_site(module).prefix = LayerPrefix(torch.randn(1, 2, 3, hd), torch.randn(1, 2, 3, hd), query_gate=gate)
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    with fast_path(gated != "eager"):
        expected, _ = prefix_attention(impl, module, q, k, v, causal, scaling=hd**-0.5, dropout=0.0)
        # No mask at all: keys outnumber queries, so causality must not be left to sdpa's top-left is_causal.
        unmasked, _ = prefix_attention(impl, module, q, k, v, None, scaling=hd**-0.5, dropout=0.0)
    torch.testing.assert_close(unmasked, expected)

    layer_site(module).prefix = None  # no prefix for this call: exactly the host's own kernel
    host = _inner_function(type(module), impl)
    plain, _ = prefix_attention(impl, module, q, k, v, causal, scaling=hd**-0.5, dropout=0.0)
    torch.testing.assert_close(plain, host(module, q, k, v, causal, scaling=hd**-0.5, dropout=0.0)[0], rtol=0, atol=0)


@pytest.mark.parametrize("option", ["softcap", "sinks", "s_aux"])
def test_per_query_path_refuses_options_it_does_not_implement(option):
    q, k, v, causal, prefix = _random_inputs()
    with pytest.raises(NotImplementedError, match=option):
        per_query_gated_attention(torch.nn.Module(), q, k, v, causal, prefix, **{option: 1.0})


@pytest.mark.parametrize("fused", [False, True])
def test_an_integer_4d_mask_keeps_its_ones_and_drops_its_zeros_on_the_per_query_path(fused):
    """1 keep, 0 drop, as a 2D padding mask reads: the same as the bool mask, not added to the scores."""
    from adaprefix.attention import fast_path, gated_attention

    q, k, v, causal, prefix = _random_inputs()
    module = torch.nn.Module().eval()
    with fast_path(fused), torch.no_grad():
        as_bool, _ = gated_attention(module, q, k, v, causal, prefix)
        as_int, _ = gated_attention(module, q, k, v, causal.long(), prefix)
    torch.testing.assert_close(as_int, as_bool, rtol=1e-6, atol=1e-6)


def test_a_float64_model_gets_float64_attention_probabilities():
    q, k, v, causal, prefix = (x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                               for x in _random_inputs())
    prefix = LayerPrefix(prefix.keys.double(), prefix.values.double(), prefix.query_gate.double())
    out, weights = per_query_gated_attention(torch.nn.Module().eval(), q, k, v, causal, prefix)
    # The reference in float64 by hand: one softmax over [gated prefix logits; masked real logits].
    rep = q.shape[1] // k.shape[1]
    pk, pv = (x.expand(2, -1, -1, -1).repeat_interleave(rep, dim=1) for x in (prefix.keys, prefix.values))
    kr, vr = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    gate = prefix.query_gate.unsqueeze(1)
    logits = torch.cat([(q @ pk.transpose(-1, -2)) * 8**-0.5 * gate,
                        ((q @ kr.transpose(-1, -2)) * 8**-0.5).masked_fill(~causal, float("-inf"))], dim=-1)
    probs = torch.softmax(logits, dim=-1)
    expected = probs[..., :3] * gate @ pv + probs[..., 3:] @ vr
    assert weights.dtype == torch.float64
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_explicit_mask_is_bottom_right_causal_only_where_the_host_gave_none():
    query = torch.zeros(1, 1, 2, 4)  # 2 new queries after 3 cached keys
    expected = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    assert torch.equal(explicit_mask(None, query, 5, causal=True), expected[None, None])
    assert explicit_mask(None, query[:, :, :1], 5, causal=True) is None  # one query sees every key: nothing to hide
    assert explicit_mask(None, query, 5, causal=False) is None
    given = torch.ones(1, 1, 2, 5, dtype=torch.bool)
    assert explicit_mask(given, query, 5, causal=True) is given


@pytest.mark.parametrize("dtype", [torch.bool, torch.float16, torch.bfloat16, torch.float32])
def test_widen_mask_puts_visible_columns_first_in_the_mask_s_own_dtype(dtype):
    keep = torch.tensor([[True, False, True]])[None, None]  # (1, 1, 1, 3)
    mask = keep if dtype == torch.bool else torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, -1e4)
    widened = widen_mask(mask, 2)
    assert widened.dtype == dtype and widened.shape == (1, 1, 1, 5)
    assert torch.equal(widened[..., 2:], mask)
    visible = torch.ones(1, 1, 1, 2, dtype=torch.bool) if dtype == torch.bool else torch.zeros(1, 1, 1, 2, dtype=dtype)
    assert torch.equal(widened[..., :2], visible)
    assert widen_mask(None, 2) is None
