"""The command line end to end on a tiny backbone: train, eval, predict, gates, and refusals."""

import json

import pytest
import torch
from typer.testing import CliRunner

from adaprefix.cli import app
from run_helpers import tiny_settings

runner = CliRunner()


def _args(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def _train(settings, *flags):
    return runner.invoke(app, ["train", *_args(settings), *flags])


def test_train_eval_predict_gates_end_to_end(tiny_backbone, sentiment_files, tmp_path):
    run = tmp_path / "run"
    result = _train(tiny_settings(tiny_backbone, sentiment_files, run))
    assert result.exit_code == 0, result.output
    assert "custom apt: best dev accuracy" in result.output and "trainable params" in result.output
    for name in ("config.yaml", "metrics.jsonl", "final_metrics.json", "adapter/adapter.safetensors",
                 "adapter/adaprefix_config.json", "tokenizer/tokenizer.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["dev"]["accuracy"] == max(r["dev_accuracy"] for r in epochs)

    evaluated = runner.invoke(app, ["eval", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((run / "eval_dev.json").read_text())["dev_accuracy"] == pytest.approx(final["dev"]["accuracy"])

    predicted = runner.invoke(app, ["predict", str(run), "what a wonderful film"])
    assert predicted.exit_code == 0, predicted.output
    line = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert line["text"] == "what a wonderful film" and line["label"] in ("neg", "pos")

    inputs = tmp_path / "inputs.txt"
    inputs.write_text("a delight\nso boring\n")
    out = tmp_path / "predictions.jsonl"
    assert runner.invoke(app, ["predict", str(run), "--file", str(inputs), "--output", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 2

    records = tmp_path / "inputs.jsonl"
    records.write_text('{"text": "a delight", "label": "pos"}\n{"text": "so boring"}\n')
    from_jsonl = runner.invoke(app, ["predict", str(run), "--file", str(records)])
    assert from_jsonl.exit_code == 0, from_jsonl.output
    assert [json.loads(x)["text"] for x in from_jsonl.stdout.strip().splitlines()] == ["a delight", "so boring"]
    records.write_text('{"sentence": "a delight"}\n')
    wrong = runner.invoke(app, ["predict", str(run), "--file", str(records)])
    assert wrong.exit_code == 2 and "inputs.jsonl:1: missing field(s) text" in wrong.output

    gates = runner.invoke(app, ["gates", str(run)])
    assert gates.exit_code == 0, gates.output
    assert (run / "gates.png").stat().st_size > 0
    assert len(json.loads((run / "gates.json").read_text())["layers"]) == 2


def test_full_fine_tuning_saves_the_model(tiny_backbone, sentiment_files, tmp_path):
    run = tmp_path / "ft"
    result = _train(tiny_settings(tiny_backbone, sentiment_files, run, method="ft", epochs=1))
    assert result.exit_code == 0, result.output
    assert (run / "model" / "model.safetensors").is_file() and not (run / "adapter").exists()
    assert runner.invoke(app, ["eval", str(run)]).exit_code == 0


def test_the_head_alone_trains_on_a_backbone_left_bit_for_bit(tiny_backbone, sentiment_files, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "head"
    result = _train(tiny_settings(tiny_backbone, sentiment_files, run, method="head", epochs=2,
                                  learning_rate=0.1))
    assert result.exit_code == 0, result.output
    assert (run / "model" / "model.safetensors").is_file() and not (run / "adapter").exists()
    before = load_file(f"{tiny_backbone}/model.safetensors")
    after = load_file(run / "model" / "model.safetensors")
    head = {name for name in after if name.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    for name in after.keys() - head:  # the backbone, its pooler included, exactly as loaded
        assert torch.equal(after[name], before[name]), name
    labels, hidden = after["classifier.weight"].shape
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["trainable_parameters"] == hidden * labels + labels
    assert runner.invoke(app, ["eval", str(run)]).exit_code == 0
    refused = runner.invoke(app, ["prune", str(run), "--output", str(tmp_path / "pruned")])
    assert refused.exit_code == 2 and "a run of method head has no adapter to prune" in refused.output


@pytest.mark.parametrize("head_lr,expected", [(None, 1e-2), (1e-4, 1e-4)])
def test_the_head_alone_trains_at_the_head_learning_rate_when_one_is_given(tiny_backbone, head_lr, expected):
    from transformers import AutoModelForSequenceClassification

    from adaprefix.tasks import get_task
    from adaprefix.training.build import build_optimizer, freeze_backbone
    from adaprefix.training.config import TrainConfig

    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone)
    freeze_backbone(model, get_task("cb"))
    cfg = TrainConfig(method="head", learning_rate=1e-2, head_learning_rate=head_lr)
    groups = build_optimizer(model, cfg).param_groups
    head = {id(p) for p in model.classifier.parameters()}
    assert {id(p) for g in groups for p in g["params"]} == head
    assert {g["lr"] for g in groups} == {expected}


def test_the_head_alone_is_refused_on_a_generation_task(tiny_backbone):
    from transformers import AutoModelForSequenceClassification

    from adaprefix.tasks import get_task
    from adaprefix.training.build import freeze_backbone
    from adaprefix.training.config import TrainConfigError

    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone)
    with pytest.raises(TrainConfigError, match="method: 'head' trains a task head .* cb-t2t is a generation task"):
        freeze_backbone(model, get_task("cb-t2t"))
    from transformers import AutoModel

    bare = AutoModel.from_pretrained(tiny_backbone)  # a backbone with no head on it
    with pytest.raises(TrainConfigError, match="method: 'head' found no head outside the backbone of BertModel"):
        freeze_backbone(bare, get_task("cb"))


def test_finished_run_is_refused_unless_overwrite(tiny_backbone, sentiment_files, tmp_path):
    settings = tiny_settings(tiny_backbone, sentiment_files, tmp_path / "run", epochs=1)
    assert _train(settings).exit_code == 0
    refused = _train(settings)
    assert refused.exit_code == 2
    assert "already holds a finished run" in refused.output and "--overwrite" in refused.output
    assert _train(settings, "--overwrite").exit_code == 0


def test_unknown_task_lists_known_ones(tmp_path):
    result = runner.invoke(app, ["train", "--task", "sst9", "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "sst9" in result.output and "rte" in result.output and "conll04" in result.output


def test_missing_data_dir_says_where_it_looked(tmp_path):
    result = runner.invoke(app, ["train", "--task", "rte", "--data-dir", str(tmp_path / "nowhere"),
                                 "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "nowhere" in result.output


def test_malformed_jsonl_names_file_and_line(tiny_backbone, sentiment_files, tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": "pos"}\n{"text": "oops", "label": \n')
    result = _train(tiny_settings(tiny_backbone, {**sentiment_files, "train_file": str(broken)}, tmp_path / "r"))
    assert result.exit_code == 2
    assert "broken.jsonl:2" in result.output


def test_unknown_setting_is_named(tmp_path):
    result = runner.invoke(app, ["train", "--epochz", "3", "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "unknown setting 'epochz'" in result.output


def test_multiple_choice_task_trains_and_predicts_from_a_file(tiny_backbone, task_data_dir, tmp_path):
    run = tmp_path / "copa"
    settings = {"task": "copa", "model": tiny_backbone, "data_dir": str(task_data_dir), "output_dir": str(run),
                "epochs": 2, "batch_size": 4, "prefix_length": 4, "max_length": 32}
    result = _train(settings)
    assert result.exit_code == 0, result.output
    assert "copa apt: best dev accuracy" in result.stdout
    predicted = runner.invoke(app, ["predict", str(run), "--file", str(task_data_dir / "superglue/COPA/val.jsonl")])
    assert predicted.exit_code == 0, predicted.output
    rows = [json.loads(line) for line in predicted.stdout.strip().splitlines()]
    assert len(rows) == 8 and {r["label"] for r in rows} <= {"choice1", "choice2"}
    refused = runner.invoke(app, ["predict", str(run), "one text"])
    assert refused.exit_code == 2 and "--file" in refused.output
    # the model takes (examples, choices, T): what the gates saw is each of the 8 dev examples' 2 choices
    gates = runner.invoke(app, ["gates", str(run)])
    assert gates.exit_code == 0, gates.output
    report = json.loads((run / "gates.json").read_text())
    assert report["examples"] == 16 and len(report["layers"]) == 2


def test_ner_reports_test_f1_at_the_best_dev_epoch(tiny_backbone, task_data_dir, tmp_path):
    run = tmp_path / "ner"
    settings = {"task": "conll04", "model": tiny_backbone, "data_dir": str(task_data_dir), "output_dir": str(run),
                "epochs": 3, "batch_size": 2, "prefix_length": 4, "max_length": 32, "learning_rate": 0.05,
                "logging_steps": 1}
    result = _train(settings)
    assert result.exit_code == 0, result.output
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["lr_schedule"] == "exponential" and final["main_metric"] == "f1"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["dev_f1"])
    assert final["test"]["f1"] == best["test_f1"] and final["best_epoch"] == best["epoch"]
    lrs = [r["learning_rate"] for r in records]
    assert lrs[1] == pytest.approx(lrs[0] * 0.95, rel=1e-6), "exponential decay 0.95 per epoch"
    predicted = runner.invoke(app, ["predict", str(run), "John Smith lives in Boston"])
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.stdout.strip().splitlines()[-1])["tags"]) == 5


def test_ner_scores_test_only_when_dev_improves_and_reports_the_same_numbers(tiny_backbone, task_data_dir, tmp_path):
    def train(name, **extra):
        run = tmp_path / name
        settings = {"task": "conll04", "model": tiny_backbone, "data_dir": str(task_data_dir), "output_dir": str(run),
                    "epochs": 6, "batch_size": 2, "prefix_length": 4, "max_length": 32, "learning_rate": 0.05,
                    "logging_steps": 1, **extra}
        result = _train(settings)
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return records, json.loads((run / "final_metrics.json").read_text())

    every, every_final = train("every", test_every_epoch=True)
    assert all("test_f1" in r for r in every)
    records, final = train("on-improvement")
    best_so_far, improved = None, []
    for r in records:
        improved.append(best_so_far is None or r["dev_f1"] > best_so_far)
        best_so_far = r["dev_f1"] if improved[-1] else best_so_far
    assert ["test_f1" in r for r in records] == improved and not all(improved)  # some epoch skipped its test
    assert [r["dev_f1"] for r in records] == [r["dev_f1"] for r in every]  # scoring test changed no training
    assert final["test"] == every_final["test"] and final["best_epoch"] == every_final["best_epoch"]


def test_tasks_command_says_where_it_looked(tmp_path):
    result = runner.invoke(app, ["tasks", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "conll04" in result.stdout and "missing" in result.stdout


def test_train_help_lists_every_setting():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for setting in ("--epochs", "--learning-rate", "--lr-schedule", "--prefix-length", "--gate-pooling",
                    "--train-file"):
        assert setting in result.stdout


def test_exact_gates_from_a_text_train_and_prune_into_a_run_that_evaluates(tiny_backbone, sentiment_files, tmp_path):
    run, pruned = tmp_path / "run", tmp_path / "pruned"
    settings = tiny_settings(tiny_backbone, sentiment_files, run, gate_mode="exact",
                             prefix_init_text="a wonderful film", prefix_dropout=0.0)
    result = _train(settings)
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "adapter" / "adaprefix_config.json").read_text())["config"]
    assert saved["gate_mode"] == "exact" and saved["prefix_init_text"] == "a wonderful film"
    result = runner.invoke(app, ["prune", str(run), "--output", str(pruned), "--threshold", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((pruned / "pruned.json").read_text())
    assert sum(report["lengths"]) == 8  # 2 layers x 4 tokens: after a few steps every exact gate is above 0
    assert runner.invoke(app, ["eval", str(pruned)]).exit_code == 0
    kept = json.loads((pruned / "eval_dev.json").read_text())["dev_accuracy"]
    assert runner.invoke(app, ["eval", str(run)]).exit_code == 0
    assert kept == json.loads((run / "eval_dev.json").read_text())["dev_accuracy"]
    refused = runner.invoke(app, ["prune", str(run), "--output", str(tmp_path / "none"), "--threshold", "1000"])
    assert refused.exit_code != 0 and "use a lower threshold" in refused.output
