"""attach/detach across the architecture matrix: outputs, freezing, gradients, disabling, errors."""

import copy
import gc
import weakref

import pytest
import torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from transformers import BertConfig, BertForMultipleChoice

from adaprefix import (AdapterStateError, AdaptivePrefixConfig, ConfigError, UnsupportedModelError, adapter_runtime,
                       attach, detach, is_attached, last_token_gates, save_adapter)
from adaprefix.attention import layer_site
from tiny_models import DECODERS, MATRIX, tiny_batch, tiny_model

METHODS = ["apt", "pt2", "token-gate", "layer-gate"]


def _visible_config(method="apt", **kw):
    # Non-trivial gates so that a bug in any gate path shows in the outputs.
    return AdaptivePrefixConfig(method=method, prefix_length=4, token_gate_weight_std=0.5, token_gate_bias_init=0.3,
                                layer_gate_init=1.3, prefix_dropout=0.0, **kw)


@pytest.mark.parametrize("name,impl", MATRIX)
def test_attach_changes_outputs_and_disable_restores_them(name, impl):
    model = tiny_model(name, impl)
    ids, mask = tiny_batch()
    base = model(input_ids=ids, attention_mask=mask).logits
    returned = attach(model, _visible_config())
    assert returned is model and isinstance(model, type(tiny_model(name, impl)))
    out = model(input_ids=ids, attention_mask=mask)
    assert out.logits.shape == base.shape
    assert not torch.allclose(out.logits, base, atol=1e-6), "the prefix must change the outputs"
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, out.logits)
    detach(model)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    assert all(p.requires_grad for p in model.parameters())
    assert not any("adaprefix" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name,impl", MATRIX)
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_exactly_the_trainable_parameters(name, impl, method):
    model = tiny_model(name, impl)
    attach(model, _visible_config(method))
    model.train()
    ids, mask = tiny_batch()
    labels = ids if name in DECODERS else torch.tensor([0, 2])
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"adaprefix.prefix.embedding"}
    if method in ("apt", "token-gate"):
        expected |= {"adaprefix.token_gate.weight", "adaprefix.token_gate.bias"}
    if method in ("apt", "layer-gate"):
        expected |= {"adaprefix.layer_gate.scale"}
    assert expected <= trainable
    head = trainable - expected
    assert all(not n.startswith(model.base_model_prefix + ".") for n in head)
    if name in DECODERS:
        assert head == set(), "a language-model head is tied to the frozen embeddings and stays frozen"
    else:
        assert head, "the classification head is trainable"
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} received no gradient"
        else:
            assert p.grad is None, f"frozen {n} received a gradient"


@pytest.mark.parametrize("method", METHODS)
def test_methods_have_the_documented_parameter_counts(method):
    model = tiny_model("bert")
    attach(model, AdaptivePrefixConfig(method=method, prefix_length=4))
    n, d, l = 3, 32, 4
    counts = {n: p.numel() for n, p in model.adaprefix.named_parameters()}
    assert counts["prefix.embedding"] == l * n * 2 * d
    gate_params = sum(v for k, v in counts.items() if "gate" in k)
    expected = {"apt": n * (d * l + l + 1), "pt2": 0, "token-gate": n * (d * l + l), "layer-gate": n}[method]
    assert gate_params == expected


def test_prefix_projection_reparameterises_and_trains():
    model = tiny_model("bert")
    attach(model, AdaptivePrefixConfig(prefix_projection=True, projection_hidden_size=8, prefix_length=4))
    assert model.adaprefix.prefix.projection is not None
    ids, mask = tiny_batch()
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    assert model.adaprefix.prefix.projection[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,field", [("bert", "hidden_dropout_prob"), ("gpt2", "resid_pdrop"),
                                        ("distilbert", "dropout")])
def test_prefix_dropout_defaults_to_the_backbone_hidden_dropout(name, field):
    model = tiny_model(name, **{field: 0.2})
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    assert model.adapter_config.prefix_dropout == 0.2


