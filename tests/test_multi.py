"""Several adapters on one model (adaprefix.multi): a mixed batch gives each row what its adapter gives alone.

The reference for every row is a fresh model with that adapter alone, loaded by the single-adapter path
(``load_adapter`` on an unadapted model), run on the same padded batch.
"""

import copy

import pytest
import torch
from transformers import AutoModelForMultipleChoice, AutoModelForTokenClassification

from adaprefix import (AdapterLoadError, AdapterRoutingError, AdapterStateError, AdaptivePrefixConfig,
                       adapter_width, attach, detach, last_token_gates, list_adapters, load_adapter)
from adaprefix.persistence import WEIGHTS_NAME
from safetensors.torch import load_file
from tiny_models import tiny_batch, tiny_config, tiny_model

# Method, length and gate settings differ per adapter; the gates start far from neutral so each one visibly acts.
CONFIGS = {
    "apt4": dict(method="apt", prefix_length=4, token_gate_weight_std=0.5, token_gate_bias_init=1.0,
                 layer_gate_init=1.5),
    "pt7": dict(method="pt2", prefix_length=7),
    "tok2": dict(method="token-gate", prefix_length=2, token_gate_weight_std=0.5),
}
LABELS = {"apt4": 3, "pt7": 2, "tok2": 5}
ROWS = ["apt4", "pt7", "tok2", "pt7", "apt4", "tok2"]


def _bert(labels):
    """A tiny BERT classifier with ``labels`` labels (3 where an adapter brings its own head)."""
    return tiny_model("bert", "sdpa", num_labels=labels or 3)


def _save_adapters(tmp_path, build, configs=CONFIGS, labels=LABELS):
    """Save one adapter per config, each on its own model, with a random head and its own seed."""
    paths = {}
    for seed, (name, settings) in enumerate(configs.items()):
        model = build(labels.get(name))
        torch.manual_seed(100 + seed)
        attach(model, AdaptivePrefixConfig(**settings))
        with torch.no_grad():
            for name_, p in model.named_parameters():
                if p.requires_grad and not name_.startswith("adaprefix."):
                    p.normal_(std=0.5)  # a head far from its init, so a wrong head shows
        paths[name] = tmp_path / name
        model.save_adapter(paths[name])
    return paths


def _multi(build, paths, first=None):
    names = list(paths)
    first = first or names[0]
    model = load_adapter(build(None), paths[first], adapter_name=first)
    for name in names:
        if name != first:
            model.load_adapter(paths[name], adapter_name=name)
    return model


def _alone(build, path, labels):
    return load_adapter(build(labels), path)


def _check_rows(mixed, references, rows, widths):
    for i, name in enumerate(rows):
        width = widths[name]
        torch.testing.assert_close(mixed[i, ..., :width], references[name][i], rtol=1e-5, atol=1e-5)
        if mixed.shape[-1] > width:  # a narrower head's missing columns
            assert torch.isneginf(mixed[i, ..., width:]).all()


@pytest.mark.parametrize("arch,impl", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"),
                                       ("distilbert", "sdpa"), ("deberta-v2", "eager"), ("mpnet", "eager")])
def test_mixed_sequence_classification_batch_equals_each_adapter_alone(tmp_path, arch, impl):
    def build(labels):
        return tiny_model(arch, impl, num_labels=labels or 3)

    paths = _save_adapters(tmp_path, build)
    ids, mask = tiny_batch(len(ROWS), 11, pad_last=4)
    with torch.no_grad():
        refs = {n: _alone(build, paths[n], LABELS[n])(input_ids=ids, attention_mask=mask).logits for n in paths}
        model = _multi(build, paths)
        mixed = model(input_ids=ids, attention_mask=mask, adapter_names=ROWS).logits
    assert mixed.shape == (len(ROWS), max(LABELS.values()))
    _check_rows(mixed, refs, ROWS, LABELS)


def test_mixed_batch_without_an_attention_mask_equals_each_adapter_alone(tmp_path):
    """No mask: the gates pool over every position, on the stacked path as alone."""
    paths = _save_adapters(tmp_path, _bert)
    ids, _ = tiny_batch(len(ROWS), 9)
    with torch.no_grad():
        refs = {n: _alone(_bert, paths[n], LABELS[n])(input_ids=ids).logits for n in paths}
        mixed = _multi(_bert, paths)(input_ids=ids, adapter_names=ROWS).logits
    _check_rows(mixed, refs, ROWS, LABELS)


