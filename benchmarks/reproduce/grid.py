"""The reproduction grid: expand ``grid.yaml`` into runs, each with a stable id and its full settings.

A run's settings are layered: ``defaults``, then the task's ``common`` settings, then its ``prefix`` (every method
but ft) or ``ft`` section, then the experiment's settings, its arm, then its variant. Experiment and variant
settings may also hold ``prefix:`` and ``ft:`` sections of their own. Four keys are the grid's own:

- ``lr_scale``: multiplies the learning rate found so far (a sweep around the task's script value);
- ``prefix_lengths: {from_gates: RUN_ID, budget_ratio: r}`` (``{task}`` in RUN_ID is the run's task): PT-2*'s
  per-layer lengths, derived by
  ``adaprefix.analysis.layer_lengths`` from that APT run's recorded gates (results/gates/); waits until recorded;
- ``prefix_length_scale``: multiplies the task's prefix length (pt2+: a longer prefix matching APT's parameters);
- ``learning_rate: sweep`` (or ``sweep:METHOD``): the learning rate with the best dev value among that task and
  method's ``lr-sweep`` records (ties go to the smaller rate). A run waits until that sweep is complete.

The sweep experiment may carry ``extend_at_edge: {factor: f, max: n}``: when a finished sweep's best dev value is at
its highest (or lowest) rate and strictly above every other rate, the sweep gains one run at that rate times f (or
divided by f), variant ``lr-up1`` (``lr-down1``), and so on while the best stays at the new edge, up to n extra
runs per task, method and seed. The same rule for every method, applied before any main run takes a rate (a sweep
is complete only when no extension is pending). A flat sweep (the best tied with an inner rate) gives no direction
and is not extended; a sweep run that failed (a NaN loss) counts as the sweep's worst value. The sweep's variants
must differ in learning rate only: an extension copies the settings of the sweep's first run with the new rate.

An experiment may also list ``cut:`` entries, ``{task, variants, methods, seeds}``: those cells run only the seeds
given (what 2 CPU cores could not afford is written in the grid file itself, beside the experiment it thins); the
first entry that names a cell applies. ``prefix_init_text: from_task`` takes the task's ``init_text`` (a real-token
initialisation, :func:`adaprefix.init_prefix_from_text`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
GRID_FILE = HERE / "grid.yaml"
SWEEP = "lr-sweep"


class GridError(ValueError):
    """grid.yaml does not describe a valid grid; the message names the entry."""


@dataclass
class Run:
    """One training run of the grid."""

    experiment: str
    task: str
    method: str  # the record's method name: ft, pt2, apt, token-gate, layer-gate, pt2+, pt2*
    train_method: str  # what `adaprefix train --method` gets
    variant: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.experiment}/{self.task}-{self.method}{variant}-s{self.seed}"

    @property
    def group(self) -> tuple[str, str, str, str]:
        """Runs that differ only in seed."""
        return self.experiment, self.task, self.method, self.variant


def load_grid(path: Path = GRID_FILE) -> dict[str, Any]:
    grid = yaml.safe_load(path.read_text())
    for key in ("defaults", "tasks", "experiments"):
        if key not in grid:
            raise GridError(f"{path}: missing top-level key {key!r}")
    return grid


def _arms(experiment: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(record method name, train method, settings) for each arm of an experiment."""
    arms = []
    for arm in experiment["methods"]:
        if isinstance(arm, str):
            arms.append((arm, arm, {}))
        elif isinstance(arm, dict) and "name" in arm and "method" in arm:
            arms.append((arm["name"], arm["method"], dict(arm.get("settings", {}))))
        else:
            raise GridError(f"experiment {experiment['name']}: a method is a name or {{name, method, settings}}, "
                            f"got {arm!r}")
    return arms


