"""save_adapter / load_adapter: small, pickle-free, bit-for-bit, and loud about every mismatch."""

import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from adaprefix import (AdapterLoadError, AdaptivePrefixConfig, BaseModelMismatchWarning, attach, is_attached,
                       load_adapter)
from tiny_models import tiny_batch, tiny_model


def _trained_adapter(tmp_path, name="bert", **config):
    model = tiny_model(name)
    attach(model, AdaptivePrefixConfig(prefix_length=4, **config))
    with torch.no_grad():  # move every tensor away from its init, so a missed tensor shows
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_adapter(tmp_path / "adapter")
    return model, tmp_path / "adapter"


@pytest.mark.parametrize("name,config", [("bert", {}), ("bert", {"prefix_projection": True}), ("llama", {}),
                                         ("deberta-v2", {"method": "token-gate"}), ("gpt2", {"method": "pt2"}),
                                         ("mpnet", {}), ("gemma3_text", {})])
def test_round_trip_reproduces_outputs_bit_for_bit(tmp_path, name, config):
    model, path = _trained_adapter(tmp_path, name, **config)
    assert sorted(p.name for p in path.iterdir()) == ["adaprefix_config.json", "adapter.safetensors"]
    ids, mask = tiny_batch()
    loaded = load_adapter(tiny_model(name), path)
    assert loaded.adapter_config == model.adapter_config
    expected = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)


def test_adapter_is_small(tmp_path):
    model, path = _trained_adapter(tmp_path)
    backbone = sum(p.numel() for p in model.base_model.parameters()) * 4
    assert (path / "adapter.safetensors").stat().st_size < backbone / 2
    saved = json.loads((path / "adaprefix_config.json").read_text())
    assert saved["config"]["prefix_dropout"] == 0.0 and saved["config"]["gate_pooling"] == "mean"


@pytest.mark.parametrize("overrides,field", [
    ({"num_hidden_layers": 2}, "num_layers: adapter 3, model 2"),
    ({"hidden_size": 48}, "hidden_size: adapter 32, model 48"),
])
def test_load_onto_a_different_backbone_names_the_mismatch(tmp_path, overrides, field):
    _, path = _trained_adapter(tmp_path)
    with pytest.raises(AdapterLoadError, match=field):
        load_adapter(tiny_model("bert", **overrides), path)


def test_load_onto_different_kv_heads_names_the_mismatch(tmp_path):
    _, path = _trained_adapter(tmp_path, "llama")
    with pytest.raises(AdapterLoadError, match="num_kv_heads: adapter 2, model 4"):
        load_adapter(tiny_model("llama", num_key_value_heads=4), path)


def test_load_onto_a_different_architecture_names_it(tmp_path):
    _, path = _trained_adapter(tmp_path)
    with pytest.raises(AdapterLoadError, match="model_type: adapter 'bert', model 'roberta'"):
        load_adapter(tiny_model("roberta"), path)


def test_head_shape_mismatch_names_the_tensor(tmp_path):
    _, path = _trained_adapter(tmp_path)
    model = tiny_model("bert", num_labels=5)
    with pytest.raises(AdapterLoadError, match=r"does not fit this model: shape mismatches: classifier.bias: file "
                                               r"\(3,\), model \(5,\); classifier.weight: file \(3, 32\), model "
                                               r"\(5, 32\)$"):
        load_adapter(model, path)
    assert not hasattr(model, "adaprefix"), "a failed load leaves the model as it was"


@pytest.mark.parametrize("missing", ["adapter.safetensors", "adaprefix_config.json"])
def test_missing_file_is_named(tmp_path, missing):
    _, path = _trained_adapter(tmp_path)
    (path / missing).unlink()
    with pytest.raises(AdapterLoadError, match=f"{missing}: missing"):
        load_adapter(tiny_model("bert"), path)


def test_corrupt_weights_are_named(tmp_path):
    _, path = _trained_adapter(tmp_path)
    weights = path / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(AdapterLoadError, match="adapter.safetensors: unreadable or corrupt"):
        load_adapter(tiny_model("bert"), path)


def test_corrupt_config_is_named(tmp_path):
    _, path = _trained_adapter(tmp_path)
    (path / "adaprefix_config.json").write_text("{not json")
    with pytest.raises(AdapterLoadError, match="adaprefix_config.json: not valid JSON"):
        load_adapter(tiny_model("bert"), path)