def test_mixed_token_classification_batch_equals_each_adapter_alone(tmp_path):
    def build(labels):
        config = tiny_config("bert", "sdpa", num_labels=labels or 3)
        torch.manual_seed(0)
        return AutoModelForTokenClassification.from_config(config).eval()

    paths = _save_adapters(tmp_path, build)
    ids, mask = tiny_batch(len(ROWS), 10, pad_last=3)
    with torch.no_grad():
        refs = {n: _alone(build, paths[n], LABELS[n])(input_ids=ids, attention_mask=mask).logits for n in paths}
        mixed = _multi(build, paths)(input_ids=ids, attention_mask=mask, adapter_names=ROWS).logits
    assert mixed.shape == (len(ROWS), 10, 5)
    _check_rows(mixed, refs, ROWS, LABELS)


def test_mixed_multiple_choice_routes_every_choice_of_an_example(tmp_path):
    def build(labels):
        torch.manual_seed(0)
        return AutoModelForMultipleChoice.from_config(tiny_config("bert", "sdpa")).eval()

    configs = {k: CONFIGS[k] for k in ("apt4", "pt7")}
    paths = _save_adapters(tmp_path, build, configs)
    ids, mask = tiny_batch(6, 8, pad_last=2)
    ids, mask = ids.view(3, 2, 8), mask.view(3, 2, 8)  # 3 examples of 2 choices
    rows = ["pt7", "apt4", "pt7"]
    with torch.no_grad():
        refs = {n: _alone(build, paths[n], None)(input_ids=ids, attention_mask=mask).logits for n in paths}
        mixed = _multi(build, paths)(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    _check_rows(mixed, refs, rows, {"apt4": 2, "pt7": 2})


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_mixed_decoder_forward_and_generate_equal_each_adapter_alone(tmp_path, arch):
    def build(labels):
        return tiny_model(arch, "sdpa")

    paths = _save_adapters(tmp_path, build)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 96, (len(ROWS), 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as for generation
    mask[4, :2] = 0
    model = _multi(build, paths)
    alone = {n: _alone(build, paths[n], None) for n in paths}
    with torch.no_grad():
        refs = {n: m(input_ids=ids, attention_mask=mask).logits for n, m in alone.items()}
        mixed = model(input_ids=ids, attention_mask=mask, adapter_names=ROWS).logits
    _check_rows(mixed, refs, ROWS, {n: 96 for n in paths})
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    generated = model.generate(ids, adapter_names=ROWS, **kwargs)
    for i, name in enumerate(ROWS):
        assert torch.equal(generated[i], alone[name].generate(ids, **kwargs)[i]), (i, name)
    # Beams repeat each prompt: the routing follows its rows.
    beams = model.generate(ids[:2], adapter_names=ROWS[:2], num_beams=2, **{**kwargs, "attention_mask": mask[:2]})
    for i, name in enumerate(ROWS[:2]):
        reference = alone[name].generate(ids[:2], num_beams=2, **{**kwargs, "attention_mask": mask[:2]})
        assert torch.equal(beams[i], reference[i])
    assert model.active_adapter == "apt4"  # routing ends with generate


def test_generate_refuses_a_number_of_names_other_than_the_number_of_prompts(tmp_path):
    """generate() repeats each prompt per beam or returned sequence, so a row count that is a multiple of the names
    must not pass for one name per prompt: 4 prompts with 2 names would run prompts 2-3 on the second adapter."""
    def build(labels):
        return tiny_model("llama", "sdpa")

    paths = _save_adapters(tmp_path, build, {k: CONFIGS[k] for k in ("apt4", "pt7")})
    model = _multi(build, paths)
    ids = torch.randint(3, 96, (4, 5), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
    with pytest.raises(AdapterRoutingError, match="adapter_names has 2 names but there are 4 prompts"):
        model.generate(ids, adapter_names=["apt4", "pt7"], **kwargs)
    with pytest.raises(AdapterRoutingError, match="adapter_names has 4 names but there are 2 prompts"):
        model.generate(input_ids=ids[:2], adapter_names=["apt4", "pt7"] * 2, num_beams=2, **kwargs)
    with pytest.raises(AdapterRoutingError, match="adapter_names has 2 names but there are 4 prompts"):
        model.generate(inputs_embeds=model.get_input_embeddings()(ids), adapter_names=["apt4", "pt7"], **kwargs)
    # A refused call leaves no routing behind: the next plain generate runs the active adapter on every prompt.
    reference = _alone(build, paths["apt4"], None).generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, **kwargs), reference)


def test_padded_prefix_columns_get_exactly_zero_attention_weight(tmp_path):
    def build(labels):
        return tiny_model("bert", "eager", num_labels=labels or 3)

    paths = _save_adapters(tmp_path, build)
    ids, mask = tiny_batch(len(ROWS), 6, pad_last=0)
    with torch.no_grad():
        out = _multi(build, paths)(input_ids=ids, attention_mask=mask, adapter_names=ROWS, output_attentions=True)
    longest = max(s["prefix_length"] for s in CONFIGS.values())
    for layer in out.attentions:  # (B, H, T, L + T)
        assert layer.shape[-1] == longest + 6
        for i, name in enumerate(ROWS):
            own = CONFIGS[name]["prefix_length"]
            assert torch.all(layer[i, :, :, own:longest] == 0)
            assert torch.all(layer[i, :, :, :own] > 0)


# The second batch: in star's empty layer, only plain's rows have a prefix.
@pytest.mark.parametrize("rows", [["shift", "star", "plain", "shift"], ["star", "plain", "plain", "star"]])
def test_mixed_per_layer_lengths_and_shifted_positions(tmp_path, rows):
    def build(labels):
        return tiny_model("roberta", "sdpa", num_labels=3)

    configs = {"star": dict(method="pt2", prefix_lengths=[3, 0, 5]),
               "shift": dict(method="apt", prefix_length=4, shift_positions=True, token_gate_weight_std=0.5),
               "plain": dict(method="pt2", prefix_length=2)}
    paths = _save_adapters(tmp_path, build, configs, labels={})
    ids, mask = tiny_batch(4, 9, pad_last=3)
    ids[-1, -3:] = 1  # RoBERTa's padding id, which positions count from
    with torch.no_grad():
        refs = {n: _alone(build, paths[n], None)(input_ids=ids, attention_mask=mask).logits for n in paths}
        mixed = _multi(build, paths)(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
    _check_rows(mixed, refs, rows, {n: 3 for n in paths})


@pytest.mark.parametrize("arch", ["roberta", "mpnet"])
def test_mixed_shifted_positions_from_inputs_embeds_equal_those_from_input_ids(tmp_path, arch):
    """Rows of an adapter that shifts and of one that does not, given as embeddings: each gets the positions its
    tokens get as ids (counted from padding_idx + 1 on these models, plus the row's shift)."""
    def build(labels):
        return tiny_model(arch, "eager" if arch == "mpnet" else "sdpa", num_labels=3)

    configs = {"shift": dict(method="apt", prefix_length=4, shift_positions=True, token_gate_weight_std=0.5),
               "plain": dict(method="pt2", prefix_length=2)}
    paths = _save_adapters(tmp_path, build, configs, labels={})
    model = _multi(build, paths)
    rows = ["shift", "plain", "plain", "shift"]
    ids, mask = tiny_batch(4, 9, pad_last=3)
    ids = ids.masked_fill(mask == 0, model.base_model.embeddings.padding_idx)
    with torch.no_grad():
        from_ids = model(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
        embeds = model.base_model.embeddings.word_embeddings(ids)
        from_embeds = model(inputs_embeds=embeds, attention_mask=mask, adapter_names=rows).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_set_adapter_switches_what_a_plain_forward_runs_and_what_is_saved(tmp_path):
    paths = _save_adapters(tmp_path, _bert)
    ids, mask = tiny_batch(2, 7)
    model = _multi(_bert, paths)
    assert list_adapters(model) == ["apt4", "pt7", "tok2"] and list(model.peft_config) == list_adapters(model)
    assert model.peft_config["pt7"].method == "pt2" and model.active_adapters == ["apt4"]
    assert [adapter_width(model, n) for n in paths] == [3, 2, 5]
    model.set_adapter("tok2")
    with torch.no_grad():
        expected = _alone(_bert, paths["tok2"], 5)(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)
    model.save_adapter(tmp_path / "again")
    saved, original = load_file(tmp_path / "again" / WEIGHTS_NAME), load_file(paths["tok2"] / WEIGHTS_NAME)
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    model.save_pretrained(tmp_path / "full")  # the base model and the active adapter; no inactive adapter in it
    assert not [k for k in load_file(tmp_path / "full" / "model.safetensors") if k.startswith("adaprefix")]

    model.delete_adapter("tok2")  # the active one: the first remaining takes over
    assert list_adapters(model) == ["apt4", "pt7"] and model.active_adapter == "apt4"
    model.delete_adapter("pt7")
    with pytest.raises(AdapterStateError, match="only adapter; adaprefix.detach"):
        model.delete_adapter("apt4")
    detach(model)
    assert not hasattr(model, "adaprefix_bank")


def test_set_adapter_forgets_the_last_forward_s_token_gates(tmp_path):
    """The gates of the forward before a switch are the other adapter's: none are reported until the new one runs."""
    paths = _save_adapters(tmp_path, _bert)
    ids, mask = tiny_batch(2, 7)
    model = _multi(_bert, paths)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        assert last_token_gates(model).shape == (2, model.config.num_hidden_layers, 4)  # apt4's
        model.set_adapter("tok2")
        assert last_token_gates(model) is None
        model(input_ids=ids, attention_mask=mask)
    assert last_token_gates(model).shape == (2, model.config.num_hidden_layers, 2)  # tok2's


@pytest.mark.parametrize("arch,impl", [("distilbert", "sdpa"), ("deberta-v2", "eager")])
def test_adapter_width_is_the_output_module_s_when_the_head_spans_several_modules(tmp_path, arch, impl):
    """DistilBERT's head is pre_classifier + classifier, DeBERTa's pooler + classifier: the width is the number of
    labels (the classifier's), not the hidden size, so the guard on labels of different widths holds."""
    def build(labels):
        return tiny_model(arch, impl, num_labels=labels or 3)

    paths = _save_adapters(tmp_path, build)
    model = _multi(build, paths)
    assert [adapter_width(model, n) for n in paths] == [3, 2, 5]
    ids, mask = tiny_batch(2, 7)
    with pytest.raises(AdapterRoutingError, match="different widths"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["apt4", "pt7"], labels=torch.tensor([0, 1]))
    # Rows all on one adapter narrower than the active one: the model's loss reads the active adapter's width.
    with pytest.raises(AdapterRoutingError, match="different widths"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["pt7", "pt7"], labels=torch.tensor([0, 1]))


def test_set_adapter_to_another_number_of_labels_sets_the_model_s_number_of_labels(tmp_path):
    """The model's loss and its saved config read the number of labels: after set_adapter they are the active
    adapter's, so a forward with labels gives that adapter's loss and save_pretrained writes a loadable model."""
    from transformers import AutoModelForSequenceClassification

    paths = _save_adapters(tmp_path, _bert)
    model = _multi(_bert, paths)
    model.config.id2label = {0: "no", 1: "maybe", 2: "yes"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    ids, mask = tiny_batch(3, 7)
    labels = torch.tensor([4, 0, 2])
    model.set_adapter("tok2")
    assert model.config.num_labels == 5 and model.num_labels == 5
    with torch.no_grad():
        expected = _alone(_bert, paths["tok2"], 5)(input_ids=ids, attention_mask=mask, labels=labels).loss
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, labels=labels).loss, expected)
    model.save_pretrained(tmp_path / "full")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full").eval()
    restored = load_adapter(reloaded, tmp_path / "full")
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits)
    model.set_adapter("pt7")
    assert model.config.num_labels == 2 and model.num_labels == 2
    model.set_adapter("apt4")  # back to the first: its label names come back with its number of labels
    assert model.config.id2label == {0: "no", 1: "maybe", 2: "yes"} and model.num_labels == 3
    model.delete_adapter("apt4")  # deleting the active adapter activates pt7, with its number of labels
    assert model.config.num_labels == 2 and model.num_labels == 2


def test_routing_and_loading_errors_name_the_problem(tmp_path):
    paths = _save_adapters(tmp_path, _bert)
    model = _multi(_bert, {k: paths[k] for k in ("apt4", "pt7")})
    ids, mask = tiny_batch(2, 5)
    with pytest.raises(AdapterRoutingError, match=r"no adapter named 'nope' on this model; loaded: apt4, pt7"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["apt4", "nope"])
    with pytest.raises(AdapterRoutingError, match="3 names but the batch has 2 examples"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["apt4"] * 3)
    with pytest.raises(AdapterRoutingError, match="expected a non-empty list"):
        model(input_ids=ids, attention_mask=mask, adapter_names="apt4")
    with pytest.raises(AdapterRoutingError, match="different widths"):
        model(input_ids=ids, attention_mask=mask, adapter_names=["apt4", "pt7"], labels=torch.tensor([0, 1]))
    with torch.no_grad():  # a failed call leaves no routing behind
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert plain.shape == (2, 3) and type(model.classifier).__name__ == "Linear"
    with pytest.raises(AdapterStateError, match="already has an adapter named 'pt7'"):
        model.load_adapter(paths["pt7"], adapter_name="pt7")
    with pytest.raises(AdapterStateError, match="pass adapter_name"):
        load_adapter(model, paths["tok2"])
    with pytest.raises(AdapterStateError, match="adapter_name: expected a non-empty name without '.'"):
        model.load_adapter(paths["tok2"], adapter_name="a.b")
    with pytest.raises(AdapterStateError, match="no adapter named 'gone'"):
        model.set_adapter("gone")
    other = tiny_model("bert", "sdpa", num_hidden_layers=2)
    attach(other, AdaptivePrefixConfig())
    other.save_adapter(tmp_path / "two-layers")
    with pytest.raises(AdapterLoadError, match="different backbone: num_layers: adapter 2, model 3"):
        model.load_adapter(tmp_path / "two-layers", adapter_name="two")
    headless = tiny_model("bert", "sdpa")
    attach(headless, AdaptivePrefixConfig(train_head=False))
    headless.save_adapter(tmp_path / "headless")
    with pytest.raises(AdapterLoadError, match=r"task head lives in no module, the model's adapters' in \['classifier'\]"):
        model.load_adapter(tmp_path / "headless", adapter_name="headless")
    assert list_adapters(model) == ["apt4", "pt7"]


def test_adapter_names_inside_disable_adapter_are_refused(tmp_path):
    """Inside disable_adapter() no prefix runs, so routing rows would give each row its adapter's head on the bare
    backbone, which is neither the base model nor any adapter."""
    def build(labels):
        return tiny_model("bert", "sdpa", num_labels=3)

    paths = _save_adapters(tmp_path, build, {k: CONFIGS[k] for k in ("apt4", "pt7")}, labels={})
    model = _multi(build, paths)
    ids, mask = tiny_batch(2, 7)
    with model.disable_adapter():
        with pytest.raises(AdapterRoutingError, match=r"adapter_names inside disable_adapter\(\)"):
            model(input_ids=ids, attention_mask=mask, adapter_names=["apt4", "pt7"])
        with pytest.raises(AdapterRoutingError, match=r"adapter_names inside disable_adapter\(\)"):
            model.generate(ids, attention_mask=mask, adapter_names=["apt4", "pt7"], max_new_tokens=1)
        with torch.no_grad():
            base = model(input_ids=ids, attention_mask=mask).logits
    assert type(model.classifier).__name__ == "Linear"  # the refused calls left no routing behind
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask, adapter_names=["apt4", "pt7"]).logits
    assert not torch.allclose(mixed, base)


