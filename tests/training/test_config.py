"""TrainConfig: YAML presets, --key value overrides, and errors that name the setting."""

from pathlib import Path

import pytest

from adaprefix.training.config import TrainConfig, TrainConfigError, load_train_config

CONFIGS = Path(__file__).parents[2] / "configs"
PRESETS = sorted(CONFIGS.rglob("*.yaml"))


def test_overrides_are_typed_and_adapter_fields_go_to_the_adapter():
    cfg = load_train_config(None, {"task": "rte", "epochs": "3", "prefix-length": "8", "learning_rate": "5e-3",
                                   "adapter.gate_pooling": "cls", "prefix_projection": "true"})
    assert cfg.epochs == 3 and cfg.learning_rate == 5e-3
    assert cfg.adapter == {"prefix_length": 8, "gate_pooling": "cls", "prefix_projection": True}
    assert cfg.adapter_config().prefix_length == 8


def test_defaults_are_the_main_job():
    cfg = TrainConfig()
    assert (cfg.task, cfg.method, cfg.model) == ("cb", "apt", "minilm")
    assert cfg.resolved_learning_rate == 1e-2
    assert TrainConfig(method="ft").resolved_learning_rate == 2e-5


@pytest.mark.parametrize("overrides,message", [
    ({"epochs": "many"}, "epochs: expected int, got 'many'"),
    ({"prefx_length": "4"}, "unknown setting 'prefx_length'; known settings: .*prefix_length"),
    ({"method": "lora"}, "method: expected one of ft, apt"),
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
    if cfg.method != "ft":
        cfg.adapter_config()


def test_string_settings_stay_exactly_as_typed():
    cfg = load_train_config(None, {"output_dir": "2024_01", "model": "007", "text_column": "1e3",
                                   "text_pair_column": "none"})
    assert (cfg.output_dir, cfg.model, cfg.text_column) == ("2024_01", "007", "1e3")
    assert cfg.text_pair_column is None


@pytest.mark.parametrize("key", ["adapter.epochs", "adapter.method"])
def test_run_settings_nested_under_adapter_are_refused(key):
    with pytest.raises(TrainConfigError, match=f"{key} is not an adapter field"):
        load_train_config(None, {key: "3"})


def test_data_seed_defaults_to_the_run_seed():
    assert load_train_config(None, {"seed": "3"}).resolved_data_seed == 3
    cfg = load_train_config(None, {"seed": "3", "data-seed": "11", "max-train-samples": "100", "format": "tsv",
                                   "tsv-quoting": "none"})
    assert (cfg.resolved_data_seed, cfg.max_train_samples, cfg.format, cfg.tsv_quoting) == (11, 100, "tsv", "none")


def test_per_layer_prefix_lengths_from_the_command_line_or_yaml(tmp_path):
    assert load_train_config(None, {"method": "pt2", "prefix-lengths": "4,8,0"}).adapter["prefix_lengths"] == [4, 8, 0]
    preset = tmp_path / "pt2star.yaml"
    preset.write_text("method: pt2\nadapter:\n  prefix_lengths: [2, 0, 5]\n")
    assert load_train_config(preset).adapter_config().prefix_lengths == [2, 0, 5]
    with pytest.raises(TrainConfigError, match=r"prefix_lengths: expected a list of integers .*'2.5'"):
        load_train_config(None, {"method": "pt2", "prefix_lengths": "4,2.5"})
