"""Interrupted runs resume to the same result; NaN losses stop cleanly; nothing half-written is trusted."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from adaprefix.training import load_train_config, train
from adaprefix.training.callbacks import EpochRecorder, NonFiniteLossError
from run_helpers import epoch_records, tiny_settings


class At(TrainerCallback):
    """Runs ``action(model)`` at the Trainer event ``event`` ("save" or "evaluate") once epoch ``epoch`` is reached."""

    def __init__(self, event, epoch, action):
        self.event, self.epoch, self.action = event, epoch, action

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.event == "save" and state.epoch >= self.epoch:
            self.action(model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.event == "evaluate" and state.epoch >= self.epoch:
            self.action(model)


def kill(model):
    """Stands in for the process being killed."""
    raise KeyboardInterrupt


def poison(model):
    """Makes the prefix NaN, so the next training loss is NaN."""
    with torch.no_grad():
        model.adaprefix.prefix.embedding.fill_(float("nan"))


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(tiny_backbone, sentiment_files, tmp_path):
    settings = dict(tiny_settings(tiny_backbone, sentiment_files, tmp_path / "whole"), prefix_dropout=0.1)
    whole = train(load_train_config(None, settings))

    cut = tmp_path / "cut"
    cfg = load_train_config(None, {**settings, "output_dir": str(cut)})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[At("save", 1, kill)])
    assert not (cut / "final_metrics.json").exists()
    half = cut / "checkpoints" / "checkpoint-999"  # what a kill during a checkpoint write leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)

    resumed = train(cfg, resume=True)
    assert not half.exists(), "an unsealed checkpoint is removed, never loaded"
    assert epoch_records(cut) == epoch_records(tmp_path / "whole")
    assert resumed.final["dev"] == whole.final["dev"] and resumed.final["best_epoch"] == whole.final["best_epoch"]
    a = load_file(tmp_path / "whole" / "adapter" / "adapter.safetensors")
    b = load_file(cut / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_kill_between_evaluation_and_checkpoint_resumes_consistently(tiny_backbone, sentiment_files, tmp_path):
    settings = dict(tiny_settings(tiny_backbone, sentiment_files, tmp_path / "whole"), prefix_dropout=0.1)
    whole = train(load_train_config(None, settings))
    cut = tmp_path / "cut"
    cfg = load_train_config(None, {**settings, "output_dir": str(cut)})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[At("evaluate", 2, kill)])
    assert len(epoch_records(cut)) == 2, "epoch 2 was recorded but never checkpointed"
    resumed = train(cfg, resume=True)
    assert epoch_records(cut) == epoch_records(tmp_path / "whole")
    assert resumed.final["dev"] == whole.final["dev"]


EPOCH_SLEEP = 0.5
# Epoch records keep their times rounded to 0.1 s, so a difference of two of them can fall short by up to 0.1 s.
AT_LEAST_ONE_EPOCH = EPOCH_SLEEP - 0.1 - 1e-9


class SlowEpochs(TrainerCallback):
    """Makes every epoch take a noticeable time, so that one epoch's elapsed time cannot pass for another's."""

    def on_epoch_end(self, args, state, control, **kwargs):
        time.sleep(EPOCH_SLEEP)


def _killed_after_two_epochs(backbone, files, run):
    """A 3-epoch run killed right after its epoch-2 checkpoint; returns its config and the two epoch records."""
    cfg = load_train_config(None, tiny_settings(backbone, files, run))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[SlowEpochs(), At("save", 2, kill)])
    return cfg, epoch_records(run, timed=True)


def test_a_resumed_run_counts_the_time_of_every_sitting(tiny_backbone, sentiment_files, tmp_path):
    cfg, before = _killed_after_two_epochs(tiny_backbone, sentiment_files, tmp_path / "cut")
    assert len(before) == 2 and before[1]["elapsed_seconds"] - before[0]["elapsed_seconds"] >= AT_LEAST_ONE_EPOCH
    resumed = train(cfg, resume=True, extra_callbacks=[SlowEpochs()]).final
    times = [r["elapsed_seconds"] for r in epoch_records(tmp_path / "cut", timed=True)]
    assert times[:2] == [r["elapsed_seconds"] for r in before], "the first sitting's records are kept as they were"
    assert times[2] - times[1] >= AT_LEAST_ONE_EPOCH, "the resumed epoch carries on from the time of the epoch it resumed from"
    # the time of the epoch resumed from (the last, not the first, not a sum), plus this sitting
    assert resumed["train_seconds"] == pytest.approx(before[1]["elapsed_seconds"] + resumed["sitting_seconds"],
                                                     abs=0.05)
    # the epoch records' times are rounded to 0.1 s, train_seconds is not
    assert resumed["train_seconds"] >= times[-1] - 0.05 and "train_seconds_partial" not in resumed


def test_a_run_resumed_from_epochs_recorded_without_times_says_its_time_is_partial(tiny_backbone, sentiment_files,
                                                                                   tmp_path):
    cfg, before = _killed_after_two_epochs(tiny_backbone, sentiment_files, tmp_path / "cut")
    # An older adaprefix's records in the sealed checkpoint: an untimed first epoch is enough to make the count
    # partial, even when the last one is timed.
    (snapshot,) = (tmp_path / "cut" / "checkpoints").glob("checkpoint-*/adaprefix_run/metrics.jsonl")
    before[0].pop("elapsed_seconds")
    snapshot.write_text("".join(json.dumps(r) + "\n" for r in before))
    resumed = train(cfg, resume=True).final
    assert resumed["train_seconds_partial"] is True
    assert resumed["train_seconds"] == pytest.approx(before[1]["elapsed_seconds"] + resumed["sitting_seconds"],
                                                     abs=0.05)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_backbone, sentiment_files, tmp_path):
    run = tmp_path / "nan"
    cfg = load_train_config(None, tiny_settings(tiny_backbone, sentiment_files, run))
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 5.*last good checkpoint is .*checkpoint-4"):
        train(cfg, extra_callbacks=[At("save", 1, poison)])
    assert (run / "checkpoints" / "checkpoint-4" / "COMPLETE").is_file()
    assert (run / "adapter" / "adapter.safetensors").is_file()
    assert [r["epoch"] for r in epoch_records(run)] == [1]
    assert not torch.isnan(load_file(run / "adapter" / "adapter.safetensors")["adaprefix.prefix.embedding"]).any()


def test_resume_without_a_run_and_unfinished_run_without_resume_are_refused(tiny_backbone, sentiment_files,
                                                                           tmp_path):
    from adaprefix.training import RunExistsError

    cfg = load_train_config(None, tiny_settings(tiny_backbone, sentiment_files, tmp_path / "r"))
    with pytest.raises(RunExistsError, match="nothing to resume"):
        train(cfg, resume=True)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[At("save", 1, kill)])
    with pytest.raises(RunExistsError, match="unfinished run.*--resume"):
        train(cfg)


def test_truncated_inputs_are_counted_and_reported(tiny_backbone, tmp_path, capsys):
    long_text = " ".join(["word"] * 80)
    rows = [{"text": long_text if i % 2 else "short", "label": str(i % 2)} for i in range(8)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_train_config(None, tiny_settings(tiny_backbone, {"train_file": str(data), "dev_file": str(data)},
                                                tmp_path / "r", epochs=1))
    result = train(cfg)
    assert result.final["truncated"] == {"train": 4, "dev": 4}
    assert "4 of 8 train examples were longer than 32 tokens and were truncated" in capsys.readouterr().out


def test_a_resumed_run_whose_first_epoch_scored_nan_still_finds_its_best(tmp_path):
    history = [{"epoch": 1, "dev_f1": float("nan")}, {"epoch": 2, "dev_f1": 0.4}, {"epoch": 3, "dev_f1": 0.3}]
    recorder = EpochRecorder(tmp_path, ["dev", "test"], "dev_f1", lambda: None, history,
                             only_when_improved=("test",))
    assert recorder.best["epoch"] == 2
    recorder._pending = {"dev_f1": 0.9}
    assert recorder.wants("test")
    recorder._pending = {"dev_f1": 0.35}
    assert not recorder.wants("test") and recorder.wants("dev")


HOLD_LOCK = """
import sys, time
from pathlib import Path
from adaprefix.training.run_dir import run_lock
with run_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_training_into_a_live_runs_folder_is_refused_and_removes_nothing(tiny_backbone, sentiment_files,
                                                                                   tmp_path):
    import subprocess
    import sys

    from adaprefix.training import RunBusyError

    run = tmp_path / "r"
    cfg = load_train_config(None, tiny_settings(tiny_backbone, sentiment_files, run))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[At("save", 1, kill)])  # an unfinished run, as a live process leaves it
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for attempt in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(RunBusyError, match=f"process {holder.pid} is training into this folder"):
                train(cfg, **attempt)
        assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # --overwrite deleted nothing
    finally:
        holder.kill()
        holder.wait()
    held = []

    def try_the_lock(model):
        from adaprefix.training.run_dir import run_lock

        with pytest.raises(RunBusyError):  # a second opening of the lock file conflicts, even in one process
            with run_lock(run):
                pass
        held.append(True)

    result = train(cfg, resume=True, extra_callbacks=[At("evaluate", 1, try_the_lock)])
    assert result.final["best_epoch"] is not None and held  # a killed holder frees the folder; train holds it


