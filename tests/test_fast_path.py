"""The fused per-query path for decoders against the eager reference; per-forward work done once, not per layer."""

import pytest
import torch
from transformers import DynamicCache

import adaprefix.attention as seam
from adaprefix import AdaptivePrefixConfig, attach
from adaprefix.attention import (ForwardState, LayerPrefix, explicit_mask, fast_path, fused_per_query_gated_attention,
                                 per_query_gated_attention)
from tiny_models import DECODERS, tiny_model

L = 4


def _inputs(batch=3, heads=4, kv_heads=2, q_len=6, key_len=6, hd=8, l=L, prefix_batch=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_len, heads, hd, generator=g).transpose(1, 2)  # laid out as the host models make it
    k = torch.randn(batch, kv_heads, key_len, hd, generator=g)
    v = torch.randn(batch, kv_heads, key_len, hd, generator=g)
    pk = torch.randn(prefix_batch, kv_heads, l, hd, generator=g) * 2
    pv = torch.randn(prefix_batch, kv_heads, l, hd, generator=g)
    gate = torch.rand(batch, q_len, l, generator=g) * 2.5 - 0.5  # includes negative gates (lambda is unconstrained)
    return [t.to(dtype) for t in (q, k, v, pk, pv, gate)]


def _left_padded_causal(batch, q_len, key_len, pad=3):
    """Bottom-right aligned causal mask; the first example left-padded by `pad` keys (its first queries see none)."""
    rows = torch.arange(q_len).unsqueeze(1) + (key_len - q_len)
    mask = (torch.arange(key_len).unsqueeze(0) <= rows).expand(batch, 1, q_len, key_len).clone()  # (B, 1, T, S)
    mask[0, ..., :pad] = False
    return mask


def _module(causal=True, training=False):
    module = torch.nn.Module().train(training)
    module.is_causal = causal
    return module


def _both(module, q, k, v, pk, pv, gate, mask):
    prefix = LayerPrefix(pk, pv, gate)
    fused, weights = fused_per_query_gated_attention(module, q, k, v, mask, prefix, scaling=0.3)
    reference_mask = explicit_mask(mask, q, k.shape[2], module.is_causal)
    reference, _ = per_query_gated_attention(module, q, k, v, reference_mask, prefix, scaling=0.3)
    assert weights is None
    return fused, reference


CASES = {
    "prefill, causal bool mask, left padding": dict(q_len=6, key_len=6, mask="padded"),
    "prefill, additive float mask": dict(q_len=6, key_len=6, mask="additive"),
    "prefill, no mask (causal flag)": dict(q_len=6, key_len=6, mask=None),
    "chunk after a cache, no mask": dict(q_len=3, key_len=7, mask=None),
    "chunk after a cache, padded": dict(q_len=3, key_len=7, mask="padded"),
    "decode step, padded": dict(q_len=1, key_len=9, mask="padded"),
    "decode step, no mask": dict(q_len=1, key_len=9, mask=None),
    "multi-head (no grouping)": dict(q_len=5, key_len=5, kv_heads=4, mask="padded"),
    "decode, multi-head": dict(q_len=1, key_len=5, kv_heads=4, mask="padded"),
    "per-example prefix (prefix dropout)": dict(q_len=5, key_len=5, prefix_batch=3, mask="padded"),
    "decode, per-example prefix": dict(q_len=1, key_len=5, prefix_batch=3, mask="padded"),
}


def _case(spec, dtype=torch.float32):
    spec = dict(spec)
    kind = spec.pop("mask")
    tensors = _inputs(**spec, dtype=dtype)
    q, k = tensors[0], tensors[1]
    mask = None
    if kind is not None:
        mask = _left_padded_causal(q.shape[0], q.shape[2], k.shape[2])
        if kind == "additive":
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return tensors, mask


