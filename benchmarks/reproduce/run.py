"""Run whatever the reproduction grid still misses, one `adaprefix train` at a time, and record each finished run.

    python benchmarks/reproduce/run.py                      # everything missing, in grid order
    python benchmarks/reproduce/run.py --only parity        # one experiment (repeatable)
    python benchmarks/reproduce/run.py --task cb            # one task's runs first (repeatable)
    python benchmarks/reproduce/run.py --list               # what is done, waiting and missing
    python benchmarks/reproduce/run.py --commit             # git-commit results/runs.jsonl after every record
    python benchmarks/reproduce/run.py --retrain main/cb-apt-s1   # a recorded run again, here (a device check)

Each run is a separate `python -m adaprefix.cli train` process writing to runs/reproduce/<run id>; an interrupted
run resumes from its last sealed checkpoint, so the grid can be stopped and restarted across sittings. A finished
run appends one JSON object to results/runs.jsonl (the only state the report reads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Collection
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # benchmarks/: runner_files
import runner_files  # noqa: E402
from grid import HERE, Run, gate_file, gate_runs, load_grid, planned_runs, resolve_settings  # noqa: E402

REPO = HERE.parent.parent
RECORDS = HERE / "results" / "runs.jsonl"
FAILURES = HERE / "results" / "failures.jsonl"  # runs that exited with an error; skipped unless --retry-failed
RETRAINED = HERE / "results" / "retrained.jsonl"  # recorded runs trained again on another device (--retrain)
RUNS_DIR = REPO / "runs" / "reproduce"


def read_records(path: Path | None = None) -> list[dict[str, Any]]:
    """Every record (of ``RECORDS`` unless ``path``); a torn last line (a kill mid-append) is dropped, a bad line
    elsewhere is an error."""
    from adaprefix.files import JsonLinesError, read_jsonl  # here: importing adaprefix loads torch

    path = RECORDS if path is None else path  # looked up now, so that a test can point RECORDS elsewhere

    try:
        return read_jsonl(path)
    except JsonLinesError as err:
        raise SystemExit(f"{err.path}:{err.line}: not a JSON object ({err.problem}); "
                         "fix or delete that line") from None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def source_commit() -> str:
    """The commit a run trains at, marked -dirty when adaprefix/ has uncommitted changes (what the run depends on)."""
    return _git("rev-parse", "--short", "HEAD") + ("-dirty" if _git("status", "--porcelain", "adaprefix") else "")


def _versions() -> dict[str, str]:
    import torch
    import transformers

    # The device the run trained on: runs of one comparison must share it (a GPU's kernels round differently), and
    # the report's CPU-time estimates read the CPU runs' seconds only. Records without it trained on the CPU.
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": str(torch.get_num_threads()), "device": device}


def device_of(record: dict[str, Any]) -> str:
    """The device a record's run trained on: a GPU's name, or "cpu" (records from before run.py noted it)."""
    return (record.get("versions") or {}).get("device", "cpu")


def make_record(run: Run, settings: dict[str, Any], run_dir: Path, seconds: float, commit: str) -> dict[str, Any]:
    final = json.loads((run_dir / "final_metrics.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    adapter = config.get("adapter") or {}
    metric = final["main_metric"]
    dev = 100 * final["dev"][metric]
    test = 100 * final["test"][metric] if final.get("test") else None
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    full, used = final["train_examples_full"], final["train_examples"]
    return {
        "run_id": run.run_id, "experiment": run.experiment, "task": run.task, "method": run.method,
        "variant": run.variant, "seed": run.seed, "model": config.get("model"), "metric": metric,
        "reported": "test at best dev" if test is not None else "best dev",
        "value": test if test is not None else dev, "dev_value": dev, "test_value": test,
        # every dev metric at the best epoch, in percent: CB's macro-F1 shows a run that never predicts a class
        "dev_metrics": {k: round(100 * v, 2) for k, v in final["dev"].items() if k != "loss"},
        "best_epoch": final["best_epoch"], "epochs": config["epochs"], "batch_size": config["batch_size"],
        "learning_rate": float(settings["learning_rate"]),
        "prefix_length": adapter.get("prefix_length") if run.train_method != "ft" else None,
        "prefix_lengths": adapter.get("prefix_lengths") if run.train_method != "ft" else None,  # PT-2*'s per layer
        "prefix_init_std": adapter.get("prefix_init_std") if run.train_method != "ft" else None,
        "shift_positions": adapter.get("shift_positions") if run.train_method != "ft" else None,
        "hidden_dropout": config.get("hidden_dropout"), "max_length": final.get("max_length"),
        "trainable_params": final["trainable_parameters"], "train_examples": used, "train_examples_full": full,
        "train_loss_by_epoch": [round(e["train_loss"], 4) for e in epochs if e.get("train_loss") is not None],
        "dev_by_epoch": [round(100 * e[f"dev_{metric}"], 2) for e in epochs if f"dev_{metric}" in e],
        **run_seconds(final, seconds), "commit": commit, "versions": _versions(),
        "date": datetime.date.today().isoformat(), "settings": settings,
    }


def run_seconds(final: dict[str, Any], process_seconds: float) -> dict[str, Any]:
    """The run's wall time across all its sittings: the recipe's count (``train_seconds``), plus what this sitting's
    process spent outside it (interpreter start, imports). ``seconds_partial`` marks a run resumed from epochs an
    older adaprefix recorded without their times (or resumed by an older adaprefix): only the sittings since (the
    last) are counted; ``recount_seconds.py`` recounts such records."""
    if "sitting_seconds" not in final:  # an older recipe: this sitting's process is all there is
        return {"seconds": round(process_seconds, 1), **({"seconds_partial": True} if final.get("resumed") else {})}
    seconds = final["train_seconds"] + max(0.0, process_seconds - final["sitting_seconds"])
    return {"seconds": round(seconds, 1), **({"seconds_partial": True} if final.get("train_seconds_partial") else {})}


def locked_records(target: Path | None = None):
    """``target`` (the records by default) open for reading and appending, locked against every other runner and
    ``recount_seconds.py``, which replaces the file under the same lock (``runner_files.locked_records``)."""
    return runner_files.locked_records(RECORDS if target is None else target)  # looked up now, as in read_records


def append_record(record: dict[str, Any], commit: bool, target: Path | None = None) -> bool:
    """Append ``record`` to ``target`` (the records by default; False if a record of its run is there already: two
    runners sharing a grid may both reach the same reused record) and with ``commit`` git-commit it."""
    target = RECORDS if target is None else target
    if not runner_files.append_once(target, record, unique=target == RECORDS):
        print(f"=== {record['run_id']}: already recorded (by another runner); not recorded twice", flush=True)
        return False
    if commit:
        commit_file(target, f"reproduce: record {record['run_id']}")
    return True


def claim(name: str):
    """Hold ``name`` (a run id, or ``gates:<run id>``) for this runner while the block runs: True if this runner got
    it, False if another runner holds it (``runner_files.claim``, under runs/reproduce/.claims; only runners take
    these, a plain `adaprefix train` has the run folder's own lock)."""
    return runner_files.claim(RUNS_DIR / ".claims", name)


def commit_file(target: Path, message: str) -> None:
    """git-commit ``target`` alone (whatever else is staged or changed stays as it is)."""
    runner_files.commit_file(REPO, target, message)


def write_gates(run_id: str) -> bool:
    """Record ``run_id``'s gate statistics (gates.py, in its own process: it loads the model); False if it failed."""
    return subprocess.run([sys.executable, str(HERE / "gates.py"), run_id], cwd=REPO).returncode == 0


def record_missing_gates(grid: dict[str, Any], have: set[str], commit: bool, tried: set[str]) -> None:
    """Gate statistics for every recorded run the grid needs them of (the report's heat maps, PT-2*'s lengths)
    that has none yet: PT-2* waits on them, so the runner writes them as soon as their run is recorded."""
    for run_id in gate_runs(grid):
        if run_id in have and run_id not in tried and not gate_file(run_id).is_file():
            with claim(f"gates:{run_id}") as mine:  # another runner writing them: leave it to that one
                if not mine or gate_file(run_id).is_file():
                    continue
                tried.add(run_id)  # once a sitting: a failure is printed by gates.py and not retried in a loop
                print(f"=== gates of {run_id}", flush=True)
                if write_gates(run_id) and commit:
                    commit_file(gate_file(run_id), f"reproduce: gates of {run_id}")


def reusable_record(run: Run, settings: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A finished run with exactly these training settings (same task, method, seed, everything): training it
    again would give the same result, so its record is reused rather than spending the CPU-time twice."""
    for record in records:
        if record.get("settings") == settings and "reused_from" not in record:
            return record
    return None


def train_one(run: Run, settings: dict[str, Any], run_dir: Path | None = None) -> float:
    run_dir = RUNS_DIR / run.run_id if run_dir is None else run_dir
    resume = (run_dir / "config.yaml").is_file() and not (run_dir / "final_metrics.json").is_file()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({**settings, "output_dir": str(run_dir)}, f)
        config_file = f.name
    command = [sys.executable, "-m", "adaprefix.cli", "train", "--config", config_file]
    command += ["--resume"] if resume else ["--overwrite"]
    started = time.time()
    try:
        run_child(command)
    finally:
        os.unlink(config_file)
    return time.time() - started


BUSY = 75  # `adaprefix train`'s exit code for a run folder another live process is training into
_STOP = {"requested": False, "in_child": False}  # what stop_on_sigterm's handler knows


def run_child(command: list[str]) -> None:
    """Run ``command`` to its end (CalledProcessError if it fails); if the runner is stopped meanwhile (Ctrl-C, or
    `kill` once ``stop_on_sigterm`` is in place), the child is stopped too rather than left training on its own."""
    child = subprocess.Popen(command, cwd=REPO)
    _STOP["in_child"] = True
    try:
        if child.wait() != 0:
            raise subprocess.CalledProcessError(child.returncode, command)
    finally:
        _STOP["in_child"] = False
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def stop_on_sigterm() -> None:
    """Make `kill` (SIGTERM) stop the runner cleanly: during a training it unwinds at once, so that ``run_child``
    stops the child; anywhere else (a record being written and committed) the runner stops before its next run.
    A repeated signal while stopping is ignored, so the child is always stopped and waited for."""
    def handler(signum: int, frame: Any) -> None:
        if _STOP["requested"]:
            return
        _STOP["requested"] = True
        if _STOP["in_child"]:
            sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def retrain(run_ids: list[str], commit: bool) -> None:
    """Train recorded runs again with their recorded settings on this machine, each into runs/reproduce/retrained/
    and recorded in ``RETRAINED`` (never in the grid's records). The same seed on another device does not give the
    same run (dropout masks come from the device's own generator, its kernels round differently), so the report
    sets these beside their originals, and takes them as the references of an experiment trained on that device
    rather than pair it with runs from another."""
    records = {r["run_id"]: r for r in read_records()}
    unknown = [run_id for run_id in run_ids if run_id not in records]
    if unknown:
        raise SystemExit(f"--retrain: no record of {', '.join(unknown)} in {RECORDS}")
    device = _versions()["device"]
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device)  # a folder per device: a resumed retrain stays on its device
    failed = []
    for run_id in run_ids:
        with claim(f"retrain:{slug}:{run_id}") as mine:  # another runner retraining it here: leave it to that one
            done = any(r["run_id"] == run_id and device_of(r) == device for r in read_records(RETRAINED))
            if not mine or done:
                print(f"=== {run_id}: {'already retrained' if done else 'another runner retrains it'} on {device}",
                      flush=True)
                continue
            original = records[run_id]
            settings = original["settings"]
            run = Run(original["experiment"], original["task"], original["method"], settings["method"],
                      original["variant"], original["seed"], settings)
            run_dir = RUNS_DIR / "retrained" / slug / run_id
            print(f"=== {run_id}: retraining on {device}", flush=True)
            source = source_commit()
            try:
                seconds = train_one(run, settings, run_dir)
            except subprocess.CalledProcessError as err:
                print(f"=== {run_id}: retraining failed (exit {err.returncode})", flush=True)
                failed.append(run_id)
                continue
            append_record(make_record(run, settings, run_dir, seconds, source), commit, RETRAINED)
    if failed:
        raise SystemExit(f"--retrain: {len(failed)} run(s) failed: {', '.join(failed)}")


def selected_runs(grid: dict[str, Any], records: list[dict[str, Any]], only: list[str] | None,
                  tasks: list[str] | None, by_task: bool, failed: Collection[str] = ()) -> list[Run]:
    """The grid's runs (a sweep's edge extensions included, as the records stand) that --only and --task keep."""
    runs = [r for r in planned_runs(grid, records, failed)
            if (not only or r.experiment in only) and (not tasks or r.task in tasks)]
    if by_task:  # stable: within a task, the grid's order (a sweep before the main runs that wait on it)
        order = list(dict.fromkeys(tasks or list(grid["tasks"])))
        runs.sort(key=lambda r: order.index(r.task) if r.task in order else len(order))
    return runs


def pause(seconds: float) -> None:
    """Sleep ``seconds``, or less if the runner is asked to stop (``stop_on_sigterm``)."""
    end = time.monotonic() + seconds
    while not _STOP["requested"] and (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))


def progress_line(runs: list[Run], have: set[str], waiting: int, busy: Collection[str],
                  failed: Collection[str], ready: int = 0) -> str:
    """Where the selected runs stand when this runner stops: a grid is complete only when every run is recorded,
    not when the rest is another runner's or failed."""
    recorded = sum(r.run_id in have for r in runs)
    if recorded == len(runs):
        return f"grid complete: {recorded} of {len(runs)} runs recorded"
    ids = {r.run_id for r in runs} - have
    parts = [f"{ready} ready (--max-runs reached)" if ready else "",
             f"{waiting} waiting on a learning-rate sweep or gate map" if waiting else "",
             f"{len(ids & set(busy))} being trained by another process" if ids & set(busy) else "",
             f"{len(ids & set(failed))} failed (--retry-failed)" if ids & set(failed) else ""]
    return f"grid: {recorded} of {len(runs)} runs recorded; " + (", ".join(p for p in parts if p) or "stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", help="Run only this experiment (repeatable).")
    parser.add_argument("--task", action="append", help="Run only this task's runs (repeatable), e.g. the cheap "
                        "CB cells before CoNLL04's.")
    parser.add_argument("--by-task", action="store_true", help="Finish one task's runs (in the --task order, else "
                        "the grid's) before the next: with --only lr-sweep --only main, each task's sweep and then "
                        "its main comparison, so one task's headline completes before the next begins.")
    parser.add_argument("--list", action="store_true", help="List done / waiting / missing runs and exit.")
    parser.add_argument("--commit", action="store_true", help="git-commit runs.jsonl after each record.")
    parser.add_argument("--max-runs", type=int, help="Stop after this many runs.")
    parser.add_argument("--retry-failed", action="store_true", help="Also run the runs in results/failures.jsonl.")
    parser.add_argument("--retrain", action="append", metavar="RUN_ID", help="Train this recorded run again with its "
                        "recorded settings on this machine (repeatable), into results/retrained.jsonl: a device "
                        "check, and same-device references for experiments trained on another device.")
    parser.add_argument("--poll", type=float, default=60.0, help="When nothing else is ready and another process "
                        "(a second runner) trains some of the selected runs, look again every this many seconds "
                        "until it is done, since its record may unblock more (default 60; 0: stop instead).")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.retrain:
        if args.only or args.task or args.by_task or args.max_runs is not None:
            parser.error("--retrain takes run ids; --only, --task, --by-task and --max-runs do not apply to it")
        retrain(args.retrain, args.commit)
        return

    grid = load_grid()
    done_runs = 0
    failed_now: set[str] = set()  # never tried twice in one sitting, even with --retry-failed
    busy: set[str] = set()  # another live process trains it: skipped for now, not a failure
    waiting_announced = False
    gates_tried: set[str] = set()
    while True:
        if _STOP["requested"]:
            sys.exit(128 + signal.SIGTERM)
        records = read_records()
        if not args.list:
            record_missing_gates(grid, {r["run_id"] for r in records}, args.commit, gates_tried)
        failed = failed_now | (set() if args.retry_failed else {f["run_id"] for f in read_records(FAILURES)})
        runs = selected_runs(grid, records, args.only, args.task, args.by_task, failed)
        have = {r["run_id"] for r in records}
        missing = [r for r in runs if r.run_id not in have and r.run_id not in failed and r.run_id not in busy]
        ready = [(r, s) for r in missing if (s := resolve_settings(grid, r, records, failed)) is not None]
        if args.list:
            print(f"{len(have & {r.run_id for r in runs})} done, {len(failed)} failed (--retry-failed), {len(ready)} "
                  f"ready, {len(missing) - len(ready)} waiting on a learning-rate sweep or gate map")
            for run in missing:
                print(("ready   " if any(run is r for r, _ in ready) else "waiting ") + run.run_id)
            return
        capped = args.max_runs is not None and done_runs >= args.max_runs
        others = [r.run_id for r in runs if r.run_id in busy and r.run_id not in have]
        if not ready and others and not capped and args.poll > 0:
            if not waiting_announced:
                print(f"=== waiting for {len(others)} run(s) another process is training ({', '.join(others)}); "
                      f"looking again every {args.poll:g} s", flush=True)
                waiting_announced = True
            pause(args.poll)
            busy.clear()  # look again: finished, or still another process's
            continue
        if not ready or capped:
            print(progress_line(runs, have, len(missing) - len(ready), busy, failed, len(ready)))
            return
        run, settings = ready[0]
        twin = reusable_record(run, settings, records)
        if twin is not None:  # e.g. the sweep's seed-1 run at the chosen rate is the main grid's seed 1
            print(f"=== {run.run_id}: same settings as {twin['run_id']}, reusing its record", flush=True)
            append_record({**twin, "run_id": run.run_id, "experiment": run.experiment, "variant": run.variant,
                           "method": run.method, "reused_from": twin["run_id"]}, args.commit)
            continue
        # Held from here until the run is recorded: another runner never starts it meanwhile, not even in the
        # moment between its training's end (which frees the run folder's own lock) and its record.
        with claim(run.run_id) as mine:
            if not mine:
                print(f"=== {run.run_id}: another runner has it; skipped for now", flush=True)
                busy.add(run.run_id)
                continue
            if any(r["run_id"] == run.run_id for r in read_records()):  # recorded by the runner that had it
                continue
            if _STOP["requested"]:  # asked to stop while looking: do not start a training
                sys.exit(128 + signal.SIGTERM)
            waiting_announced = False  # a wait after this run is a new one, worth saying
            print(f"=== {run.run_id} ({len(missing)} missing)", flush=True)
            commit = source_commit()
            try:
                seconds = train_one(run, settings)
            except subprocess.CalledProcessError as err:  # e.g. a NaN loss: note it, keep the grid going
                if err.returncode == BUSY:  # a training outside any runner (a user's) holds the run folder
                    print(f"=== {run.run_id}: another process is training it; skipped for now", flush=True)
                    busy.add(run.run_id)
                    continue
                print(f"=== {run.run_id} failed (exit {err.returncode}); noted in {FAILURES.name}", flush=True)
                failed_now.add(run.run_id)
                append_record({"run_id": run.run_id, "returncode": err.returncode, "commit": commit,
                               "date": datetime.date.today().isoformat()}, args.commit, FAILURES)
                continue
            append_record(make_record(run, settings, RUNS_DIR / run.run_id, seconds, commit), args.commit)
            done_runs += 1


if __name__ == "__main__":
    main()
