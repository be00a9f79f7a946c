"""The run folder's lifecycle: refuse to clobber a run, or take it up again on --resume.

Run folder:
    config.yaml          resolved settings            metrics.jsonl     one record per epoch
    adapter/ | model/    best-dev adapter (ft: model)  final_metrics.json written last: the run is finished
    tokenizer/           tokenizer used                tb/               TensorBoard logs
    checkpoints/         latest sealed Trainer checkpoint, for --resume
    labels.json          the head's label order        generation.json   generation tasks: tokens predict generates
    .lock                held by the process training into the folder (run_lock)
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two trainings into one folder are not caught there
    fcntl = None

from ..errors import AdaprefixError
from .callbacks import remove_unsealed, restore_run_snapshot, sealed_checkpoints
from .config import TrainConfig, load_train_config
from ..files import read_jsonl

RUN_FILES = ("metrics.jsonl", "adapter", "model")  # run state that every sealed checkpoint carries a snapshot of
LOCK_FILE = ".lock"


class RunExistsError(AdaprefixError, RuntimeError):
    """The output directory already holds a run; nothing is overwritten without --overwrite."""


class RunBusyError(AdaprefixError, RuntimeError):
    """Another live process is training into the same run folder (the command line exits 75: try again later)."""

    exit_code = 75


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold ``run`` for this process while it trains. A second training into the same folder, say a ``--resume``
    while the first still runs or an ``--overwrite`` under a live run, is refused: two writers would interleave
    metrics and checkpoints without a word. The lock is the kernel's (``flock``), so a killed process frees it.
    Only the main process locks: in DDP the other ranks share rank 0's folder."""
    if fcntl is None or not is_main_process():
        yield
        return
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    lock = run / LOCK_FILE
    try:
        with lock.open("a+") as handle:
            locked = True
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunBusyError(f"{run}: {holder} is training into this folder; wait for it to finish or stop "
                                   "it, or choose another --output-dir") from None
            except OSError as err:  # a filesystem without flock (some network and FUSE mounts): go on unguarded
                locked = False
                warnings.warn(f"{run}: cannot lock the run folder ({err.strerror}); a second training into it "
                              "would not be caught", stacklevel=3)
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                if locked:
                    fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        if created and [path.name for path in run.iterdir()] == [LOCK_FILE]:  # refused before writing anything
            lock.unlink()
            run.rmdir()


def is_main_process() -> bool:
    """Whether this process writes the run folder (rank 0, or the only process)."""
    return int(os.environ.get("RANK", 0)) == 0


def prepare_run_dir(cfg: TrainConfig, overwrite: bool, resume: bool) -> tuple[TrainConfig, Path]:
    """Refuse to clobber a run; on resume, continue with the settings the run was started with."""
    run = cfg.run_dir()
    finished = (run / "final_metrics.json").is_file()
    if not is_main_process():  # rank 0 decides; the others would race its rmtree and its first writes
        return (load_train_config(run / "config.yaml") if resume else cfg), run
    if resume:
        saved = run / "config.yaml"
        if not saved.is_file():
            raise RunExistsError(f"{run}: nothing to resume (no config.yaml); start it without --resume")
        if finished:
            raise RunExistsError(f"{run}: this run already finished (final_metrics.json); nothing to resume")
        print(f"resuming {run} with the settings in {saved} (settings given now are not applied)")
        return load_train_config(saved), run
    if run.exists() and any(path.name != LOCK_FILE for path in run.iterdir()):
        if not overwrite:
            state = "a finished run (final_metrics.json)" if finished else "an unfinished run"
            raise RunExistsError(f"{run}: already holds {state}; pass --overwrite to replace it"
                                 + ("" if finished else ", or --resume to continue it")
                                 + ", or choose another --output-dir")
        for path in run.iterdir():
            if path.name != LOCK_FILE:  # this process holds it (run_lock)
                _remove(path)
    return cfg, run


def restore_for_resume(run: Path) -> tuple[str | None, list[dict]]:
    """Take an interrupted run back to its last sealed checkpoint: returns that checkpoint (None: start over) and
    the epoch records written up to it."""
    checkpoints = run / "checkpoints"
    sealed = sealed_checkpoints(checkpoints)
    if is_main_process():
        remove_unsealed(checkpoints)
        if sealed:  # metrics and best adapter exactly as they were when that checkpoint was sealed
            restore_run_snapshot(sealed[-1], run, RUN_FILES)
        else:  # nothing sealed yet: start over
            for name in RUN_FILES:
                _remove(run / name)
    return (str(sealed[-1]) if sealed else None), read_jsonl(run / "metrics.jsonl")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