def test_a_deepcopy_routes_like_the_original_and_owns_its_adapters(tmp_path):
    paths = _save_adapters(tmp_path, _bert)
    model = _multi(_bert, paths)
    ids, mask = tiny_batch(len(ROWS), 9, pad_last=2)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, adapter_names=ROWS).logits
        twin = copy.deepcopy(model)
        assert list_adapters(twin) == list_adapters(model) and twin.active_adapter == model.active_adapter
        torch.testing.assert_close(twin(input_ids=ids, attention_mask=mask, adapter_names=ROWS).logits, before,
                                   rtol=0, atol=0)
        for name, p in twin.named_parameters():
            if name.startswith("adaprefix."):
                p.add_(1.0)
        twin.delete_adapter("pt7")
        assert list_adapters(model) == ["apt4", "pt7", "tok2"]  # the copy's changes stay in the copy
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, adapter_names=ROWS).logits, before,
                                   rtol=0, atol=0)


def test_two_routed_forwards_before_one_backward_give_the_sum_of_their_gradients(tmp_path):
    """Routing is per forward: a second forward with other names must not change what the first one's backward
    differentiates (its routing is over by then)."""
    paths = _save_adapters(tmp_path, _bert)
    model = _multi(_bert, paths)
    ids, mask = tiny_batch(len(ROWS), 9, pad_last=2)
    others = ["apt4"] * 3 + ["tok2"] * 3
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss(names):
        return model(input_ids=ids, attention_mask=mask, adapter_names=names).logits.nan_to_num(neginf=0.0).square().sum()

    def grads(*names_list):
        for p in trainable:
            p.grad = None
        sum(loss(names) for names in names_list).backward()
        return [p.grad.clone() for p in trainable]

    first, second, both = grads(ROWS), grads(others), grads(ROWS, others)
    assert all(g.abs().sum() > 0 for g in first) and not all(torch.equal(a, b) for a, b in zip(first, second))
    for a, b, ab in zip(first, second, both):
        torch.testing.assert_close(ab, a + b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_stacked_path_equals_the_per_adapter_path_in_outputs_and_gradients(tmp_path, arch, monkeypatch):
    """A mixed batch of adapters without per-layer lengths runs on stacked tensors (one set of whole-batch ops per
    layer), pooled gates (encoders) and per-query ones (decoders) alike; the per-adapter loop is the reference, on
    every row and every gradient."""
    import adaprefix.multi as multi

    configs = {**CONFIGS, "lam3": dict(method="layer-gate", prefix_length=3, layer_gate_init=0.7)}
    if arch == "bert":  # one adapter pooling its gate's input on the first token beside ones pooling the mean
        configs["cls5"] = dict(method="apt", prefix_length=5, gate_pooling="cls", token_gate_weight_std=0.5)
    labels = {**LABELS, "lam3": 4, "cls5": 2}
    rows = ROWS + ["lam3", "lam3"] + (["cls5"] if arch == "bert" else ["pt7"])

    def build(n):
        if arch == "llama":
            from transformers import LlamaConfig, LlamaForSequenceClassification

            torch.manual_seed(0)
            config = LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, num_labels=n or 3, pad_token_id=0)
            return LlamaForSequenceClassification(config).eval()
        return tiny_model("bert", "sdpa", num_labels=n or 3)

    paths = _save_adapters(tmp_path, build, configs, labels)
    model = _multi(build, paths)
    ids, mask = tiny_batch(len(rows), 9, pad_last=3)
    if arch == "llama":  # left padding, as decoders batch prompts
        mask = mask.flip(-1)
    built = []
    original = multi._build_stack
    monkeypatch.setattr(multi, "_build_stack", lambda *a: built.append(original(*a)) or built[-1])

    def run():
        for p in model.parameters():
            p.grad = None
        logits = model(input_ids=ids, attention_mask=mask, adapter_names=rows).logits
        logits.nan_to_num(neginf=0.0).square().sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    stacked, stacked_grads = run()
    assert built and all(isinstance(b, multi._Stack) for b in built)  # the fast path ran
    monkeypatch.setattr(multi, "_build_stack", lambda *a: None)
    looped, looped_grads = run()
    torch.testing.assert_close(stacked, looped, rtol=1e-5, atol=1e-6)
    assert stacked_grads.keys() == looped_grads.keys() and stacked_grads
    for name in stacked_grads:
        torch.testing.assert_close(stacked_grads[name], looped_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_layer_on_another_device_gets_its_mixed_prefix_there(tmp_path):
    """Under a device map, a later layer runs on another device than the first ("meta" stands in, as in
    test_inject): the stacked path (built on the first layer's device) must not hand that layer prefixes on the first
    layer's device; it falls back to the per-adapter loop there, which moves each adapter's slice."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    from adaprefix.adapter import adapter_runtime
    import adaprefix.multi as multi

    for seed, name in enumerate(("a", "b")):
        model = tiny_model("bert", "sdpa")
        torch.manual_seed(seed + 1)
        attach(model, AdaptivePrefixConfig(method="apt", prefix_length=4, token_gate_weight_std=0.5))
        model.save_adapter(tmp_path / name)
    model = load_adapter(tiny_model("bert", "sdpa"), tmp_path / "a", adapter_name="a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    runtime, layers = adapter_runtime(model), model.bert.encoder.layer
    add_hook_to_module(layers[1], AlignDevicesHook(execution_device=torch.device("meta")))
    multi._start(model, runtime, multi.make_routing(model, ["a", "b"]))
    runtime.padding_mask = torch.ones(2, 9, dtype=torch.long)
    multi.begin_routed_forward(runtime, runtime.padding_mask)
    hidden = torch.randn(2, 9, 32)
    devices = []
    for i in (0, 1):
        hook = next(h for h in layers[i]._forward_pre_hooks.values() if getattr(h, "site", None) is runtime.sites[i])
        hook(layers[i], (hidden,), {})
        devices.append(runtime.sites[i].prefix.keys.device.type)
    assert isinstance(runtime.routing.stack, multi._Stack)  # layer 0 did run stacked
    assert devices == ["cpu", "meta"]
