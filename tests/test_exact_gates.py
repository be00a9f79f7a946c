"""Exact gates (``gate_mode="exact"``): pseudo token j gets the unnormalised attention weight g_j * exp(q.k_j / sqrt(d)).

The references are independent of the gate code: P-tuning v2 with the same prefix (g = 1), with each pseudo token
written twice (g = 2: two identical columns carry exactly twice the weight), or with the gated-off tokens left out
(g = 0 for some tokens). The start at the frozen model (g = 0 everywhere) is tested with the separate gates' in
test_frozen_start.py.
"""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, adapter_runtime, attach, layer_gates
from adaprefix.attention import fast_path
from adaprefix.gates import nonnegative
from test_multi import _alone, _check_rows, _multi, _save_adapters
from tiny_models import DECODERS, MATRIX, logits_of, tiny_batch, tiny_inputs, tiny_model

OPEN, SHUT = 30.0, -200.0  # token-gate biases whose sigmoid is exactly 1.0 and 0.0 in float32


def _set_gates(model, lam: float, open_tokens: torch.Tensor | None = None):
    """lambda = ``lam`` in every layer; alpha exactly 1 on ``open_tokens`` (N, l) bools, exactly 0 elsewhere."""
    adapter = model.adaprefix
    with torch.no_grad():
        adapter.layer_gate.scale.fill_(lam)
        if adapter.token_gate is not None:
            adapter.token_gate.weight.zero_()
            adapter.token_gate.bias.copy_(torch.where(open_tokens, OPEN, SHUT))


def _pt2_with(model_name, impl, flat_prefix: torch.Tensor, lengths: list[int] | None = None, per_layer=None):
    """A fresh model with a pt2 adapter whose prefix is ``flat_prefix`` (l, N * 2 * kv_dim), or with per-layer
    lengths, each layer's rows ``per_layer[i]`` (l_i, 2 * kv_dim)."""
    model = tiny_model(model_name, impl)
    if lengths is None:
        attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=flat_prefix.shape[0], prefix_dropout=0.0))
        with torch.no_grad():
            model.adaprefix.prefix.embedding.copy_(flat_prefix)
        return model
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_lengths=lengths, prefix_dropout=0.0))
    with torch.no_grad():
        for weight, rows in zip(model.adaprefix.prefix.embedding, per_layer):
            weight.copy_(rows)
    return model


def _exact(name, impl, method="apt", **overrides):
    model = tiny_model(name, impl)
    settings = dict(method=method, gate_mode="exact", prefix_length=4, prefix_dropout=0.0, prefix_init_std=1.0,
                    token_gate_weight_std=0.5)
    return attach(model, AdaptivePrefixConfig(**{**settings, **overrides}))


@pytest.mark.parametrize("name,impl", MATRIX)
def test_gates_at_1_equal_pt2_and_gates_at_2_equal_every_token_written_twice(name, impl):
    inputs = tiny_inputs(name)
    model = _exact(name, impl)
    flat = model.adaprefix.prefix.embedding.detach().clone()  # (l, N * 2 * kv_dim)
    layers, length = model.adaprefix.token_gate.bias.shape
    _set_gates(model, 1.0, torch.ones(layers, length, dtype=torch.bool))
    torch.testing.assert_close(logits_of(model, inputs), logits_of(_pt2_with(name, impl, flat), inputs),
                               rtol=1e-5, atol=1e-5)
    _set_gates(model, 2.0, torch.ones(layers, length, dtype=torch.bool))
    twice = _pt2_with(name, impl, flat.repeat_interleave(2, dim=0))
    torch.testing.assert_close(logits_of(model, inputs), logits_of(twice, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,impl", [("bert", "sdpa"), ("deberta-v2", "eager"), ("mpnet", "eager"),
                                       ("llama", "sdpa"), ("gemma3_text", "eager")])
def test_a_gate_of_exactly_0_removes_its_token_exactly(name, impl):
    inputs = tiny_inputs(name)
    model = _exact(name, impl)
    runtime = adapter_runtime(model)
    flat = model.adaprefix.prefix.embedding.detach()
    layers, length = model.adaprefix.token_gate.bias.shape
    open_tokens = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.bool)
    _set_gates(model, 1.0, open_tokens)
    kv = 2 * runtime.shape.kv_dim
    per_layer = [flat[open_tokens[i], i * kv:(i + 1) * kv] for i in range(layers)]
    kept = _pt2_with(name, impl, flat, lengths=open_tokens.sum(1).tolist(), per_layer=per_layer)
    torch.testing.assert_close(logits_of(model, inputs), logits_of(kept, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,impl", [("llama", "sdpa"), ("gpt2", "sdpa"), ("bert", "sdpa")])
def test_the_fused_path_equals_the_eager_one_with_gates_at_exactly_0(name, impl):
    """Outputs and gradients, where some gates are exactly 0: neither path may give NaN, and g = 0 still gets its
    gradient (exp(s - lse) (...), not 0 * log'(0))."""
    grads = gradients_on_both_paths(lambda: _exact(name, impl, layer_gate_init=0.7), tiny_inputs(name))
    assert grads["adaprefix.layer_gate.scale"][1] != 0  # the layer whose gate is exactly 0 is not stuck


def gradients_on_both_paths(make_model, inputs) -> dict:
    """The gradients of a loss on the outputs of ``make_model()``, with layer 1's gate exactly 0 and two of layer 2's
    token gates exactly 0, on the fast path and on the eager one: asserted finite and equal (outputs too); returned
    by parameter name."""
    results = []
    for fused in (True, False):
        model = make_model()
        with torch.no_grad():
            model.adaprefix.layer_gate.scale[1] = 0.0
            model.adaprefix.token_gate.bias[2, :2] = SHUT
        with fast_path(fused):
            out = model(**inputs).logits
        out.float().pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.detach(), grads))
    (out_f, grads_f), (out_e, grads_e) = results
    torch.testing.assert_close(out_f, out_e, rtol=1e-5, atol=1e-6)
    for n in grads_e:
        assert torch.isfinite(grads_e[n]).all() and torch.isfinite(grads_f[n]).all(), n
        torch.testing.assert_close(grads_f[n], grads_e[n], rtol=1e-4, atol=1e-7, msg=n)
    return grads_e


