"""Separate gates (``gate_mode="separate"``): the prefix gets a softmax of its own, added times lambda.

Per layer and query, out = softmax(real scores) @ V + lambda * sum_j p_j pv_j with p_j = alpha_j exp(s_j) / sum_k
alpha_k exp(s_k). The references are independent of the code under test: PEFT's LLaMA-Adapter (``AdaptionPromptConfig``:
the same sum, with keys and values made by the layer's own projections from a prompt, and alpha = 1), and the frozen
model with a constant added to the bias of the attention's output projection: what the prefix adds when its own
softmax does not depend on the query (one pseudo token, or keys of 0). The start at the frozen model is tested with
the exact gate's in test_frozen_start.py.
"""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, ConfigError, adapter_runtime, attach, layer_gates
from adaprefix.attention import fast_path
from adaprefix.pruning import prune_adapter
from test_exact_gates import gradients_on_both_paths
from test_multi import _alone, _check_rows, _multi, _save_adapters
from tiny_models import DECODERS, PATCHED, logits_of, tiny_batch, tiny_inputs, tiny_model

OPEN, SHUT = 30.0, -200.0  # token-gate biases whose sigmoid is exactly 1.0 and 0.0 in float32


def _separate(name, impl, method="apt", **overrides):
    model = tiny_model(name, impl)
    settings = dict(method=method, gate_mode="separate", prefix_length=4, prefix_dropout=0.0, prefix_init_std=1.0,
                    token_gate_weight_std=0.5)
    return attach(model, AdaptivePrefixConfig(**{**settings, **overrides}))


def _set_prefix(model, layer: int, keys: torch.Tensor, values: torch.Tensor):
    """Layer ``layer``'s prefix keys and values, each (l, kv_dim) as the layer's projections give them."""
    shape = adapter_runtime(model).shape
    embedding = model.adaprefix.prefix.embedding  # (l, N * 2 * kv_dim): token t's [k_i, v_i] for every layer i
    start = layer * 2 * shape.kv_dim
    with torch.no_grad():
        embedding[:, start:start + shape.kv_dim] = keys
        embedding[:, start + shape.kv_dim:start + 2 * shape.kv_dim] = values


@pytest.mark.parametrize("fused", [True, False], ids=["host-attention", "eager-path"])
@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_the_layer_gate_alone_is_peft_llama_adapter(name, fused):
    """PEFT's AdaptionPrompt adds gate * softmax(q . k_proj(P)^T / sqrt(d)) v_proj(P), through o_proj, to every layer's
    attention (q with its rotary positions, the prompt's keys without). method layer-gate with lambda = the gate and
    the prefix = the projected prompt computes the same: on a batch with padding, and while generating."""
    peft = pytest.importorskip("peft")
    base = tiny_model(name, "sdpa")
    layers = base.config.num_hidden_layers
    reference = peft.get_peft_model(base, peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=layers,
                                                                     task_type="CAUSAL_LM"))
    gates = torch.tensor([0.9, -0.6, 1.7])
    with torch.no_grad():
        for i, layer in enumerate(reference.base_model.model.model.layers):
            layer.self_attn.adaption_gate.fill_(gates[i])
    model = _separate(name, "sdpa", method="layer-gate")
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(gates)
        for i, layer in enumerate(reference.base_model.model.model.layers):
            adapted = layer.self_attn
            prompt = adapted.adaption_prompt[0]  # (l, d)
            _set_prefix(model, i, adapted.model.k_proj(prompt), adapted.model.v_proj(prompt))
    ids, mask = tiny_batch(pad_last=2)
    with fast_path(fused):
        ours = logits_of(model, dict(input_ids=ids, attention_mask=mask))
    expected = logits_of(reference, dict(input_ids=ids, attention_mask=mask))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, logits_of(tiny_model(name, "sdpa"), dict(input_ids=ids, attention_mask=mask)),
                              atol=1e-3)  # the gates are open: the reference is not the frozen model
    prompt = dict(input_ids=ids[:1, :5], attention_mask=torch.ones(1, 5, dtype=torch.long), max_new_tokens=6,
                  do_sample=False, pad_token_id=0)
    with fast_path(fused), torch.no_grad():
        assert torch.equal(model.generate(**prompt), reference.generate(**prompt))


