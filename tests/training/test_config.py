"""TrainConfig: YAML presets, --key value overrides, and errors that name the setting."""

import typing
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from adaprefix.config import METHOD_NOTES, METHODS, AdaptivePrefixConfig
from adaprefix.training.config import (SECTIONS, TRAIN_METHODS, CustomData, TrainConfig, TrainConfigError,
                                       load_train_config, run_fields, section_fields)

CONFIGS = Path(__file__).parents[2] / "configs"
PRESETS = sorted(CONFIGS.rglob("*.yaml"))


def test_overrides_are_typed_and_adapter_fields_go_to_the_adapter():
    cfg = load_train_config(None, {"task": "rte", "epochs": "3", "prefix-length": "8", "learning_rate": "5e-3",
                                   "adapter.gate_pooling": "cls", "prefix_projection": "true"})
    assert cfg.epochs == 3 and cfg.learning_rate == 5e-3
    assert (cfg.adapter.prefix_length, cfg.adapter.gate_pooling, cfg.adapter.prefix_projection) == (8, "cls", True)
    assert cfg.adapter.method == "apt"


def test_defaults_are_the_main_job():
    cfg = TrainConfig()
    assert (cfg.task, cfg.method, cfg.model) == ("cb", "apt", "minilm")
    assert cfg.resolved_learning_rate == 1e-2
    assert TrainConfig(method="ft").resolved_learning_rate == 2e-5
    assert TrainConfig(method="head").resolved_learning_rate == 1e-2 and TrainConfig(method="head").adapter is None


@pytest.mark.parametrize("overrides,message", [
    ({"epochs": "many"}, "epochs: expected int, got 'many'"),
    ({"prefx_length": "4"}, "unknown setting 'prefx_length'; known settings: .*prefix_length"),
    ({"method": "lora"}, "method: expected one of ft, head, apt"),
    ({"gate_pooling": "max"}, "gate_pooling: expected one of 'auto', 'mean', 'cls', 'token', got 'max'"),
    ({"task": "custom"}, "train_file"),
    ({"format": "xlsx"}, "format: expected one of auto, jsonl, csv, tsv, conll, got 'xlsx'"),
    ({"tsv_quoting": "yes"}, "tsv_quoting: expected one of auto, none, csv, got 'yes'"),
    ({"tsv_quoting": "double"}, "tsv_quoting: expected one of auto, none, csv, got 'double'"),
    ({"max_train_samples": "0"}, "max_train_samples: expected a positive integer or null"),
    ({"max_eval_samples": "-1"}, "max_eval_samples: expected a positive integer or null"),
])
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(TrainConfigError, match=message):
        load_train_config(None, overrides)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(TrainConfigError, match="bad.yaml: not valid YAML"):
        load_train_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("epochs: 3\nlearning_rat: 0.1\n")
    with pytest.raises(TrainConfigError, match="wrong.yaml: unknown setting 'learning_rat'"):
        load_train_config(wrong)
    with pytest.raises(TrainConfigError, match="missing.yaml: config file not found"):
        load_train_config(tmp_path / "missing.yaml")


def test_presets_exist():
    assert PRESETS, "configs/ ships YAML presets"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_preset_validates_and_names_its_command(preset):
    first_line = preset.read_text().splitlines()[0]
    assert first_line.startswith(f"# adaprefix train --config configs/{preset.relative_to(CONFIGS)}")
    cfg = load_train_config(preset)
    assert (cfg.adapter is None) == (cfg.method in ("ft", "head"))


def test_string_settings_stay_exactly_as_typed():
    cfg = load_train_config(None, {"output_dir": "2024_01", "model": "007", "text_column": "1e3",
                                   "text_pair_column": "none"})
    assert (cfg.output_dir, cfg.model, cfg.custom.text_column) == ("2024_01", "007", "1e3")
    assert cfg.custom.text_pair_column is None


@pytest.mark.parametrize("key", ["adapter.epochs", "adapter.method"])
def test_run_settings_nested_under_adapter_are_refused(key):
    with pytest.raises(TrainConfigError, match=f"{key} is not an adapter field"):
        load_train_config(None, {key: "3"})


def test_data_seed_defaults_to_the_run_seed():
    assert load_train_config(None, {"seed": "3"}).resolved_data_seed == 3
    cfg = load_train_config(None, {"seed": "3", "data-seed": "11", "max-train-samples": "100", "format": "tsv",
                                   "tsv-quoting": "none"})
    assert (cfg.resolved_data_seed, cfg.max_train_samples, cfg.custom.format, cfg.custom.tsv_quoting) == \
        (11, 100, "tsv", "none")