def test_prefix_dropout_acts_in_training_only():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4, prefix_dropout=0.5))
    ids, mask = tiny_batch()
    run = lambda: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    assert torch.equal(run(), run())
    model.train()  # the tiny backbone has no dropout of its own: any difference is the prefix dropout
    assert not torch.equal(run(), run())


def test_prefix_dropout_has_the_configured_rate_and_one_mask_per_example():
    p, batch = 0.3, 8
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method="pt2", prefix_length=32, prefix_dropout=p))
    used = []  # what each layer's attention received, read while the layer runs
    for layer in model.bert.encoder.layer:
        layer.attention.self.register_forward_pre_hook(lambda module, args: used.append(layer_site(module).prefix))
    ids, mask = tiny_batch(batch=batch)
    model.train()
    model(input_ids=ids, attention_mask=mask)
    prefix = model.adaprefix.prefix().detach()  # (N, 2, heads, l, head_dim)
    for i, site_prefix in enumerate(used):
        for kv, dropped in enumerate((site_prefix.keys.detach(), site_prefix.values.detach())):
            assert dropped.shape[0] == batch
            zero = dropped == 0
            assert abs(zero.float().mean().item() - p) < 0.03, "dropout rate"
            kept = prefix[i, kv].expand_as(dropped)[~zero]
            torch.testing.assert_close(dropped[~zero], kept / (1 - p))  # survivors rescaled by 1 / (1 - p)
            assert all(not torch.equal(zero[0], zero[b]) for b in range(1, batch)), "one mask per example"
    model.eval()
    used.clear()
    model(input_ids=ids, attention_mask=mask)
    assert all(torch.equal(u.keys.detach()[0], prefix[i, 0]) for i, u in enumerate(used)), "no dropout in eval"


def test_multiple_choice_flattened_choices():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    model = BertForMultipleChoice(config).eval()
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    ids = torch.randint(3, 96, (2, 2, 7))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2)
    out.loss.backward()
    assert model.adaprefix.token_gate.weight.grad.abs().sum() > 0


def test_decoder_gate_cannot_see_future_tokens():
    model = tiny_model("llama")
    attach(model, _visible_config())
    ids, _ = tiny_batch(pad_last=0)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 90 + 3
    a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_decoder_refuses_pooling_that_leaks_the_future():
    with pytest.raises(ConfigError, match="future tokens"):
        attach(tiny_model("gpt2"), AdaptivePrefixConfig(gate_pooling="mean"))


def test_double_attach_and_bad_detach_are_refused():
    model = tiny_model("bert")
    with pytest.raises(AdapterStateError, match="no adaprefix adapter"):
        detach(model)
    attach(model)
    with pytest.raises(AdapterStateError, match="already has"):
        attach(model)


def test_the_runtime_is_reached_through_its_accessor_and_a_model_without_adapter_is_named(tmp_path):
    model = tiny_model("bert")
    for call in (adapter_runtime, detach, lambda m: save_adapter(m, tmp_path)):
        with pytest.raises(AdapterStateError, match=r"this model \(BertForSequenceClassification\) has no adaprefix "
                                                    r"adapter attached; call adaprefix.attach\(model\)"):
            call(model)
    config = AdaptivePrefixConfig(prefix_length=4)
    attach(model, config)
    runtime = adapter_runtime(model)
    assert is_attached(model) and runtime.config.prefix_length == 4 and runtime.shape.num_layers == 3
    assert runtime.adapter is model.adaprefix
    detach(model)
    assert not is_attached(model)


def test_to_moves_adapter_and_train_eval_propagate():
    model = attach(tiny_model("bert"))
    model.to(torch.float64)
    assert model.adaprefix.prefix.embedding.dtype == torch.float64
    ids, mask = tiny_batch()
    assert model(input_ids=ids, attention_mask=mask).logits.dtype == torch.float64
    model.train()
    assert model.adaprefix.training