def _with_output_bias(name, impl, lam: torch.Tensor, values: torch.Tensor):
    """The frozen model with lambda_i * (its own output projection's weight @ v_i) added to layer i's output bias:
    what one pseudo token with value v_i (kv_dim,) adds, its own softmax being 1 for every query."""
    model = tiny_model(name, impl, **({"attention_bias": True} if name == "llama" else {}))
    outputs = {"bert": lambda m: [layer.attention.output.dense for layer in m.bert.encoder.layer],
               "deberta-v2": lambda m: [layer.attention.output.dense for layer in m.deberta.encoder.layer],
               "mpnet": lambda m: [layer.attention.attn.o for layer in m.mpnet.encoder.layer],
               "llama": lambda m: [layer.self_attn.o_proj for layer in m.model.layers]}[name](model)
    with torch.no_grad():
        for i, dense in enumerate(outputs):
            heads_value = values[i]
            if name == "llama":  # each query head reads its key/value group's value
                heads_value = heads_value.view(model.config.num_key_value_heads, -1).repeat_interleave(
                    model.config.num_attention_heads // model.config.num_key_value_heads, dim=0).reshape(-1)
            dense.bias += lam[i] * dense.weight @ heads_value
    return model


@pytest.mark.parametrize("name,impl", [("bert", "sdpa"), ("bert", "eager"), ("deberta-v2", "eager"),
                                       ("mpnet", "eager"), ("llama", "sdpa")])
def test_one_pseudo_token_adds_lambda_times_its_value_whatever_the_query(name, impl):
    """l = 2 with alpha exactly (1, 0): the second token leaves the softmax, the first takes all of it, so the layer
    adds lambda * pv_0 to every position's attention output (padding and masks have no say in it)."""
    overrides = {"attention_bias": True} if name == "llama" else {}
    inputs = tiny_inputs(name)
    lam = torch.tensor([0.8, -1.1, 1.9])
    model = attach(tiny_model(name, impl, **overrides), AdaptivePrefixConfig(
        gate_mode="separate", prefix_length=2, prefix_dropout=0.0, prefix_init_std=1.0, layer_gate_init=0.0))
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(lam)
        model.adaprefix.token_gate.weight.zero_()
        model.adaprefix.token_gate.bias.copy_(torch.tensor([OPEN, SHUT]).expand(3, 2))
    kv = adapter_runtime(model).shape.kv_dim
    flat = model.adaprefix.prefix.embedding.detach()  # (l, N * 2 * kv_dim)
    values = [flat[0, i * 2 * kv + kv:(i + 1) * 2 * kv] for i in range(3)]
    for fused in (True, False):
        with fast_path(fused):
            torch.testing.assert_close(logits_of(model, inputs), logits_of(_with_output_bias(name, impl, lam, values),
                                                                       inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,impl", [("bert", "sdpa"), ("deberta-v2", "eager"), ("llama", "sdpa")])
def test_with_zero_keys_the_prefix_adds_lambda_times_its_values_averaged_by_alpha(name, impl):
    """Keys of 0 score 0 against every query, so the prefix's softmax is alpha_j / sum_k alpha_k whatever the query:
    the layer adds lambda * that average of its values, a constant the frozen model's output bias can carry. alpha is
    fractional here (sigmoid of biases 0.3, -1, 2: weights 0.57, 0.27, 0.88), and so pinned beyond 0 and 1."""
    overrides = {"attention_bias": True} if name == "llama" else {}
    inputs = tiny_inputs(name)
    lam = torch.tensor([0.9, -0.7, 1.3])
    model = attach(tiny_model(name, impl, **overrides), AdaptivePrefixConfig(
        gate_mode="separate", prefix_length=3, prefix_dropout=0.0, prefix_init_std=1.0))
    kv = adapter_runtime(model).shape.kv_dim
    bias = torch.tensor([0.3, -1.0, 2.0])
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(lam)
        model.adaprefix.token_gate.weight.zero_()
        model.adaprefix.token_gate.bias.copy_(bias.expand(3, 3))
        for i in range(3):
            model.adaprefix.prefix.embedding[:, i * 2 * kv:i * 2 * kv + kv] = 0.0  # layer i's keys
    flat = model.adaprefix.prefix.embedding.detach()
    alpha = 1 / (1 + torch.exp(-bias))  # computed here, not by the gate
    values = [(alpha[:, None] * flat[:, i * 2 * kv + kv:(i + 1) * 2 * kv]).sum(0) / alpha.sum() for i in range(3)]
    reference = logits_of(_with_output_bias(name, impl, lam, values), inputs)
    for fused in (True, False):
        with fast_path(fused):
            torch.testing.assert_close(logits_of(model, inputs), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_open_per_query_gates_give_the_same_logits_step_by_step_with_the_kv_cache(name):
    """Each position's gate is its own: decoding one token at a time (query length 1, the cache holding the rest)
    gives the logits of the whole sequence at once, with lambda open and alpha varying by position. Gemma 3's window
    of 4 is shorter than the 8 tokens, so its sliding layers act."""
    model = _separate(name, "sdpa", layer_gate_init=0.8)
    ids = tiny_batch(1, 8, pad_last=0)[0]
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        alpha = adapter_runtime(model).token_gates[0]  # (1, T, l)
        out = model(input_ids=ids[:, :3], use_cache=True)
        steps = [out.logits]
        for t in range(3, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], cache=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert (alpha - alpha[:, :1]).abs().amax() > 0.01  # the gates do differ between positions
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-5, atol=1e-5)


def test_in_bfloat16_it_starts_at_the_frozen_model_and_both_paths_agree():
    inputs = tiny_inputs("llama")
    frozen = logits_of(tiny_model("llama", "sdpa").to(torch.bfloat16), inputs)
    model = attach(tiny_model("llama", "sdpa").to(torch.bfloat16), AdaptivePrefixConfig(
        gate_mode="separate", prefix_length=4, prefix_dropout=0.0, prefix_init_std=1.0, token_gate_weight_std=0.5))
    assert torch.equal(logits_of(model, inputs), frozen)
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.fill_(0.8)
    host = logits_of(model, inputs)
    with fast_path(False):
        eager = logits_of(model, inputs)
    assert host.dtype == eager.dtype == torch.bfloat16 and torch.isfinite(host).all()
    torch.testing.assert_close(host.float(), eager.float(), rtol=0, atol=0.05)
    assert (host.float() - frozen.float()).abs().max() > 0.05  # the open gates' effect is larger than that bound


def test_attention_weights_hold_lambda_times_the_prefix_softmax_and_the_real_keys_own():
    model = _separate("llama", "sdpa", layer_gate_init=0.0)
    lam = torch.tensor([0.6, -0.4, 1.5])
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(lam)
        plain = model(**tiny_inputs("llama")).logits
        out = model(**tiny_inputs("llama"), output_attentions=True)
    torch.testing.assert_close(out.logits, plain, rtol=1e-5, atol=1e-5)
    for i, weights in enumerate(out.attentions):  # (B, H, T, l + S)
        torch.testing.assert_close(weights[..., :4].sum(-1), torch.full(weights.shape[:3], float(lam[i])))
        torch.testing.assert_close(weights[..., 4:].sum(-1), torch.ones(weights.shape[:3]))


@pytest.mark.parametrize("name,impl", [("llama", "sdpa"), ("bert", "sdpa"), ("mpnet", "eager")])
def test_alpha_weighs_tokens_within_the_prefix_softmax_only(name, impl):
    """alpha is each token's weight inside the prefix's own softmax: alpha exactly 0 removes the token (the same as a
    prefix without it), and the same alpha on every token changes nothing (here 0.5 against 1)."""
    inputs = tiny_inputs(name)
    model = _separate(name, impl, layer_gate_init=0.0)
    runtime = adapter_runtime(model)
    flat = model.adaprefix.prefix.embedding.detach()
    lam = torch.tensor([0.7, 1.4, -0.9])
    open_tokens = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(lam)
        model.adaprefix.token_gate.weight.zero_()
        model.adaprefix.token_gate.bias.copy_(torch.where(open_tokens, OPEN, SHUT))
    kv = 2 * runtime.shape.kv_dim
    kept = attach(tiny_model(name, impl), AdaptivePrefixConfig(method="layer-gate", gate_mode="separate",
                                                                prefix_lengths=open_tokens.sum(1).tolist()))
    with torch.no_grad():
        kept.adaprefix.layer_gate.scale.copy_(lam)
        for i, weight in enumerate(kept.adaprefix.prefix.embedding):
            weight.copy_(flat[open_tokens[i], i * kv:(i + 1) * kv])
    torch.testing.assert_close(logits_of(model, inputs), logits_of(kept, inputs), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        model.adaprefix.token_gate.bias.zero_()  # alpha = sigmoid(0) = 0.5 on every token
    uniform = logits_of(model, inputs)
    with torch.no_grad():
        model.adaprefix.token_gate.bias.fill_(OPEN)  # alpha = 1
    torch.testing.assert_close(uniform, logits_of(model, inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,impl", [("llama", "sdpa"), ("gpt2", "sdpa"), ("gemma3_text", "sdpa"),
                                       ("bert", "sdpa")])
def test_the_host_path_equals_the_eager_one_with_gates_at_exactly_0(name, impl):
    """Outputs and gradients, with a layer gate and some token gates exactly 0: no NaN, and lambda = 0 still gets a
    gradient (the prefix's output), while the prefix of that layer gets none yet."""
    grads = gradients_on_both_paths(lambda: _separate(name, impl, layer_gate_init=0.7), tiny_inputs(name))
    assert grads["adaprefix.layer_gate.scale"][1] != 0  # the layer whose gate is exactly 0 is not stuck
    kv = grads["adaprefix.prefix.embedding"].shape[1] // 6  # (l, 3 layers * 2 * kv_dim)
    assert (grads["adaprefix.prefix.embedding"][:, 2 * kv:4 * kv] == 0).all()  # layer 1's prefix: lambda 0 holds it
    assert (grads["adaprefix.prefix.embedding"][:, 4 * kv:] != 0).any()


@pytest.mark.parametrize("arch,side", [("llama", "right"), ("llama", "left"), ("bert", "right"),
                                       ("deberta-v2", "right")])
def test_a_mixed_batch_of_separate_exact_scaling_and_ungated_adapters_gives_each_row_its_adapter_alone(
        tmp_path, arch, side):
    configs = {
        "separate": dict(method="apt", gate_mode="separate", prefix_length=4, token_gate_weight_std=0.5,
                         layer_gate_init=0.8, prefix_dropout=0.0),
        "exact": dict(method="apt", gate_mode="exact", prefix_length=3, token_gate_weight_std=0.5,
                      layer_gate_init=0.6, prefix_dropout=0.0),
        "scaled": dict(method="apt", prefix_length=3, token_gate_weight_std=0.5, layer_gate_init=1.5),
        "pt": dict(method="pt2", prefix_length=5),
        "lam": dict(method="layer-gate", gate_mode="separate", prefix_length=2, layer_gate_init=-1.3),
    }
    labels = {name: 3 for name in configs}
    rows = ["separate", "pt", "exact", "lam", "separate", "scaled"]
    impl = "eager" if arch in PATCHED else "sdpa"

    def build(num_labels):
        return tiny_model(arch, impl) if arch in DECODERS else tiny_model(arch, impl, num_labels=num_labels or 3)

    paths = _save_adapters(tmp_path, build, configs, labels)
    ids, mask = tiny_batch(len(rows), 8, pad_last=3 if side == "right" else 0)
    if side == "left":
        mask[1::2, :3] = 0
    with torch.no_grad():
        refs = {n: _alone(build, paths[n], labels[n])(input_ids=ids, attention_mask=mask).logits for n in paths}
        mixed = _multi(build, paths)(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
        # only separate adapters, of different lengths: the host's attention for every row, padded prefix columns
        apart = ["lam", "separate", "separate", "lam", "lam", "separate"]
        only = _multi(build, {n: paths[n] for n in ("separate", "lam")})(
            input_ids=ids, attention_mask=mask, adapter_names=apart).logits
    if side == "left":
        # A left-padded query sees no real key: its output is the host kernel's convention (sdpa with a bool mask
        # gives 0, an additive mask the keys' mean, as the eager path a mixed batch takes), and no position reads it.
        seen = mask.bool()[..., None]
        mixed, only = mixed.where(seen, 0.0), only.where(seen, 0.0)
        refs = {n: r.where(seen, 0.0) for n, r in refs.items()}
    width = mixed.shape[-1]
    _check_rows(mixed, refs, rows, {n: width for n in paths})
    _check_rows(only, refs, apart, {n: width for n in paths})


@pytest.mark.parametrize("fused", [True, False], ids=["host-attention", "eager-path"])
def test_a_left_padded_batch_trains_its_gates(fused):
    """Left-padded positions see no real key: the separate prefix does not change how the host treats them, and
    their loss gives the gates finite gradients."""
    ids, _ = tiny_batch(pad_last=0)
    mask = torch.ones_like(ids)
    mask[-1, :3] = 0
    labels = ids.masked_fill(mask == 0, -100)
    model = _separate("llama", "sdpa", prefix_init_std=0.02, token_gate_weight_std=0.02).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with fast_path(fused):
        for step in range(5):
            optimizer.zero_grad()
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), step
            optimizer.step()
    assert (layer_gates(model).abs() > 0.01).all()


@pytest.mark.parametrize("method", ["pt2", "token-gate"])
def test_separate_gates_need_the_layer_gate(method):
    with pytest.raises(ConfigError, match=rf"gate_mode: 'separate' adds the prefix's attention times the layer gate "
                                          rf"lambda, and method '{method}' has none; use method 'apt' or 'layer-gate'"):
        AdaptivePrefixConfig(method=method, gate_mode="separate")
    assert AdaptivePrefixConfig(gate_mode="separate").layer_gate_init == 0.0
    assert AdaptivePrefixConfig(gate_mode="separate", layer_gate_init=0.3).layer_gate_init == 0.3


def test_tokens_whose_alpha_is_exactly_0_and_layers_whose_lambda_is_0_prune_away_without_a_change():
    model = _separate("llama", "sdpa", prefix_length=5, layer_gate_init=0.0)
    pattern = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.copy_(torch.tensor([0.7, 0.0, -1.2]))  # layer 1: its whole prefix is off
        model.adaprefix.token_gate.weight.zero_()
        model.adaprefix.token_gate.bias.copy_(torch.where(pattern, OPEN, SHUT))  # layer 2: every alpha is 0
    inputs = tiny_inputs("llama")
    before = logits_of(model, inputs)
    result = prune_adapter(model, [inputs], threshold=0.0)
    assert result.kept == [[0, 2], [], []]
    torch.testing.assert_close(logits_of(model, inputs), before, rtol=1e-5, atol=1e-6)


def test_pruning_reads_alpha_relative_to_its_layer_s_most_open_token():
    """Only alpha's ratios count inside the prefix's softmax: a layer whose every alpha is tiny (about 6e-6) still adds
    its whole prefix, and must not be pruned away as a tiny gate would be; a token far below its layer's others
    goes."""
    model = _separate("llama", "sdpa", prefix_length=4, layer_gate_init=1.0)
    with torch.no_grad():
        model.adaprefix.token_gate.weight.zero_()
        model.adaprefix.token_gate.bias.copy_(torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, -20.0, 2.0],
                                                            [-12.0, -12.0, -12.0, -12.0]]))
    inputs = tiny_inputs("llama")
    result = prune_adapter(model, [inputs], threshold=1e-3)
    assert result.kept == [[0, 1, 2, 3], [0, 1, 3], [0, 1, 2, 3]]
    torch.testing.assert_close(result.max_gates[2], torch.ones(4))  # relative to the layer's largest: 1