def test_the_command_line_says_busy_with_exit_code_75_and_a_refused_new_folder_leaves_nothing(tiny_backbone,
                                                                                              sentiment_files,
                                                                                              tmp_path):
    from typer.testing import CliRunner

    from adaprefix.cli import app
    from adaprefix.training.run_dir import run_lock

    import yaml

    run = tmp_path / "busy"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_settings(tiny_backbone, sentiment_files, run)))
    with run_lock(run):
        result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 75, result.output
    assert "is training into this folder" in result.output
    fresh = tmp_path / "never-made"
    result = CliRunner().invoke(app, ["train", "--output-dir", str(fresh), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output
    assert not fresh.exists()  # the lock's folder is not left behind by a refusal


def test_a_folder_that_cannot_be_locked_warns_and_trains_unguarded(tmp_path, monkeypatch):
    from adaprefix.training import run_dir

    def unsupported(handle, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(run_dir.fcntl, "flock", unsupported)
    with pytest.warns(UserWarning, match="cannot lock the run folder"):
        with run_dir.run_lock(tmp_path / "r"):
            (tmp_path / "r" / "metrics.jsonl").write_text("")
    assert (tmp_path / "r" / "metrics.jsonl").is_file()  # and leaving the lock did not raise either


def test_a_checkpoint_holds_only_the_trainable_parameters_and_an_older_whole_model_one_still_resumes(
        tiny_backbone, sentiment_files, tmp_path, monkeypatch):
    """The frozen backbone is not copied into every checkpoint; a run whose checkpoints an older adaprefix wrote with
    the whole model (the Trainer's own save) resumes from them to the same result."""
    from transformers import Trainer

    from adaprefix.training.trainer import TRAINABLE_WEIGHTS, SelectiveEvalTrainer

    cfg, _ = _killed_after_two_epochs(tiny_backbone, sentiment_files, tmp_path / "new")
    (checkpoint,) = (tmp_path / "new" / "checkpoints").glob("checkpoint-*")
    assert not (checkpoint / "model.safetensors").exists()
    saved = load_file(checkpoint / TRAINABLE_WEIGHTS)
    assert {k.split(".")[0] for k in saved} == {"adaprefix", "classifier"}  # the adapter and the task head, no backbone
    assert all(k.startswith("adaprefix.") or k.startswith("classifier.") for k in saved)
    whole = train(cfg, resume=True).final

    with monkeypatch.context() as patched:
        patched.setattr(SelectiveEvalTrainer, "_save", Trainer._save)  # how checkpoints were written before
        old_cfg, _ = _killed_after_two_epochs(tiny_backbone, sentiment_files, tmp_path / "old")
    (old,) = (tmp_path / "old" / "checkpoints").glob("checkpoint-*")
    assert (old / "model.safetensors").is_file() and not (old / TRAINABLE_WEIGHTS).exists()
    resumed = train(old_cfg, resume=True).final
    assert resumed["dev"] == whole["dev"] and epoch_records(tmp_path / "old") == epoch_records(tmp_path / "new")


def test_a_checkpoint_whose_trainable_weights_do_not_match_the_model_is_refused(tiny_backbone, sentiment_files,
                                                                                tmp_path):
    from safetensors.torch import save_file

    from adaprefix.training.trainer import TRAINABLE_WEIGHTS, CheckpointError

    cfg, _ = _killed_after_two_epochs(tiny_backbone, sentiment_files, tmp_path / "cut")
    (checkpoint,) = (tmp_path / "cut" / "checkpoints").glob("checkpoint-*")
    saved = load_file(checkpoint / TRAINABLE_WEIGHTS)
    saved.pop(next(k for k in saved if k.startswith("classifier.")))
    save_file({**saved, "adaprefix.stray": torch.zeros(1)}, checkpoint / TRAINABLE_WEIGHTS)
    with pytest.raises(CheckpointError, match=r"trainable.safetensors: expected the model's \d+ trainable parameters, "
                                              r"got \d+; missing \['classifier\..*'\], not in the model's trainable "
                                              r"set \['adaprefix.stray'\]"):
        train(cfg, resume=True)
