"""PEFT prefix-tuning folders in and out: made by PEFT's own code, compared with PEFT's own formula.

The reference is what PEFT computes for a prefix-tuning adapter, written out here without adaprefix: the folder is read
by ``PeftModel.from_pretrained``, ``get_prompt`` gives the per-layer prefix as a DynamicCache, and the base model runs
with that cache and the attention mask widened by the prefix length (no position ids: the model counts real tokens
after the cached prefix, as PEFT's forward does). PEFT's own forward is not used: on transformers 5.24 it fails for
classification and ignores the prefix in generate (shared/APT.md, section 5).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import PeftModel, PrefixTuningConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from adaprefix import (AdapterLoadError, AdaptivePrefixConfig, ConfigError, PeftConversionWarning,  # noqa: E402
                       attach, export_peft, load_adapter, save_adapter)
from tiny_models import tiny_batch, tiny_model  # noqa: E402

LENGTH = 4
TASKS = {"bert": "SEQ_CLS", "roberta": "SEQ_CLS", "llama": "CAUSAL_LM"}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _peft_folder(tmp_path, name: str, projection: bool) -> str:
    """A prefix-tuning adapter made and saved by PEFT, with a random prefix (and projection MLP) and random head."""
    model = tiny_model(name)
    config = PrefixTuningConfig(task_type=TASKS[name], num_virtual_tokens=LENGTH, prefix_projection=projection,
                                encoder_hidden_size=16 if projection else None)
    peft_model = get_peft_model(model, config)
    _randomize(peft_model.prompt_encoder, seed=3)
    if TASKS[name] == "SEQ_CLS":  # PEFT trains its own copy of the classifier (modules_to_save)
        _randomize(peft_model.base_model.classifier.modules_to_save, seed=4)
    folder = tmp_path / f"peft-{name}-{projection}"
    peft_model.save_pretrained(str(folder))
    return str(folder)


def _peft_formula(name: str, folder: str, ids, mask, **kwargs):
    """PEFT's prefix tuning for the folder, written out: prefix as past key values, mask widened by the prefix."""
    peft_model = PeftModel.from_pretrained(tiny_model(name), folder).eval()
    cache = peft_model.get_prompt(batch_size=ids.shape[0])
    wide_mask = torch.cat([torch.ones(ids.shape[0], LENGTH, dtype=mask.dtype), mask], dim=1)
    with torch.no_grad():
        return peft_model.get_base_model()(input_ids=ids, attention_mask=wide_mask, cache=cache, use_cache=False,
                                           **kwargs).logits


def _load(name: str, folder: str):
    with pytest.warns(PeftConversionWarning, match="PEFT prefix-tuning adapter; loaded as method 'pt2'"):
        return load_adapter(tiny_model(name), folder)


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_peft_encoder_adapter_gives_peft_formula_outputs(tmp_path, name, projection):
    folder = _peft_folder(tmp_path, name, projection)
    model = _load(name, folder)
    config = model.adapter_config
    assert (config.method, config.prefix_length, config.prefix_projection) == ("pt2", LENGTH, False)
    assert config.shift_positions and config.prefix_dropout == 0.0  # what PEFT ran: positions after the prefix
    ids, mask = tiny_batch(pad_last=3)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
    reference = _peft_formula(name, folder, ids, mask)
    assert torch.equal(ours, reference)
    with torch.no_grad(), model.disable_adapter():  # the prefix and the head acted
        assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, reference, atol=1e-3)


@pytest.mark.parametrize("projection", [False, True])
def test_peft_decoder_adapter_gives_peft_formula_with_shifted_positions(tmp_path, projection):
    """PEFT's formula shifts a decoder's positions by the prefix length; adaprefix keeps them, unless told."""
    folder = _peft_folder(tmp_path, "llama", projection)
    with pytest.warns(PeftConversionWarning, match="decoder positions NOT shifted"):
        model = load_adapter(tiny_model("llama"), folder)
    assert not model.adapter_config.shift_positions
    ids, mask = tiny_batch(pad_last=0)
    reference = _peft_formula("llama", folder, ids, mask)
    shifted = torch.arange(LENGTH, LENGTH + ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask, position_ids=shifted).logits, reference)
        unshifted = model(input_ids=ids, attention_mask=mask).logits
    # Real tokens' rotary phases against the unrotated prefix keys differ by LENGTH positions: the outputs differ.
    assert not torch.allclose(unshifted, reference, atol=1e-4)


def test_peft_adapter_loads_beside_another_adapter(tmp_path):
    folder = _peft_folder(tmp_path, "bert", False)
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method="apt", prefix_length=2))
    with pytest.warns(PeftConversionWarning):
        load_adapter(model, folder, adapter_name="peft")
    model.set_adapter("peft")
    ids, mask = tiny_batch(pad_last=3)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, _peft_formula("bert", folder, ids, mask))