def test_unknown_config_field_is_named(tmp_path):
    _, path = _trained_adapter(tmp_path)
    meta = json.loads((path / "adaprefix_config.json").read_text())
    meta["config"]["prefix_lenght"] = 8
    (path / "adaprefix_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match="adaprefix_config.json field 'config': unknown field.*prefix_lenght"):
        load_adapter(tiny_model("bert"), path)


def test_saving_after_freezing_everything_still_saves_the_adapter(tmp_path):
    model, path = _trained_adapter(tmp_path)
    model.requires_grad_(False)  # common before inference or export
    model.save_adapter(tmp_path / "frozen")
    ids, mask = tiny_batch()
    loaded = load_adapter(tiny_model("bert"), tmp_path / "frozen")
    expected = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os

    _, path = _trained_adapter(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("adapter.safetensors", "adaprefix_config.json"):
        assert (path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_pretrained_writes_the_clean_base_model(tmp_path):
    model = tiny_model("gpt2", head="causal-lm")  # tied output embeddings: the reload must not miss them either
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    with torch.no_grad():
        model.adaprefix.prefix.embedding.mul_(1.5)
    model.save_pretrained(tmp_path / "base")
    keys = safe_open(str(tmp_path / "base" / "model.safetensors"), "pt").keys()
    assert keys and not [k for k in keys if k.startswith("adaprefix.")]
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    ids, mask = tiny_batch(pad_last=0)
    with model.disable_adapter():
        assert torch.equal(reloaded.eval()(input_ids=ids, attention_mask=mask).logits,
                           model(input_ids=ids, attention_mask=mask).logits)
    # The adapter is saved beside the base model: nothing trained is lost.
    restored = load_adapter(reloaded, tmp_path / "base")
    assert torch.equal(restored(input_ids=ids, attention_mask=mask).logits,
                       model(input_ids=ids, attention_mask=mask).logits)
    # A caller that asks for given tensors gets them (the Trainer's checkpoints keep the adapter this way).
    model.save_pretrained(tmp_path / "full", state_dict=model.state_dict())
    assert "adaprefix.prefix.embedding" in safe_open(str(tmp_path / "full" / "model.safetensors"), "pt").keys()


def test_adapter_records_its_base_model_and_warns_on_another(tmp_path):
    model = tiny_model("bert")
    model.config._name_or_path = "org/bert-tiny"
    attach(model, AdaptivePrefixConfig(prefix_length=4)).save_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adaprefix_config.json").read_text())["base_model"] == "org/bert-tiny"
    same = tiny_model("bert")
    same.config._name_or_path = "org/bert-tiny"
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaseModelMismatchWarning)
        load_adapter(same, tmp_path / "adapter")
    other = tiny_model("bert")
    other.config._name_or_path = "org/bert-tiny-other-seed"
    warned = "adaprefix: .*'org/bert-tiny'.*'org/bert-tiny-other-seed'"
    with pytest.warns(BaseModelMismatchWarning, match=warned) as seen:
        load_adapter(other, tmp_path / "adapter")
    # mutmut's trampoline adds a frame between the caller and load_adapter, so the stack level is checked outside it
    if "MUTANT_UNDER_TEST" not in os.environ:
        assert seen[0].filename == __file__, "the warning points at the line that called load_adapter"


@pytest.mark.parametrize("version", [2, None])
def test_unknown_format_version_is_refused_by_name(tmp_path, version):
    _, path = _trained_adapter(tmp_path)
    meta = json.loads((path / "adaprefix_config.json").read_text())
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    (path / "adaprefix_config.json").write_text(json.dumps(meta))
    model = tiny_model("bert")
    with pytest.raises(AdapterLoadError, match=rf"format_version {version}, but adaprefix .* reads format_version 1"):
        load_adapter(model, path)
    assert not hasattr(model, "adaprefix")


def test_save_adapter_makes_missing_parent_folders_and_leaves_no_temporary_file_on_failure(tmp_path, monkeypatch):
    model, _ = _trained_adapter(tmp_path)
    model.save_adapter(tmp_path / "runs" / "a" / "adapter")
    assert (tmp_path / "runs" / "a" / "adapter" / "adapter.safetensors").is_file()

    import adaprefix.persistence as persistence

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(persistence, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_adapter(tmp_path / "failed")
    assert list((tmp_path / "failed").iterdir()) == [], "a failed write leaves neither a partial nor a temporary file"


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    _, path = _trained_adapter(tmp_path)
    tensors = load_file(str(path / "adapter.safetensors"))
    tensors["adaprefix.extra"] = tensors.pop("adaprefix.token_gate.bias")
    save_file(tensors, str(path / "adapter.safetensors"))
    model = tiny_model("bert")
    with pytest.raises(AdapterLoadError, match=r"does not fit this model: missing tensors \['adaprefix.token_gate.bias'\]"
                                               r", unexpected tensors \['adaprefix.extra'\]$"):
        load_adapter(model, path)
    assert not is_attached(model) and not hasattr(model, "adaprefix"), "a failed load leaves the model as it was"


def test_trainer_checkpoints_keep_the_adapter_for_resuming(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    trainer.save_model(str(tmp_path / "checkpoint"))  # what every Trainer checkpoint does for the weights
    keys = safe_open(str(tmp_path / "checkpoint" / "model.safetensors"), "pt").keys()
    assert "adaprefix.prefix.embedding" in keys and "adaprefix.token_gate.weight" in keys


def test_saving_again_into_the_same_folder_replaces_the_adapter(tmp_path):
    model, path = _trained_adapter(tmp_path)
    with torch.no_grad():
        model.adaprefix.prefix.embedding.add_(1.0)
    model.save_adapter(path)
    ids, mask = tiny_batch()
    assert torch.equal(load_adapter(tiny_model("bert"), path)(input_ids=ids, attention_mask=mask).logits,
                       model(input_ids=ids, attention_mask=mask).logits)


def test_an_adapter_saved_under_the_old_config_name_still_loads(tmp_path):
    model = tiny_model("bert")
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    with torch.no_grad():
        model.adaprefix.prefix.embedding.mul_(1.5)
    model.save_adapter(tmp_path / "old")
    (tmp_path / "old" / "adaprefix_config.json").rename(tmp_path / "old" / "adapter_config.json")  # before 0.2
    ids, mask = tiny_batch()
    restored = load_adapter(tiny_model("bert"), tmp_path / "old")
    assert torch.equal(restored(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits)


def test_a_model_saved_with_its_adapter_reloads_where_peft_is_installed(tmp_path):
    """transformers treats a folder holding adapter_config.json as a PEFT adapter when peft is importable."""
    model = tiny_model("bert")
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    model.save_pretrained(tmp_path / "base")
    assert not (tmp_path / "base" / "adapter_config.json").exists()
    from transformers.utils import find_adapter_config_file

    assert find_adapter_config_file(str(tmp_path / "base")) is None