def _for_kind(settings: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """Settings for every method, plus those under ``prefix:`` or ``ft:`` for this kind of method."""
    settings = dict(settings or {})
    own = settings.pop(kind, None) or {}
    settings.pop("ft" if kind == "prefix" else "prefix", None)
    return {**settings, **own}


def _kept_seeds(experiment: dict[str, Any], task: str, variant: str, method: str) -> set[int] | None:
    """The seeds the first ``cut:`` entry naming (task, variant, method) leaves to it, or None when none names it.
    An entry without ``variants`` (``methods``) names every variant (method)."""
    for cut in experiment.get("cut") or []:
        if not isinstance(cut, dict) or not {"task", "seeds"} <= set(cut):
            raise GridError(f"experiment {experiment['name']}: a cut is {{task, variants, methods, seeds}}, got "
                            f"{cut!r}")
        unknown = set(cut.get("variants") or []) - set(experiment.get("variants") or {})
        if unknown:
            raise GridError(f"experiment {experiment['name']}: cut names unknown variants {sorted(unknown)}")
        unknown = set(cut.get("methods") or []) - {name for name, _, _ in _arms(experiment)}
        if unknown:
            raise GridError(f"experiment {experiment['name']}: cut names unknown methods {sorted(unknown)}")
        if (cut["task"] == task and (not cut.get("variants") or variant in cut["variants"])
                and (not cut.get("methods") or method in cut["methods"])):
            return {int(seed) for seed in cut["seeds"]}
    return None


def expand(grid: dict[str, Any]) -> list[Run]:
    """Every run of the grid, in the order they should run: experiment, seed, variant, task, method.

    Seeds vary slowest so that a grid stopped half way holds whole comparisons (every task, every method) for the
    first seeds; within a seed, a variant's comparison across tasks is complete before the next variant starts.
    """
    runs = []
    for experiment in grid["experiments"]:
        name = experiment["name"]
        variants = experiment.get("variants") or {"": {}}
        for task in experiment["tasks"]:
            if task not in grid["tasks"]:
                raise GridError(f"experiment {name}: task {task!r} has no entry under tasks:")
        for seed in experiment["seeds"]:
            for variant, variant_settings in variants.items():
                for task in experiment["tasks"]:
                    protocol = grid["tasks"][task]
                    for method, train_method, arm_settings in _arms(experiment):
                        kept = _kept_seeds(experiment, task, variant, method)
                        if kept is not None and int(seed) not in kept:
                            continue
                        kind = "ft" if train_method == "ft" else "prefix"
                        settings = {**grid["defaults"], **protocol.get("common", {}), **protocol.get(kind, {}),
                                    **_for_kind(experiment.get("settings"), kind), **arm_settings,
                                    **_for_kind(variant_settings, kind)}
                        runs.append(Run(name, task, method, train_method, variant, int(seed), settings))
    return runs


def resolve_settings(grid: dict[str, Any], run: Run, records: list[dict[str, Any]],
                     failed: Collection[str] = ()) -> dict[str, Any] | None:
    """The run's settings as `adaprefix train` takes them, or None while its learning-rate sweep is unfinished.
    ``failed``: ids of runs that exited with an error (a sweep run that diverged counts as the sweep's worst)."""
    settings = dict(run.settings)
    scale = float(settings.pop("lr_scale", 1.0))
    lr = settings.get("learning_rate")
    if isinstance(lr, str) and lr.startswith("sweep"):
        swept_method = lr.partition(":")[2] or run.method
        if not sweep_complete(grid, run.task, swept_method, records, failed):
            return None
        chosen = swept_learning_rate(run.task, swept_method, records)
        if chosen is None:
            return None
        settings["learning_rate"] = chosen
    elif scale != 1.0:
        settings["learning_rate"] = float(settings["learning_rate"]) * scale
    derived = settings.get("prefix_lengths")
    if isinstance(derived, dict):  # PT-2*: lengths from a trained APT run's recorded gates
        lengths = lengths_from_gate_file(**{**derived, "from_gates": derived["from_gates"].format(task=run.task)})
        if lengths is None:
            return None
        settings["prefix_lengths"] = lengths
    if settings.get("prefix_init_text") == "from_task":  # the task's own text (its init_text: in grid.yaml)
        text = grid["tasks"][run.task].get("init_text")
        if not text:
            raise GridError(f"{run.run_id}: prefix_init_text: from_task, but task {run.task} has no init_text")
        settings["prefix_init_text"] = text
    length_scale = settings.pop("prefix_length_scale", None)
    if length_scale is not None:
        settings["prefix_length"] = round(int(settings["prefix_length"]) * float(length_scale))
    settings.update(task=run.task, method=run.train_method, seed=run.seed)
    return settings


def gate_runs(grid: dict[str, Any]) -> list[str]:
    """Runs whose gates the grid records (results/gates/): those under ``gate_maps`` (the report's heat maps) and
    those PT-2* derives its lengths from, in that order."""
    sources = []
    for run in expand(grid):
        derived = run.settings.get("prefix_lengths")
        if isinstance(derived, dict) and "from_gates" in derived:
            sources.append(derived["from_gates"].format(task=run.task))
    return list(dict.fromkeys([*(grid.get("gate_maps") or []), *sources]))


def gate_file(run_id: str) -> Path:
    """Where ``run_id``'s gate statistics live (written by gates.py, read by the report and by PT-2*)."""
    return HERE / "results" / "gates" / (run_id.replace("/", "__") + ".json")


def lengths_from_gate_file(from_gates: str, budget_ratio: float = 0.5) -> list[int] | None:
    """Per-layer lengths by adaprefix's PT-2* rule from results/gates/<run>.json; None until that file exists."""
    from adaprefix.analysis.layer_lengths import lengths_from_gates

    path = gate_file(from_gates)
    if not path.is_file():
        return None
    return lengths_from_gates(json.loads(path.read_text())["effective_gate"], budget_ratio=budget_ratio)


def best_sweep_record(task: str, method: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished sweep run of (task, method) with the best dev value, ties to the smaller rate; None if none.

    The sweep ranks on the dev metric (never on test), so NER test F1 stays untouched by the choice.
    """
    done = [r for r in records if r["experiment"] == SWEEP and r["task"] == task and r["method"] == method]
    # rounded: a tie is the same number of examples right, whatever the last bits of a float metric
    return max(done, key=lambda r: (round(r["dev_value"], 9), -r["learning_rate"])) if done else None


def swept_learning_rate(task: str, method: str, records: list[dict[str, Any]]) -> float | None:
    """The learning rate of ``best_sweep_record``; None if no sweep run of (task, method) has finished."""
    best = best_sweep_record(task, method, records)
    return None if best is None else float(best["learning_rate"])


def _edge_step(runs: list[dict[str, Any]]) -> int:
    """+1 when the best dev value sits at the highest rate and beats every other rate, -1 at the lowest, else 0."""
    if len(runs) < 2:
        return 0
    by_rate = sorted(runs, key=lambda r: r["learning_rate"])
    best = max(round(r["dev_value"], 9) for r in runs)
    at_best = [r for r in by_rate if round(r["dev_value"], 9) == best]
    if len(at_best) > 1:
        return 0
    return 1 if at_best[0] is by_rate[-1] else -1 if at_best[0] is by_rate[0] else 0


def _diverged(run_id: str, learning_rate: float) -> dict[str, Any]:
    """A sweep run that exited with an error (a NaN loss, say) as the sweep sees it: that rate, the worst value."""
    return {"run_id": run_id, "learning_rate": learning_rate, "dev_value": float("-inf")}


def edge_extensions(grid: dict[str, Any], records: list[dict[str, Any]], failed: Collection[str] = ()) -> list[Run]:
    """The sweep runs added beyond an edge (see the module docstring), recorded or next to run, in order. A failed
    run (``failed``: run ids) counts as the worst of its sweep, so a rate that diverges ends the extension."""
    sweep = next((e for e in grid["experiments"] if e["name"] == SWEEP), None)
    rule = (sweep or {}).get("extend_at_edge")
    if not rule:
        return []
    factor, most = float(rule["factor"]), int(rule["max"])
    if factor <= 1 or most < 1:
        raise GridError(f"experiment {SWEEP}: extend_at_edge needs factor > 1 and max >= 1, got {rule!r}")
    by_id = {r["run_id"]: r for r in records}
    extensions = []
    static: dict[tuple[str, str, str, str], list[Run]] = {}
    for run in expand({**grid, "experiments": [sweep]}):
        static.setdefault(run.group[:3] + (str(run.seed),), []).append(run)
    for runs in static.values():
        done = [by_id[r.run_id] if r.run_id in by_id
                else _diverged(r.run_id, resolve_settings(grid, r, [])["learning_rate"])
                for r in runs if r.run_id in by_id or r.run_id in failed]
        if len(done) < len(runs):
            continue
        first = runs[0]
        for other in runs[1:]:  # an extension copies the first run's settings: that is only right if rate is all
            differ = {key for key in {**first.settings, **other.settings}
                      if key not in ("learning_rate", "lr_scale") and first.settings.get(key) != other.settings.get(key)}
            if differ:
                raise GridError(f"experiment {SWEEP}: extend_at_edge needs variants that differ in learning rate "
                                f"only; {first.run_id} and {other.run_id} differ in {sorted(differ)}")
        for k in range(1, most + 1):
            step = _edge_step(done)
            if step == 0:
                break
            edge = max(done, key=lambda r: step * r["learning_rate"])["learning_rate"]
            settings = {key: v for key, v in first.settings.items() if key != "lr_scale"}
            settings["learning_rate"] = edge * factor ** step
            run = Run(SWEEP, first.task, first.method, first.train_method, f"lr-{'up' if step > 0 else 'down'}{k}",
                      first.seed, settings)
            extensions.append(run)
            if run.run_id in failed:
                done.append(_diverged(run.run_id, settings["learning_rate"]))
                continue
            if run.run_id not in by_id:
                break
            recorded = by_id[run.run_id]["learning_rate"]
            if not math.isclose(recorded, settings["learning_rate"], rel_tol=1e-9):
                raise GridError(f"{run.run_id} was recorded at learning rate {recorded:g}, but the sweep's edge rule "
                                f"now asks {settings['learning_rate']:g} of it (was extend_at_edge or the sweep's "
                                "variants changed?); remove that record to rerun it")
            done.append(by_id[run.run_id])
    return extensions


def planned_runs(grid: dict[str, Any], records: list[dict[str, Any]], failed: Collection[str] = ()) -> list[Run]:
    """``expand(grid)`` plus the sweep's edge extensions so far, each right after its own sweep's runs."""
    runs = expand(grid)
    for extension in edge_extensions(grid, records, failed):
        at = max(i for i, r in enumerate(runs) if r.group[:3] == extension.group[:3] and r.seed == extension.seed)
        runs.insert(at + 1, extension)
    return runs


def sweep_complete(grid: dict[str, Any], task: str, method: str, records: list[dict[str, Any]],
                   failed: Collection[str] = ()) -> bool:
    """Every sweep run of (task, method) is recorded or failed (``failed``: run ids), its edge extensions included,
    and none is pending. The rate taken is the best among the recorded ones: a diverged rate is never taken."""
    wanted = {r.run_id for r in planned_runs(grid, records, failed)
              if r.experiment == SWEEP and r.task == task and r.method == method}
    have = {r["run_id"] for r in records} | set(failed)
    return bool(wanted) and wanted <= have