@pytest.mark.parametrize("name, config", [
    ("bert", AdaptivePrefixConfig(method="pt2", prefix_length=LENGTH, prefix_dropout=0.1)),
    ("bert", AdaptivePrefixConfig(method="pt2", prefix_length=LENGTH, shift_positions=True, prefix_projection=True,
                                  projection_hidden_size=8)),
    ("llama", AdaptivePrefixConfig(method="pt2", prefix_length=LENGTH)),
])
def test_round_trip_through_a_peft_folder_is_exact(tmp_path, name, config):
    model = attach(tiny_model(name), config)
    _randomize(model.adaprefix, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeftConversionWarning)  # the unshifted-positions notice
        export_peft(model, tmp_path / "peft")
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PREFIX_TUNING" and saved["num_virtual_tokens"] == LENGTH
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeftConversionWarning)  # an adaprefix export reads back without a notice
        back = load_adapter(tiny_model(name), tmp_path / "peft")
    ids, mask = tiny_batch(pad_last=0 if name == "llama" else 3)
    model.eval()
    with torch.no_grad():
        flat = model.adaprefix.prefix.embedding if model.adaprefix.prefix.projection is None else \
            model.adaprefix.prefix.projection(model.adaprefix.prefix.embedding)
        assert torch.equal(back.adaprefix.prefix.embedding, flat)
        ours, theirs = dict(model.named_parameters()), dict(back.named_parameters())
        for n in ("classifier.weight", "classifier.bias"):
            if n in ours:
                assert torch.equal(ours[n], theirs[n])
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           back(input_ids=ids, attention_mask=mask).logits)
    expected = {**config.to_dict(), "prefix_projection": False}
    resolved = back.adapter_config.to_dict()
    for field in ("method", "prefix_length", "shift_positions", "train_head"):
        assert resolved[field] == expected[field]
    assert resolved["prefix_dropout"] == model.adapter_config.prefix_dropout


def test_exported_folder_is_read_by_peft(tmp_path):
    model = attach(tiny_model("roberta"), AdaptivePrefixConfig(method="pt2", prefix_length=LENGTH,
                                                                shift_positions=True))
    _randomize(model.adaprefix, seed=6)
    _randomize(model.classifier, seed=7)
    export_peft(model, tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(tiny_model("roberta"), str(tmp_path / "peft")).eval()
    ids, mask = tiny_batch(pad_last=3)
    reference = _peft_formula("roberta", str(tmp_path / "peft"), ids, mask)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight, model.adaprefix.prefix.embedding)


@pytest.mark.parametrize("method", ["apt", "token-gate", "layer-gate"])
def test_export_refuses_gates_by_name(tmp_path, method):
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method=method, prefix_length=LENGTH))
    with pytest.raises(ConfigError, match=rf"method: PEFT's prefix tuning has no equivalent of '{method}'"):
        export_peft(model, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_export_refuses_per_layer_lengths(tmp_path):
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method="pt2", prefix_lengths=[2, 0, 3]))
    with pytest.raises(ConfigError, match=r"prefix_lengths: .* expected None, got \[2, 0, 3\]"):
        export_peft(model, tmp_path / "peft")


def _edit_config(folder, **changes):
    file = f"{folder}/adapter_config.json"
    meta = json.loads(open(file).read())
    meta.update(changes)
    open(file, "w").write(json.dumps(meta))


@pytest.mark.parametrize("field, value, message", [
    ("peft_type", "LORA", r"peft_type: expected 'PREFIX_TUNING' .*, got 'LORA'"),
    ("num_transformer_submodules", 2, r"num_transformer_submodules: expected 1 .*, got 2"),
    ("num_layers", 5, r"num_layers: expected 3 .*, got 5"),
    ("token_dim", 64, r"token_dim: expected 32 .*, got 64"),
    ("num_attention_heads", 8, r"num_attention_heads: expected 4 .*, got 8"),
    ("num_virtual_tokens", 5, r"prompt_embeddings: expected shape \(5, 192\) .*, got \(4, 192\)"),
])
def test_unsupported_peft_settings_are_refused_by_name(tmp_path, field, value, message):
    folder = _peft_folder(tmp_path, "bert", False)
    _edit_config(folder, **{field: value})
    model = tiny_model("bert")
    with pytest.raises(AdapterLoadError, match=message):
        load_adapter(model, folder)
    assert not hasattr(model, "adaprefix")  # refused before attaching


def test_modules_to_save_inside_the_backbone_are_refused_by_name(tmp_path):
    folder = _peft_folder(tmp_path, "bert", False)
    tensors = load_file(f"{folder}/adapter_model.safetensors")
    tensors["base_model.bert.embeddings.word_embeddings.weight"] = torch.zeros(96, 32)
    save_file(tensors, f"{folder}/adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AdapterLoadError, match=r"\['base_model.bert.embeddings.word_embeddings.weight'\] are neither"):
        load_adapter(tiny_model("bert"), folder)


def test_pickle_only_peft_folder_is_refused_by_name(tmp_path):
    folder = _peft_folder(tmp_path, "bert", False)
    (tmp_path / folder / "adapter_model.safetensors").rename(tmp_path / folder / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match=r"adapter_model.bin: a pickle file"):
        load_adapter(tiny_model("bert"), folder)


def test_adaprefix_folder_is_not_taken_for_peft(tmp_path):
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(method="apt", prefix_length=LENGTH))
    save_adapter(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeftConversionWarning)
        assert load_adapter(tiny_model("bert"), tmp_path / "ours").adapter_config.method == "apt"
