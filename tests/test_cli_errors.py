"""The command line refuses bad input with one clean message (exit code 2, no traceback), and reads the run folders
older versions wrote."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from adaprefix.cli import app
from run_helpers import SENTIMENT, tiny_settings

runner = CliRunner()


def _refused(result, *fragments):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "error:" in result.output and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


@pytest.fixture(scope="module")
def finished_run(tiny_backbone, tmp_path_factory):
    """A finished one-epoch APT run on the tiny backbone, trained through the CLI."""
    root = tmp_path_factory.mktemp("cli-errors")
    files = {}
    for name, rows in (("train_file", SENTIMENT * 2), ("dev_file", SENTIMENT)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
        files[name] = str(path)
    run = root / "run"
    settings = tiny_settings(tiny_backbone, files, run, epochs=1)
    args = [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("args,fragments", [
    (["--prefix-length", "0"], ["adapter: prefix_length: expected a positive integer, got 0"]),
    (["--gate-pooling", "max"], ["gate_pooling: expected one of 'auto', 'mean', 'cls', 'token', got 'max'"]),
    (["--method", "lora"], ["method: expected one of ft, head, apt, pt2, token-gate, layer-gate, got 'lora'"]),
    (["--epochs", "0"], ["epochs: expected a positive integer, got 0"]),
])
def test_a_bad_config_value_is_one_clean_error(tmp_path, args, fragments):
    _refused(runner.invoke(app, ["train", *args, "--output-dir", str(tmp_path / "r")]), *fragments)


def test_a_folder_that_is_no_run_is_one_clean_error(tmp_path):
    for command in (["eval", str(tmp_path)], ["predict", str(tmp_path), "text"], ["gates", str(tmp_path)]):
        _refused(runner.invoke(app, command), "not a run directory (no config.yaml)")


def test_a_bad_adapter_is_one_clean_error(finished_run, tmp_path):
    import shutil

    run = tmp_path / "broken"
    shutil.copytree(finished_run, run)
    (run / "adapter" / "adaprefix_config.json").write_text("{not json")
    _refused(runner.invoke(app, ["eval", str(run)]), "adaprefix_config.json")


def test_a_run_folder_with_the_older_flat_config_yaml_still_evaluates_and_predicts(finished_run, tmp_path):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(finished_run, run)
    grouped = yaml.safe_load((run / "config.yaml").read_text())
    flat = {k: v for k, v in grouped.items() if k not in ("custom", "adapter")}
    flat.update(grouped["custom"])  # the custom-data keys sat at the top level
    flat["adapter"] = {"prefix_length": grouped["adapter"]["prefix_length"]}  # only the adapter keys that were given
    (run / "config.yaml").write_text(yaml.safe_dump(flat, sort_keys=False))
    assert runner.invoke(app, ["eval", str(run)]).exit_code == 0
    predicted = runner.invoke(app, ["predict", str(run), "a delight"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["label"] in ("neg", "pos")
    _refused(runner.invoke(app, ["train", "--output-dir", str(run), "--resume"]), "already finished")
