"""What `adaprefix train` shows: a clean console by default, nothing in --quiet, transformers' own output in
--verbose; a load report survives whenever it names more than the new task head."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertModel

from adaprefix.training.display import LOAD_REPORT_LOGGER, load_pretrained, outside_backbone
from run_helpers import tiny_settings

NOISE = ("LOAD REPORT", "{'loss'", "'eval_dev_loss'", "Writing model shards", "Loading weights", "it/s]")


def _train_cli(settings: dict, *flags: str) -> subprocess.CompletedProcess:
    args = [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "adaprefix.cli", "train", *args, *flags], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def bare_backbone(tmp_path_factory):
    """A checkpoint without a task head: loading it for classification makes the head new (MISSING)."""
    path = tmp_path_factory.mktemp("bare-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=24)).save_pretrained(path)
    return path


@pytest.fixture()
def load_reports():
    """The load-report records that reach transformers' handlers."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if "LOAD REPORT" in record.getMessage():
                seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def test_a_report_that_only_names_the_new_head_is_dropped(bare_backbone, load_reports):
    model = load_pretrained(BertForSequenceClassification, bare_backbone, num_labels=3)
    assert model.classifier.out_features == 3
    assert load_reports == []


def test_verbose_keeps_transformers_report(bare_backbone, load_reports):
    load_pretrained(BertForSequenceClassification, bare_backbone, "verbose", num_labels=3)
    assert len(load_reports) == 1 and "classifier.weight" in load_reports[0]


def test_a_missing_backbone_weight_is_still_reported(bare_backbone, tmp_path, load_reports):
    broken = tmp_path / "broken"
    BertModel.from_pretrained(bare_backbone).save_pretrained(broken)
    weights = load_file(broken / "model.safetensors")
    dropped = next(name for name in weights if "encoder.layer.0.attention.self.query.weight" in name)
    del weights[dropped]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    load_pretrained(BertForSequenceClassification, broken, num_labels=3)
    assert len(load_reports) == 1
    assert "query.weight" in load_reports[0] and "classifier.weight" in load_reports[0]


def test_outside_backbone_reads_names_and_mismatch_tuples():
    assert outside_backbone(["classifier.weight", ("classifier.bias", (2,), (3,))], "bert")
    assert not outside_backbone(["bert.pooler.dense.weight"], "bert")
    assert outside_backbone([], "bert")


def test_default_console_is_one_line_per_epoch_without_library_noise(tiny_backbone, sentiment_files, tmp_path):
    done = _train_cli(tiny_settings(tiny_backbone, sentiment_files, tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in console, f"{noise!r} in:\n{console}"
    epoch_lines = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(" · ")[0] for line in epoch_lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("dev accuracy" in line and "best" in line for line in epoch_lines)
    assert done.stdout.strip().splitlines()[-1].startswith("custom apt: best dev accuracy")


def test_quiet_prints_only_the_summary_and_verbose_shows_transformers(tiny_backbone, sentiment_files, tmp_path):
    quiet = _train_cli(tiny_settings(tiny_backbone, sentiment_files, tmp_path / "q", epochs=1), "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == ""
    assert [line for line in quiet.stdout.splitlines() if line.strip()] == [quiet.stdout.strip()]
    assert quiet.stdout.startswith("custom apt: best dev accuracy")

    verbose = _train_cli(tiny_settings(tiny_backbone, sentiment_files, tmp_path / "v", epochs=1), "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "'loss'" in verbose.stdout + verbose.stderr  # the Trainer's own log dicts
    assert "it/s" in verbose.stderr  # its progress bars

    both = _train_cli(tiny_settings(tiny_backbone, sentiment_files, tmp_path / "b"), "--quiet", "--verbose")
    assert both.returncode != 0 and "exclude each other" in both.stderr
