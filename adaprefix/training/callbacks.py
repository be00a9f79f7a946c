"""Trainer callbacks: per-epoch records and the best-dev adapter, a non-finite-loss guard, sealed checkpoints."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from ..errors import AdaprefixError
from ..files import append_jsonl, atomic_replace_dir, atomic_write_text

COMPLETE_MARKER = "COMPLETE"
RUN_SNAPSHOT = "adaprefix_run"


class NonFiniteLossError(AdaprefixError, RuntimeError):
    """The training loss became NaN or infinite; training stops and the last good checkpoint is kept."""


def sittings_seconds(history: list[dict]) -> tuple[float, bool]:
    """The wall time earlier sittings spent up to the last recorded epoch, and whether it is known: epoch records
    written before ``elapsed_seconds`` existed (an older adaprefix) leave it unknown, counted as 0."""
    last = history[-1].get("elapsed_seconds") if history else 0.0
    # One record without it (even an early one) means a sitting whose time was never counted.
    return float(last or 0.0), all("elapsed_seconds" in record for record in history)


class EpochRecorder(TrainerCallback):
    """Writes one JSON line per epoch (train loss, lr, every eval set's metrics) and keeps the best-dev adapter.

    With several eval sets (NER: dev and test) the Trainer calls on_evaluate once per set; the epoch's record is
    complete when all have reported, and the test numbers then sit beside the dev numbers they belong to.
    ``extra_metrics(name, model)``, where given, adds metrics the Trainer's evaluation cannot compute (a generation
    task's exact match) to each set's numbers, before the best epoch is chosen.

    Sets named in ``only_when_improved`` (the test set: only its number at the best dev epoch is reported) are
    needed only by an epoch whose dev metric improves: ``wants(name)`` tells the Trainer whether to score one now,
    and the Trainer calls ``skip(name)`` for a set it does not score, which completes the epoch without it.

    Each record's ``elapsed_seconds`` is the run's wall time up to the end of that epoch, counted across sittings:
    the time recorded at the epoch a resumed run restarts from, plus this sitting's time since ``started``. Work a
    killed sitting did after its last checkpoint is redone, so it is not counted twice.
    """

    def __init__(self, run_dir: Path, eval_names: list[str], main_key: str, save_best: Callable[[], None],
                 history: list[dict], on_record: Callable[[dict, bool], None] | None = None,
                 extra_metrics: Callable[[str, Any], dict[str, float]] | None = None,
                 only_when_improved: tuple[str, ...] = (), started: float | None = None):
        self.started = time.time() if started is None else started
        self.earlier_seconds, self.clock_complete = sittings_seconds(history)
        self.extra_metrics = extra_metrics
        self.only_when_improved = only_when_improved
        self.metrics_file = run_dir / "metrics.jsonl"
        self.eval_names = eval_names
        self.main_key = main_key  # e.g. "dev_accuracy"
        self.save_best = save_best
        self.history = history
        self.on_record = on_record  # told of each finished epoch (the run's display)
        self.best = None
        for record in history:  # replayed as it was recorded: a NaN epoch never becomes the best
            if self._improves(record.get(main_key)):
                self.best = record
        self._pending: dict = {}
        self._skipped: set[str] = set()
        self._state = None
        self._losses: list[float] = []
        self._lr: float | None = None

    def elapsed_seconds(self) -> float:
        """The run's wall time so far: earlier sittings (up to the epoch resumed from) plus this one."""
        return self.earlier_seconds + time.time() - self.started

    def _improves(self, value: float | None) -> bool:
        return value is not None and not math.isnan(value) and (
            self.best is None or value > self.best[self.main_key])

    def _pending_improves(self) -> bool:
        return self._improves(self._pending.get(self.main_key))

    def wants(self, name: str) -> bool:
        """Whether the epoch being evaluated needs eval set ``name`` scored (asked after its dev set reported)."""
        return name not in self.only_when_improved or self._pending_improves()

    def skip(self, name: str) -> None:
        """The Trainer did not score eval set ``name`` this epoch: the epoch's record is complete without it."""
        self._skipped.add(name)
        if self._state is not None:
            self._finish_if_complete(self._state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._losses.append(float(logs["loss"]))
        if logs and "learning_rate" in logs:
            self._lr = float(logs["learning_rate"])

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        reported = []
        for key, value in (metrics or {}).items():
            name = key.removeprefix("eval_")
            for e in self.eval_names:
                if name.startswith(f"{e}_"):
                    self._pending[name] = value
                    reported.append(e)
        if self.extra_metrics is not None:
            for e in dict.fromkeys(reported):
                self._pending.update({f"{e}_{k}": v for k, v in self.extra_metrics(e, model).items()})
        self._state = state
        self._finish_if_complete(state)

    def _finish_if_complete(self, state) -> None:
        if not all(e in self._skipped or any(k.startswith(f"{e}_") for k in self._pending) for e in self.eval_names):
            return
        record = {"epoch": int(round(state.epoch or 0)), "step": state.global_step,
                  "train_loss": sum(self._losses) / len(self._losses) if self._losses else None,
                  "learning_rate": self._lr, "elapsed_seconds": round(self.elapsed_seconds(), 1),
                  **{k: v for k, v in self._pending.items() if not k.endswith(("_runtime", "_per_second"))}}
        self._pending, self._losses, self._skipped = {}, [], set()
        self.history.append(record)
        improved = self._improves(record.get(self.main_key))
        if improved:
            self.best = record
        if state.is_world_process_zero:
            if improved:
                self.save_best()
            append_jsonl(self.metrics_file, record)
            if self.on_record is not None:
                self.on_record(record, improved)


class NonFiniteLossGuard(TrainerCallback):
    """Stops training at the first NaN/inf training loss, before the optimiser applies it."""

    def __init__(self):
        self._handle = None
        self._step = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._step = state.global_step

        def check(module, inputs, output):
            loss = getattr(output, "loss", None)
            if module.training and loss is not None and not torch.isfinite(loss.detach()).all():
                raise NonFiniteLossError(f"the training loss became {loss.item()} at step {self._step + 1}")

        self._handle = model.register_forward_hook(check)

    def on_step_end(self, args, state, control, **kwargs):
        self._step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()


class CheckpointSealer(TrainerCallback):
    """Completes each Trainer checkpoint with the run's own state, seals it, then drops older sealed ones.

    The Trainer evaluates (and the best adapter is saved) before it checkpoints, so a kill in between would leave
    `adapter/` and `metrics.jsonl` ahead of the checkpoint. Each checkpoint therefore carries a snapshot of them
    (folders as hard links: their files are only ever replaced, never rewritten), and resume restores it. Older
    checkpoints are deleted only after the new one is sealed, so a sealed checkpoint always exists.
    """

    def __init__(self, run_dir: Path, run_files: tuple[str, ...]):
        self.run_dir = run_dir
        self.run_files = run_files

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        snapshot = folder / RUN_SNAPSHOT
        shutil.rmtree(snapshot, ignore_errors=True)
        for name in self.run_files:
            source = self.run_dir / name
            if source.is_dir():
                shutil.copytree(source, snapshot / name, copy_function=_link_or_copy)
            elif source.is_file():  # metrics.jsonl grows in place: a copy, not a link
                snapshot.mkdir(exist_ok=True)
                shutil.copy2(source, snapshot / name)
        atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"step": state.global_step}) + "\n")
        for older in sealed_checkpoints(Path(args.output_dir))[:-1]:
            shutil.rmtree(older, ignore_errors=True)


def _link_or_copy(source, target) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def restore_run_snapshot(checkpoint: Path, run_dir: Path, run_files: tuple[str, ...]) -> None:
    """Put the run's files back as they were when ``checkpoint`` was sealed."""
    snapshot = checkpoint / RUN_SNAPSHOT
    for name in run_files:
        target, saved = run_dir / name, snapshot / name
        if saved.is_dir():
            atomic_replace_dir(target, lambda tmp, saved=saved: shutil.copytree(saved, tmp, dirs_exist_ok=True))
        elif saved.is_file():
            atomic_write_text(target, saved.read_text())
        elif target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()


def sealed_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints with the completion marker, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def checkpoint_epoch(checkpoint: Path) -> float:
    """The epoch a Trainer checkpoint was saved at."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return float(state.get("epoch") or 0.0)


def remove_unsealed(folder: Path) -> list[Path]:
    """Delete checkpoints a kill left half-written; return what was removed."""
    removed = []
    if folder.is_dir():
        for p in folder.glob("checkpoint-*"):
            if not (p / COMPLETE_MARKER).is_file():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