def test_per_layer_prefix_lengths_from_the_command_line_or_yaml(tmp_path):
    assert load_train_config(None, {"method": "pt2", "prefix-lengths": "4,8,0"}).adapter.prefix_lengths == [4, 8, 0]
    preset = tmp_path / "pt2star.yaml"
    preset.write_text("method: pt2\nadapter:\n  prefix_lengths: [2, 0, 5]\n")
    assert load_train_config(preset).adapter.prefix_lengths == [2, 0, 5]
    with pytest.raises(TrainConfigError, match=r"prefix_lengths: expected a list of integers .*'2.5'"):
        load_train_config(None, {"method": "pt2", "prefix_lengths": "4,2.5"})


# config.yaml as runs before the custom: section and the typed adapter wrote it (flat custom keys, partial adapter)
FLAT_CONFIG_YAML = """\
task: custom
method: pt2
model: minilm
data_dir: null
output_dir: null
epochs: 12
batch_size: 16
eval_batch_size: 64
learning_rate: null
head_learning_rate: null
weight_decay: 0.0
lr_schedule: auto
exp_decay: 0.95
max_length: null
hidden_dropout: null
gradient_accumulation_steps: 1
seed: 42
data_seed: 42
precision: auto
max_train_samples: null
max_eval_samples: null
logging_steps: 10
train_file: train.tsv
dev_file: dev.tsv
test_file: null
text_column: text
text_pair_column: null
label_column: label
format: tsv
tsv_quoting: auto
token_column: 0
tag_column: -1
adapter:
  prefix_length: 4
"""


def test_a_flat_config_yaml_of_an_older_run_still_loads(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(FLAT_CONFIG_YAML)
    cfg = load_train_config(saved)
    assert (cfg.custom.train_file, cfg.custom.dev_file, cfg.custom.format) == ("train.tsv", "dev.tsv", "tsv")
    assert isinstance(cfg.adapter, AdaptivePrefixConfig)
    assert (cfg.adapter.method, cfg.adapter.prefix_length, cfg.adapter.gate_pooling) == ("pt2", 4, "auto")


@pytest.mark.parametrize("method", ["apt", "ft"])
def test_config_yaml_round_trips(tmp_path, method):
    cfg = load_train_config(None, {"task": "custom", "method": method, "train_file": "t.jsonl", "format": "jsonl",
                                   "prefix_lengths": "2,0,3", "gate_pooling": "cls", "epochs": "2"})
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    data = yaml.safe_load(saved.read_text())
    assert data["custom"]["train_file"] == "t.jsonl" and "train_file" not in data
    if method == "ft":
        assert data["adapter"] is None and cfg.adapter is None
    else:
        assert "method" not in data["adapter"] and data["adapter"]["prefix_lengths"] == [2, 0, 3]
    assert load_train_config(saved) == cfg


def test_sections_are_built_once_and_given_as_mappings_or_dataclasses():
    adapter = AdaptivePrefixConfig(method="pt2", prefix_length=3)
    cfg = TrainConfig(method="pt2", adapter=adapter, custom={"text_column": "sentence"})
    assert cfg.adapter is adapter and isinstance(cfg.custom, CustomData) and cfg.custom.text_column == "sentence"
    assert TrainConfig(method="token-gate", adapter={"prefix_length": 3}).adapter.use_layer_gate is False
    assert TrainConfig(method="layer-gate", adapter=adapter).adapter.method == "layer-gate"  # the run's method
    with pytest.raises(TrainConfigError, match="adapter: prefix_length: expected a positive integer"):
        TrainConfig(adapter={"prefix_length": 0})
    with pytest.raises(TrainConfigError, match="custom: unknown field.*text_colum"):
        TrainConfig(custom={"text_colum": "x"})


@pytest.mark.parametrize("settings", [{"custom": {"label_column": "y"}}, {"custom.label-column": "y"},
                                      {"label_column": "y"}])
def test_custom_data_settings_flat_nested_or_dotted(settings):
    assert load_train_config(None, settings).custom.label_column == "y"


def test_run_settings_in_the_custom_section_are_refused():
    with pytest.raises(TrainConfigError, match="custom.epochs is not a custom field"):
        load_train_config(None, {"custom": {"epochs": 3}})


def test_every_setting_name_belongs_to_one_place():
    names = [f.name for f in run_fields()] + [f.name for s in SECTIONS for f in section_fields(s)]
    assert len(names) == len(set(names))


def test_the_method_lists_derive_from_the_core_list():
    assert TRAIN_METHODS == ("ft", "head") + METHODS
    assert set(METHOD_NOTES) == set(METHODS)
    for cls in (TrainConfig, AdaptivePrefixConfig):
        help_text = {f.name: f.metadata["help"] for f in fields(cls)}["method"]
        assert all(m in help_text for m in (TRAIN_METHODS if cls is TrainConfig else METHODS))
    assert typing.get_args(typing.get_type_hints(AdaptivePrefixConfig)["method"]) == METHODS