def test_the_layer_gate_has_a_gradient_at_0_and_on_both_sides():
    x = torch.tensor([0.0, -0.5, 0.5], requires_grad=True)
    value = nonnegative(x)
    value.sum().backward()
    assert value.tolist() == [0.0, 0.5, 0.5]
    assert x.grad.tolist() == [1.0, -1.0, 1.0]  # abs would give 0 at 0, where every exact gate starts


@pytest.mark.parametrize("arch,side", [("llama", "right"), ("llama", "left"), ("bert", "right")])
def test_a_mixed_batch_of_exact_scaling_and_ungated_adapters_gives_each_row_its_adapter_alone(tmp_path, arch, side):
    """At every position, padding included: left-padded positions see no real key, where exact rows keep g = 0 and
    the others keep their prefix, each as it would alone."""
    configs = {
        "exact": dict(method="apt", gate_mode="exact", prefix_length=4, token_gate_weight_std=0.5,
                      layer_gate_init=0.8, prefix_dropout=0.0),
        "scaled": dict(method="apt", prefix_length=3, token_gate_weight_std=0.5, layer_gate_init=1.5),
        "pt": dict(method="pt2", prefix_length=5),
        "lam": dict(method="layer-gate", gate_mode="exact", prefix_length=2, layer_gate_init=-1.3),
    }
    labels = {name: 3 for name in configs}
    rows = ["exact", "pt", "scaled", "lam", "exact", "scaled"]

    def build(num_labels):
        return tiny_model(arch, "sdpa") if arch in DECODERS else tiny_model(arch, "sdpa", num_labels=num_labels or 3)

    paths = _save_adapters(tmp_path, build, configs, labels)
    ids, mask = tiny_batch(len(rows), 8, pad_last=3 if side == "right" else 0)
    if side == "left":
        mask[1::2, :3] = 0
    with torch.no_grad():
        refs = {n: _alone(build, paths[n], labels[n])(input_ids=ids, attention_mask=mask).logits for n in paths}
        mixed = _multi(build, paths)(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    width = mixed.shape[-1]
    _check_rows(mixed, refs, rows, {n: width for n in paths})


@pytest.mark.parametrize("impl,fused", [("sdpa", True), ("sdpa", False), ("eager", False)],
                         ids=["fused", "eager-path", "eager-attention"])
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_left_padded_batch_trains_its_gates(name, impl, fused):
    """Left-padded positions see no real key: at g = 0 they stay on their masked keys, at g > 0 the prefix would
    take them whole. Their loss (a causal LM predicts the first real token from the last pad) must not reach the gate
    through that jump, which gave NaN on the fused path and a gradient near exp(80) on the eager one (Adam's second
    moment overflowed and the gates never left 0)."""
    ids, _ = tiny_batch(pad_last=0)
    mask = torch.ones_like(ids)
    mask[-1, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    model = _exact(name, impl, prefix_init_std=0.02, token_gate_weight_std=0.02).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with fast_path(fused):
        for step in range(10):
            optimizer.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            assert all(torch.isfinite(g).all() for g in grads.values()), step
            assert grads["adaprefix.layer_gate.scale"].abs().max() < 1e3, step  # no pad row's jump in it
            optimizer.step()
        assert (layer_gates(model) > 0.01).all()  # every gate left 0 (before the fix: stuck at 0, or NaN)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.bfloat16])
def test_only_rows_that_see_no_real_key_in_some_head_get_the_gate_shut(dtype):
    from adaprefix.attention import gate_where_real_keys_seen

    keep = torch.ones(1, 2, 3, 3, dtype=torch.bool)  # (B, H, T, S)
    keep[0, 0, 0] = False  # query row 0 sees no key in head 0 (and every key in head 1)
    keep[0, 1, 2, :2] = False  # row 2 still sees one key in head 1
    mask = keep if dtype == torch.bool else torch.zeros(keep.shape, dtype=dtype).masked_fill(
        ~keep, torch.finfo(dtype).min)
    gate = gate_where_real_keys_seen(torch.full((1, 1, 2), 0.5), mask)
    assert gate.tolist() == [[[0.0, 0.0], [0.5, 0.5], [0.5, 0.5]]]
    mixed = gate_where_real_keys_seen(torch.full((2, 1, 2), 0.5), mask.expand(2, -1, -1, -1),
                                      exact_rows=torch.tensor([False, True]))
    assert mixed[0].tolist() == [[0.5, 0.5]] * 3 and mixed[1, 0].tolist() == [0.0, 0.0]


def test_the_rows_that_see_no_key_are_found_once_per_forward_for_every_layer(monkeypatch):
    import adaprefix.attention as seam

    calls = []
    original = seam.rows_seeing_keys
    monkeypatch.setattr(seam, "rows_seeing_keys", lambda mask: calls.append(mask.shape) or original(mask))
    model = _exact("llama", "eager", layer_gate_init=0.5)
    ids, mask = tiny_batch(pad_last=0)
    mask[-1, :3] = 0
    with torch.no_grad():
        for fused in (True, False):
            with fast_path(fused):
                calls.clear()
                model(input_ids=ids, attention_mask=mask)
                assert len(calls) == 1, (fused, calls)  # not once per layer
    assert model.config.num_hidden_layers > 1