@pytest.mark.parametrize("case", list(CASES))
def test_fused_path_equals_the_eager_reference(case):
    (q, k, v, pk, pv, gate), mask = _case(CASES[case])
    fused, reference = _both(_module(), q, k, v, pk, pv, gate, mask)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_fused_path_in_bfloat16_stays_close_to_the_float32_reference():
    (q, k, v, pk, pv, gate), mask = _case(CASES["prefill, causal bool mask, left padding"])
    _, reference = _both(_module(), q, k, v, pk, pv, gate, mask)
    low = [t.to(torch.bfloat16) for t in (q, k, v, pk, pv, gate)]
    fused, _ = fused_per_query_gated_attention(_module(), *low[:3], mask, LayerPrefix(*low[3:]), scaling=0.3)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("case", list(CASES))
def test_fused_path_gradients_equal_the_eager_references(case):
    (q, k, v, pk, pv, gate), mask = _case(CASES[case])  # float32: the eager softmax runs in float32 anyway
    leaves = [t.detach().requires_grad_() for t in (q, k, v, pk, pv, gate)]
    upstream = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    grads = []
    for run in ("fused", "eager"):
        for t in leaves:
            t.grad = None
        out = _both(_module(), *leaves, mask)[0 if run == "fused" else 1]
        (out * upstream).sum().backward()
        grads.append([t.grad.clone() for t in leaves])
    for name, fused, eager in zip(("q", "k", "v", "prefix keys", "prefix values", "gate"), *grads):
        torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_fused_backward_passes_gradcheck():
    (q, k, v, pk, pv, gate), mask = _case(dict(q_len=3, key_len=5, mask="padded", batch=2, hd=4), dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (q, k, v, pk, pv, gate)]

    def fused(*tensors):
        return fused_per_query_gated_attention(_module(), *tensors[:3], mask, LayerPrefix(*tensors[3:]), scaling=0.3)[0]

    assert torch.autograd.gradcheck(fused, leaves)


# -- in the models -------------------------------------------------------------------------------------------------


class _Spy:
    """Counts which implementation each per-query attention call took."""

    def __init__(self, monkeypatch):
        self.calls = {"fused": 0, "eager": 0}
        fused, eager = seam.fused_per_query_gated_attention, seam.per_query_gated_attention

        def count(kind, fn):
            def wrapped(*args, **kwargs):
                self.calls[kind] += 1
                return fn(*args, **kwargs)
            return wrapped

        monkeypatch.setattr(seam, "fused_per_query_gated_attention", count("fused", fused))
        monkeypatch.setattr(seam, "per_query_gated_attention", count("eager", eager))

    def reset(self):
        self.calls = {"fused": 0, "eager": 0}


def _apt_model(name, impl, **overrides):
    model = tiny_model(name, impl, **overrides)
    attach(model, AdaptivePrefixConfig(prefix_length=L, prefix_init_std=3.0, token_gate_weight_std=0.5,
                                       prefix_dropout=0.0))
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.uniform_(-0.5, 2.0)  # includes a negative lambda
    return model