@pytest.mark.parametrize("switch_to", ["eager", "sdpa"])
def test_set_attn_implementation_after_attach_keeps_the_prefix(switch_to):
    model = tiny_model("bert", "sdpa" if switch_to == "eager" else "eager")
    attach(model, _visible_config())
    ids, mask = tiny_batch()
    before = model(input_ids=ids, attention_mask=mask).logits
    model.set_attn_implementation(switch_to)
    assert model.config._attn_implementation == f"adaprefix_{switch_to}"
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before, rtol=1e-5, atol=1e-6)
    with model.disable_adapter():  # the base model now runs the newly chosen implementation
        assert model.config._attn_implementation == switch_to
    detach(model)
    assert model.config._attn_implementation == switch_to


def test_set_attn_implementation_to_one_without_prefix_is_refused():
    model = attach(tiny_model("bert"), _visible_config())
    with pytest.raises(UnsupportedModelError, match=r"adaprefix: .*'flex_attention'.*eager, sdpa.*detach"):
        model.set_attn_implementation("flex_attention")
    model.config._attn_implementation = "eager"  # behind adaprefix's back: the next forward says so
    ids, mask = tiny_batch()
    with pytest.raises(UnsupportedModelError, match=r"adaprefix: .*changed to 'eager'.*set_attn_implementation"):
        model(input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("name,impl", [("llama", "sdpa"), ("deberta-v2", "eager"), ("mpnet", "eager")])
def test_an_attached_model_pickles_and_runs_in_a_new_process(tmp_path, name, impl):
    """torch.save(model) and multiprocessing pickle the model: its class, made at attach time, is rebuilt from the
    host class, a new process registers the attention functions before the first forward, and the patched
    attentions (DeBERTa, MPNet) keep their prefix-aware forward."""
    import pickle
    import subprocess
    import sys

    model = attach(tiny_model(name, impl), _visible_config())
    ids, mask = tiny_batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(model))
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    code = ("import pickle, torch; d = torch.load('inputs.pt'); m = pickle.load(open('model.pkl', 'rb'))\n"
            "with torch.no_grad(): torch.save(m(input_ids=d['ids'], attention_mask=d['mask']).logits, 'out.pt')\n"
            "print(type(m).__name__, m.adapter_config.prefix_length)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [type(model).__name__, str(model.adapter_config.prefix_length)]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


@pytest.mark.parametrize("when", ["fresh", "after-no-grad-forward", "after-training-forward"])
def test_deepcopy_is_an_independent_working_adapter(when):
    model = attach(tiny_model("bert"), _visible_config())
    ids, mask = tiny_batch()
    expected = model(input_ids=ids, attention_mask=mask).logits.detach()
    if when == "after-no-grad-forward":
        with torch.no_grad():
            model(input_ids=ids[:1], attention_mask=mask[:1])
    elif when == "after-training-forward":
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss  # no backward
        model.eval()
    twin = copy.deepcopy(model)
    assert twin.adaprefix is not model.adaprefix
    assert torch.equal(twin(input_ids=ids, attention_mask=mask).logits, expected)
    with torch.no_grad():  # the copy's own adapter drives the copy, and only the copy
        twin.adaprefix.prefix.embedding.mul_(2.0)
        twin.adaprefix.token_gate.bias.add_(1.0)
    changed = twin(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(changed, expected, rtol=0, atol=1e-6)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)
    twin.train()
    twin(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    assert twin.adaprefix.token_gate.weight.grad is not None and model.adaprefix.token_gate.weight.grad is None
    with twin.disable_adapter():
        twin.eval()
        assert torch.equal(twin(input_ids=ids, attention_mask=mask).logits,
                           detach(model)(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("impl,form", [("eager", "additive"), ("sdpa", "bool")])
def test_4d_mask_gives_the_same_gates_and_outputs_as_the_2d_mask(impl, form):
    model = attach(tiny_model("bert", impl), AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=1.0,
                                                                  prefix_dropout=0.0))
    ids, mask = tiny_batch()  # the second example has 3 padding tokens
    flat = model(input_ids=ids, attention_mask=mask).logits
    gates = last_token_gates(model)
    keep = mask[:, None, None, :].expand(-1, 1, ids.shape[1], -1).bool()  # (B, 1, T, S)
    mask4d = keep if form == "bool" else (~keep).float() * torch.finfo(torch.float32).min
    out = model(input_ids=ids, attention_mask=mask4d).logits
    torch.testing.assert_close(last_token_gates(model), gates, rtol=0, atol=0)
    torch.testing.assert_close(out, flat, rtol=0, atol=0)


def test_a_mask_that_cannot_be_reduced_to_padding_is_refused():
    model = attach(tiny_model("bert", "eager"), _visible_config())
    ids, mask = tiny_batch()
    with pytest.raises(UnsupportedModelError, match=r"adaprefix: an attention_mask of shape \(2, 1, 9\)"):
        model(input_ids=ids, attention_mask=mask[:, None, :])


@pytest.mark.parametrize("name,longest", [("bert", 64 - 8), ("roberta", 64 - 8 - 2)])
def test_shift_positions_beyond_the_position_table_names_the_lengths(name, longest):
    model = attach(tiny_model(name), AdaptivePrefixConfig(method="pt2", prefix_length=8, shift_positions=True))
    ids = torch.randint(3, 90, (2, longest))
    model(input_ids=ids)  # the longest input that fits
    too_long = torch.randint(3, 90, (2, longest + 1))
    with pytest.raises(ConfigError, match=rf"adaprefix: shift_positions=True .*{longest + 1} input tokens after the 8 "
                                          rf"prefix.*max_position_embeddings=64.*at most {longest} tokens"):
        model(input_ids=too_long)


@pytest.mark.parametrize("gate_mode", ["scale", "exact", "separate"])
@pytest.mark.parametrize("placement", ["weights", "accelerate-hook"])
def test_each_layer_gets_its_prefix_and_gates_on_its_own_device(placement, gate_mode):
    # Under device_map, layer i lives on its own device while h_{i-1} arrives on the previous layer's (accelerate
    # moves inputs only after the pre-hooks). With one device here, the "other" device is "meta": the hook is fed
    # h_{i-1} on the CPU, and what it leaves for the attention must be on layer 1's device.
    model = attach(tiny_model("bert"), _visible_config(gate_mode=gate_mode))
    runtime = adapter_runtime(model)
    layer = model.bert.encoder.layer[1]
    if placement == "weights":
        layer.to("meta")
    else:  # offloaded weights stay on "meta"; accelerate's hook names the device the layer runs on
        add_hook_to_module(layer, AlignDevicesHook(execution_device=torch.device("meta")))
    hook = next(h for h in layer._forward_pre_hooks.values() if getattr(h, "site", None) is runtime.sites[1])
    runtime.padding_mask = torch.ones(2, 9, dtype=torch.long)  # recorded on the input device
    runtime.prefix = model.adaprefix.prefix()  # what the base model's pre-hook leaves, on the adapter's device
    hook(layer, (torch.randn(2, 9, 32),), {})
    prefix = runtime.sites[1].prefix
    assert prefix.keys.device.type == "meta" and prefix.values.device.type == "meta"
    if gate_mode == "exact":  # the exact gate weighs the attention there: it must be on the layer's device too
        assert prefix.weight_gate.device.type == "meta"
    if gate_mode == "separate":  # lambda scales the prefix's output there, alpha weighs inside its softmax
        assert prefix.separate_gate.device.type == "meta" and prefix.separate_weight.device.type == "meta"
    assert runtime.token_gates[1].device.type == "meta"
    assert model.adaprefix.prefix.embedding.device.type == "cpu"  # the parameters stay where attach put them


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_a_forward_without_backward_leaves_no_graph_alive(name):
    model = attach(tiny_model(name), AdaptivePrefixConfig(prefix_length=4, prefix_projection=True,
                                                          projection_hidden_size=8))
    model.train()
    captured = {}
    layers = model.base_model.encoder.layer if name == "bert" else model.base_model.layers
    layers[-1].register_forward_pre_hook(lambda module, args: captured.setdefault("h", weakref.ref(args[0])) and None)
    model.adaprefix.prefix.projection[1].register_forward_hook(
        lambda module, args, out: captured.setdefault("tanh", weakref.ref(out)) and None)
    ids, mask = tiny_batch()
    model(input_ids=ids, attention_mask=mask).logits.sum()  # e.g. an evaluation step that kept grad mode on
    gc.collect()
    assert captured["tanh"]() is None, "the prefix MLP's graph outlived the forward"
    assert captured["h"]() is None, "h_{N-1} (and the graph behind it) outlived the forward"
    assert all(site.prefix is None for site in adapter_runtime(model).sites)


ENCODER_MATRIX = [(name, impl) for name, impl in MATRIX if name not in DECODERS]


@pytest.mark.parametrize("name,impl", ENCODER_MATRIX)
def test_right_padding_changes_nothing_for_the_real_tokens(name, impl):
    # Padded keys stay invisible on every path (seam, DeBERTa's patch) and the gate pools over real tokens only.
    model = attach(tiny_model(name, impl), _visible_config())
    ids, mask = tiny_batch()  # the last example carries 3 padding tokens
    padded = model(input_ids=ids, attention_mask=mask).logits[-1]
    alone = model(input_ids=ids[-1:, :-3], attention_mask=mask[-1:, :-3]).logits[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)


def test_deberta_keeps_its_own_attention_when_asked_to_switch():
    model = attach(tiny_model("deberta-v2"), _visible_config())
    ids, mask = tiny_batch()
    before = model(input_ids=ids, attention_mask=mask).logits
    model.set_attn_implementation("eager")  # what DeBERTa runs anyway: a no-op
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)
    with pytest.raises(UnsupportedModelError, match=r"adaprefix: attention implementation 'sdpa'.*one of: eager"):
        model.set_attn_implementation("sdpa")


def test_set_attn_implementation_accepts_transformers_dict_form():
    model = attach(tiny_model("bert", "sdpa"), _visible_config())
    model.set_attn_implementation({"": "eager"})
    assert model.config._attn_implementation == "adaprefix_eager"
    with pytest.raises(UnsupportedModelError, match="adaprefix: per-sub-config attention implementations"):
        model.set_attn_implementation({"text_config": "sdpa"})


def test_shift_positions_from_inputs_embeds_matches_input_ids():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method="pt2", prefix_length=4, shift_positions=True))
    ids, mask = tiny_batch()
    from_ids = model(input_ids=ids, attention_mask=mask).logits
    embeds = model.bert.embeddings.word_embeddings(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).logits, from_ids)


