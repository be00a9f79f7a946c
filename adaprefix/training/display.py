"""What a user sees while a run trains: one live progress line, one readable line per epoch, no library noise.

Three verbosities:

- ``normal``: a live progress bar (epoch, step, loss, dev metric, best so far, time left) and one line per finished
  epoch. transformers' own bars (training, evaluation, "Writing model shards") and the Trainer's raw log dicts are
  off, and the load report that only says "the task head is new" is dropped; any other load report still shows.
- ``quiet``: nothing but warnings, errors and the caller's final summary.
- ``verbose``: transformers as it is: its bars, log dicts and every load report.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback
from transformers.utils import logging as hf_logging

VERBOSITIES = ("quiet", "normal", "verbose")
LOAD_REPORT_LOGGER = "transformers.modeling_utils"  # where from_pretrained logs its LOAD REPORT


class RunDisplay(TrainerCallback):
    """A live progress bar for the run, and a line per epoch from the records :class:`EpochRecorder` completes.

    ``epoch_line`` is called by the recorder (see ``on_record``); the bar itself follows the Trainer's steps.
    Output goes to standard error, so standard output keeps only what a script would parse (the summary line).
    """

    def __init__(self, main_key: str, epochs: int, live: bool = True, console: Console | None = None):
        self.main_key = main_key  # e.g. "dev_accuracy"
        self.metric = main_key.removeprefix("dev_")
        self.epochs = epochs
        self.live = live
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self._task = None
        self._loss: float | None = None
        self._last: float | None = None
        self._best: tuple[float, int] | None = None
        self._epoch_started = time.time()

    def _fields(self, state) -> dict:
        epoch = min(int(state.epoch or 0) + 1, self.epochs)
        return {"epoch": f"epoch {epoch}/{self.epochs}",
                "loss": "loss –" if self._loss is None else f"loss {self._loss:.4f}",
                "dev": f"dev {self.metric} " + ("–" if self._last is None else f"{self._last:.4f}"),
                "best": "" if self._best is None else f"best {self._best[0]:.4f} (epoch {self._best[1]})"}

    def on_train_begin(self, args, state, control, **kwargs):
        if not (self.live and state.is_world_process_zero):
            return
        self.progress = Progress(TextColumn("{task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[dev]}"),
                                 TextColumn("{task.fields[best]}"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self._task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                            **self._fields(state))
        self._epoch_started = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self._task, completed=state.global_step, **self._fields(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])

    def on_record(self, record: dict, improved: bool) -> None:
        """One finished epoch (the recorder's record: train loss, every eval set's metrics)."""
        value = record.get(self.main_key)
        self._last = value
        if improved and value is not None:
            self._best = (value, record["epoch"])
        parts = [f"epoch {record['epoch']}/{self.epochs}"]
        if record.get("train_loss") is not None:
            parts.append(f"train loss {record['train_loss']:.4f}")
        for split in ("dev", "test"):
            score = record.get(f"{split}_{self.metric}")
            if score is not None:
                parts.append(f"{split} {self.metric} {score:.4f}")
        if self._best is not None:
            parts.append(f"best {self._best[0]:.4f} (epoch {self._best[1]})" + (" *" if improved else ""))
        parts.append(f"{time.time() - self._epoch_started:.0f}s")
        self._epoch_started = time.time()
        (self.progress.console if self.progress is not None else self.console).print(
            " · ".join(parts), highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Stop the live bar (also on an error, so the terminal is left clean)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


@contextmanager
def library_output(verbosity: str) -> Iterator[None]:
    """transformers' progress bars off unless ``verbose``; restored afterwards."""
    if verbosity == "verbose":
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class _HeldReport(logging.Filter):
    """Holds back the LOAD REPORT record of one ``from_pretrained`` call, for the caller to release or drop."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True


def outside_backbone(keys, base_model_prefix: str) -> bool:
    """Whether every key names a parameter outside the backbone (``<base_model_prefix>.*``): the task head.

    ``keys`` may hold names or (name, ...) tuples, as the mismatched keys of a loading report do.
    """
    names = [key[0] if isinstance(key, (tuple, list)) else key for key in keys]
    return all(not name.startswith(f"{base_model_prefix}.") for name in names)


def load_pretrained(auto_class, path, verbosity: str = "normal", **kwargs):
    """``auto_class.from_pretrained(path, **kwargs)``, without the load report that only says the head is new.

    A checkpoint loaded for a task lacks that task's head (or carries another task's), and transformers reports
    this as a table of MISSING keys, which reads like a fault. The report is dropped when every key it names lies
    outside the backbone; when a backbone key is missing, unexpected or mismatched it is shown as transformers
    wrote it. ``verbose`` shows every report.
    """
    if verbosity == "verbose":
        return auto_class.from_pretrained(path, **kwargs)
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    holder = _HeldReport()
    logger.addFilter(holder)
    try:
        model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    except BaseException:
        _release(logger, holder)  # the report explains the failure: never swallow it
        raise
    logger.removeFilter(holder)
    keys = [*info.get("missing_keys", ()), *info.get("unexpected_keys", ()), *info.get("mismatched_keys", ())]
    if not outside_backbone(keys, model.base_model_prefix):
        _release(logger, holder)
    return model


def _release(logger: logging.Logger, holder: _HeldReport) -> None:
    logger.removeFilter(holder)
    for record in holder.held:
        logger.handle(record)
