"""Prompt -> completion tasks end to end through the CLI on a tiny random Llama with a byte-level BPE tokenizer:
train -> eval -> predict -> resume for your own generation data, a text-to-text SuperGLUE task, and bad input."""

import json
import math

import pytest
import torch
from transformers import TrainerCallback
from typer.testing import CliRunner

from adaprefix.cli import app
from adaprefix.training import load_run, load_train_config, train
from adaprefix.training.generation import GenerationScorer
from decoder_helpers import QA, QA_CORPUS, RTE, save_tiny_decoder
from run_helpers import epoch_records

runner = CliRunner()

@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    return save_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), QA_CORPUS)


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _args(settings):
    return [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def _settings(model, run, **extra):
    return {"model": model, "output_dir": str(run), "epochs": 2, "batch_size": 4, "prefix_length": 8,
            "learning_rate": 1.0, "logging_steps": 1, **extra}


class KillAtFirstSave(TrainerCallback):
    """Stands in for the process being killed once the first checkpoint is sealed."""

    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def _normal(text):  # the documented normalisation, written independently: case, spaces, trailing punctuation
    return text.strip().lower().rstrip(".!?").strip()


def test_generation_data_trains_evaluates_predicts_and_resumes(tiny_decoder, tmp_path, monkeypatch):
    # Every evaluation's loss pass is matched to its eval set's rows, so that it can vouch for greedy completions.
    matched = []
    vouch = GenerationScorer._completions
    monkeypatch.setattr(GenerationScorer, "_completions",
                        lambda self, name, rows, agrees: matched.append((name, len(rows))) or vouch(self, name, rows,
                                                                                                 agrees))
    files = {"task": "custom", "train_file": _jsonl(tmp_path / "train.jsonl", [
        {"prompt": p, "completion": c} for p, c in QA * 3]),
             "dev_file": _jsonl(tmp_path / "dev.jsonl", [{"prompt": p, "completion": c} for p, c in QA])}
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *_args(_settings(tiny_decoder, run, **files))])
    assert result.exit_code == 0, result.output
    assert "custom apt: best dev exact_match" in result.stdout
    records = epoch_records(run)
    assert len(records) == 2 and matched == [("dev", len(QA))] * 2
    for record in records:
        assert record["dev_perplexity"] == pytest.approx(math.exp(record["dev_completion_loss"]))
        assert 0 <= record["dev_exact_match"] <= 1
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["main_metric"] == "exact_match" and final["lr_schedule"] == "linear"
    config = (run / "config.yaml").read_text()
    assert "kind: generation" in config and "format: jsonl" in config
    # Generation budget: the longest completion (" yes" is one BPE token here, as " no") + EOS + the margin of 8.
    assert json.loads((run / "generation.json").read_text()) == {"max_new_tokens": 10}

    evaluated = runner.invoke(app, ["eval", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads((run / "eval_dev.json").read_text())
    assert matched == [("dev", len(QA))] * 3
    best = records[final["best_epoch"] - 1]
    assert scores["dev_exact_match"] == best["dev_exact_match"]
    assert scores["dev_completion_loss"] == pytest.approx(best["dev_completion_loss"], rel=1e-5)

    # The completion loss against a reference computed one example at a time, without padding or the task's code.
    loaded = load_run(run)
    tok, model = loaded.tokenizer, loaded.model
    nll, count = 0.0, 0
    with torch.no_grad():
        for prompt, completion in QA:
            p = tok(prompt)["input_ids"]
            target = tok(prompt + completion)["input_ids"][len(p):] + [tok.eos_token_id]
            logp = model(input_ids=torch.tensor([p + target])).logits[0].log_softmax(-1)
            nll -= sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(target))
            count += len(target)
    assert scores["dev_completion_loss"] == pytest.approx(nll / count, rel=1e-4)

    # Exact match against predict's completions, scored by the test's own normalisation.
    predicted = runner.invoke(app, ["predict", str(run), "--file", files["dev_file"], "--output",
                                    str(tmp_path / "out.jsonl")])
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["prompt"] for line in lines] == [p for p, _ in QA]
    em = sum(_normal(line["prediction"]) == _normal(line["completion"]) for line in lines) / len(lines)
    assert em == scores["dev_exact_match"] and em > 0, "a trivial 0 would not test the scoring"
    one = runner.invoke(app, ["predict", str(run), "Is snow white? Answer:"])
    assert one.exit_code == 0, one.output
    line = json.loads(one.stdout.strip().splitlines()[-1])
    assert line["prompt"] == "Is snow white? Answer:" and isinstance(line["prediction"], str)
    two = runner.invoke(app, ["predict", str(run), "a prompt", "a second text"])
    assert two.exit_code == 2 and "2 texts, but task 'custom' takes 1 (prompt)" in two.output

    # Killed after the first epoch's checkpoint, resumed from the command line: the same records as the whole run.
    cut = tmp_path / "cut"
    cfg = load_train_config(None, {**_settings(tiny_decoder, cut, **files), "task": "custom"})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[KillAtFirstSave()], verbosity="quiet")
    assert len(epoch_records(cut)) == 1 and not (cut / "final_metrics.json").exists()
    resumed = runner.invoke(app, ["train", "--resume", "--output-dir", str(cut)])
    assert resumed.exit_code == 0, resumed.output
    assert epoch_records(cut) == records


def test_text_to_text_superglue_task_through_the_cli(tiny_decoder, tmp_path):
    rte = tmp_path / "data" / "superglue" / "RTE"
    rte.mkdir(parents=True)
    for split in ("train", "val"):
        _jsonl(rte / f"{split}.jsonl", [dict(r, idx=i) for i, r in enumerate(RTE)])
    run = tmp_path / "run"
    settings = _settings(tiny_decoder, run, task="rte-t2t", data_dir=str(tmp_path / "data"), epochs=1,
                         max_length=96)
    result = runner.invoke(app, ["train", *_args(settings)])
    assert result.exit_code == 0, result.output
    assert "rte-t2t apt: best dev accuracy" in result.stdout
    record = epoch_records(run)[0]
    assert {"dev_accuracy", "dev_invalid", "dev_completion_loss", "dev_perplexity"} <= set(record)
    assert json.loads((run / "labels.json").read_text()) == ["entailment", "not_entailment"]

    predicted = runner.invoke(app, ["predict", str(run), "--file", str(rte / "val.jsonl")])
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.strip().splitlines()]
    assert [line["premise"] for line in lines] == [r["premise"] for r in RTE]
    said = [{"yes": "entailment", "no": "not_entailment"}.get(_normal(line["prediction"])) for line in lines]
    assert [line["label"] for line in lines] == said
    # Accuracy is the share of generations that say the gold label's word.
    gold = [r["label"] for r in RTE]
    assert record["dev_accuracy"] == pytest.approx(sum(s == g for s, g in zip(said, gold)) / len(RTE))
    assert record["dev_invalid"] == pytest.approx(said.count(None) / len(RTE))


def test_bad_generation_data_is_refused_naming_file_line_and_field(tiny_decoder, tmp_path):
    train_file = _jsonl(tmp_path / "train.jsonl", [{"prompt": p, "completion": c} for p, c in QA])
    dev_file = _jsonl(tmp_path / "dev.jsonl", [{"prompt": "Is it?", "completion": " yes"}, {"prompt": "Is it?"}])
    settings = _settings(tiny_decoder, tmp_path / "run", task="custom", train_file=train_file, dev_file=dev_file)
    result = runner.invoke(app, ["train", *_args(settings)])
    assert result.exit_code == 2
    assert f"{dev_file}:2: field 'completion': missing field" in result.output