def _left_padded_batch():
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", DECODERS)
def test_prefill_and_every_decode_step_equal_the_eager_path(name, impl, monkeypatch):
    spy = _Spy(monkeypatch)
    model = _apt_model(name, impl)
    ids, mask = _left_padded_batch()
    steps = torch.tensor([[20, 21, 22, 23], [30, 31, 32, 33]])
    layers = model.config.num_hidden_layers
    logits = {}
    with torch.no_grad():
        for on in (True, False):
            spy.reset()
            with fast_path(on):
                cache, seen = DynamicCache(config=model.config), mask
                logits[on] = [model(input_ids=ids, attention_mask=seen, cache=cache, use_cache=True).logits]
                for t in range(steps.shape[1]):  # one token at a time against the cache
                    seen = torch.cat([seen, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
                    logits[on].append(model(input_ids=steps[:, t:t + 1], attention_mask=seen, cache=cache,
                                            use_cache=True).logits)
            calls = layers * (1 + steps.shape[1])
            assert spy.calls == ({"fused": calls, "eager": 0} if on else {"fused": 0, "eager": calls})
    for step, (fused, eager) in enumerate(zip(logits[True], logits[False])):
        # every position, the left-padded ones included (they see only the prefix on both paths)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {step}: {m}")


@pytest.mark.parametrize("name", DECODERS)
def test_left_padded_generation_is_the_same_on_both_paths(name):
    model = _apt_model(name, "sdpa")
    ids, mask = _left_padded_batch()
    runs = {}
    for on in (True, False):
        with fast_path(on):
            runs[on] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                      pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    for fused, eager in zip(runs[True].scores, runs[False].scores):
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_gradients_reach_exactly_the_trainable_parameters_and_match_the_eager_path(name, monkeypatch):
    spy = _Spy(monkeypatch)
    model = _apt_model(name, "sdpa").train()
    ids, mask = _left_padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    grads = {}
    for on in (True, False):
        model.zero_grad(set_to_none=True)
        spy.reset()
        with fast_path(on):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        assert spy.calls["fused" if on else "eager"] == model.config.num_hidden_layers
        grads[on] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(grads[True]) == trainable
    assert set(grads[False]) == trainable
    for n in trainable:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", ["llama", "gpt2"])  # GPT-2 does not pass output_attentions to its attention
def test_requested_attention_weights_come_from_the_eager_path(name, monkeypatch):
    spy = _Spy(monkeypatch)
    model = _apt_model(name, "sdpa")
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        plain = model(input_ids=ids, attention_mask=mask)
    layers = model.config.num_hidden_layers
    assert spy.calls == {"fused": layers, "eager": layers}
    assert len(out.attentions) == layers and out.attentions[0].shape[-1] == L + ids.shape[1]
    torch.testing.assert_close(out.logits, plain.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,field", [("llama", "attention_dropout"), ("gpt2", "attn_pdrop")])
def test_attention_dropout_in_training_takes_the_eager_path_and_eval_the_fused_one(name, field, monkeypatch):
    spy = _Spy(monkeypatch)
    model = _apt_model(name, "sdpa", **{field: 0.3})
    ids, mask = _left_padded_batch()
    model.train()
    model(input_ids=ids, attention_mask=mask)
    layers = model.config.num_hidden_layers
    assert spy.calls == {"fused": 0, "eager": layers}
    spy.reset()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert spy.calls == {"fused": layers, "eager": 0}


def test_the_mask_is_converted_once_per_forward_not_once_per_layer(monkeypatch):
    made = []
    real = seam.additive_mask
    monkeypatch.setattr(seam, "additive_mask", lambda *a: made.append(1) or real(*a))
    model = _apt_model("llama", "sdpa")
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        assert len(made) == 1
        model(input_ids=ids, attention_mask=mask)
    assert len(made) == 2, "a new forward converts its own mask"


def test_forward_state_never_hands_out_another_tensors_result():
    state = ForwardState()
    first = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    converted = state.additive_mask(first, torch.float32)
    assert state.additive_mask(first, torch.float32) is converted
    first[0, 0, 0, 1] = False  # changed in place: its version moved on
    torch.testing.assert_close(state.additive_mask(first, torch.float32)[0, 0, 0, 1],
                               torch.tensor(torch.finfo(torch.float32).min))
    other = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    assert state.additive_mask(other, torch.float32).min() < 0


def test_the_gates_padding_weights_are_sliced_and_cast_once_per_forward(monkeypatch):
    import adaprefix.adapter as adapter_module  # where the layer's prefix is gated

    made = []
    real = adapter_module.padding_weights
    monkeypatch.setattr(adapter_module, "padding_weights", lambda *a: made.append(1) or real(*a))
    model = tiny_model("bert", "sdpa")  # an encoder: its gate pools a masked mean
    attach(model, AdaptivePrefixConfig(prefix_length=L, token_gate_weight_std=0.5))
    ids, mask = _left_padded_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert len(made) == 1 and model.config.num_hidden_layers > 1


@pytest.mark.parametrize("option", ["softcap", "sinks", "s_aux"])
def test_options_the_fused_kernel_lacks_send_a_call_to_the_per_query_path(option):
    q, k, v, pk, pv, gate = _inputs()
    prefix = LayerPrefix(pk, pv, gate, shared=ForwardState())
    assert seam.fast_path_blocker(_module(), q, k, v, None, prefix) is None  # the fused path otherwise
    assert seam.fast_path_blocker(_module(), q, k, v, None, prefix, **{option: torch.ones(4)}) == \
        "softcap / attention sinks"