def test_a_forward_that_raises_leaves_no_prefix_behind():
    model = attach(tiny_model("bert"), _visible_config())

    def fail(module, args, output):
        raise RuntimeError("out of memory, say")

    model.bert.encoder.layer[1].attention.self.register_forward_hook(fail)
    ids, mask = tiny_batch()
    with pytest.raises(RuntimeError, match="out of memory"):
        model(input_ids=ids, attention_mask=mask)
    runtime = adapter_runtime(model)
    assert runtime.prefix is None and all(site.prefix is None for site in runtime.sites)


@pytest.mark.parametrize("name", ["roberta", "xlm-roberta", "mpnet"])
def test_shift_positions_from_inputs_embeds_matches_input_ids_on_models_counting_from_padding_idx(name):
    # RoBERTa-style embeddings number tokens from padding_idx + 1, from ids and from inputs_embeds alike; the shift
    # must start there on both paths (right padding: the real tokens get the same positions either way).
    model = attach(tiny_model(name), AdaptivePrefixConfig(method="pt2", prefix_length=4, shift_positions=True))
    ids, mask = tiny_batch()
    ids = ids.masked_fill(mask == 0, model.base_model.embeddings.padding_idx)
    with torch.no_grad():
        from_ids = model(input_ids=ids, attention_mask=mask).logits
        embeds = model.base_model.embeddings.word_embeddings(ids)
        torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).logits, from_ids)
