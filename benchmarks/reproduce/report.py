"""Regenerate report.md (and its plots) from results/runs.jsonl alone.

    python benchmarks/reproduce/report.py

Every number in the report is computed here from the records; the hand-written reading lives in reading.md and
is included verbatim, so regenerating never loses it.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from grid import (HERE, SWEEP, best_sweep_record, expand, load_grid, planned_runs, resolve_settings,  # noqa: E402
                  sweep_complete)
from run import FAILURES, RETRAINED, device_of, read_records  # noqa: E402

COMMAND = "python benchmarks/reproduce/report.py"
REPORT = HERE / "report.md"
PLOTS = HERE / "results"
SUPERGLUE = ("boolq", "cb", "copa", "rte", "wic", "wsc")
NER = ("conll03", "conll04", "ontonotes")
METHOD_ORDER = ("head", "ft", "pt2", "pt2+", "pt2*", "token-gate", "layer-gate", "apt", "exact", "pt2-text")
METHOD_COLORS = {"ft": "tab:green", "pt2": "tab:blue", "apt": "tab:orange"}  # as in the bar plots: pt2 blue, apt orange


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float], expected: int | None = None, digits: int = 1) -> str:
    """'mean ± std (n)'; n is shown when fewer seeds than planned have finished. One seed has no spread to show."""
    if not values:
        return "–"
    m, s = mean_std(values)
    partial = f" ({len(values)}/{expected})" if expected and len(values) < expected else ""
    spread = f" ± {s:.{digits}f}" if len(values) > 1 else ""
    return f"{m:.{digits}f}{spread}{partial}"


def _method_key(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def group(records: Iterable[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def planned_seeds(grid: dict[str, Any], records: list[dict[str, Any]] = (),
                  failed: Iterable[str] = ()) -> dict[tuple[str, str, str, str], int]:
    """Planned runs per (experiment, task, method, variant), the sweep's edge extensions so far included."""
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for run in planned_runs(grid, list(records), set(failed)):
        counts[run.group] += 1
    return counts


def device_check(records: list[dict[str, Any]], retrained: list[dict[str, Any]]) -> str:
    """Each retrained run (run.py --retrain) beside its original: the same settings and seed on another device."""
    originals = {r["run_id"]: r for r in records}
    by_run: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    for again in latest_retrains(retrained):
        original = originals.get(again["run_id"])
        if original is not None:  # each trained run once: a sweep run and a main record reusing it are one run
            by_run[original.get("reused_from") or original["run_id"], device_of(again)] = original, again
    pairs = list(by_run.values())
    if not pairs:
        return "_No run retrained on another device yet (`python benchmarks/reproduce/run.py --retrain RUN_ID`)._\n"
    lines = ["| run | trained on | value | retrained on | value | retrained − original |",
             "|---|---|---:|---|---:|---:|"]
    for original, again in sorted(pairs, key=lambda p: p[0]["run_id"]):
        lines.append(f"| {original['run_id']} | {device_of(original)} | {original['value']:.1f} | {device_of(again)} "
                     f"| {again['value']:.1f} | {_signed(again['value'] - original['value'])} |")
    by = group([{**a, "device_pair": (device_of(o), device_of(a))} for o, a in pairs],
               "experiment", "task", "method", "device_pair")
    lines += ["", "| experiment | task | method | original device: mean ± std | retrained: mean ± std | "
              "mean absolute difference |", "|---|---|---|---:|---:|---:|"]
    for (experiment, task, method, (before, after)), rows in sorted(
            by.items(), key=lambda kv: (kv[0][0], kv[0][1], _method_key(kv[0][2]), kv[0][3])):
        first = [originals[r["run_id"]]["value"] for r in rows]
        again = [r["value"] for r in rows]
        gaps = statistics.fmean(abs(a - b) for a, b in zip(again, first))
        lines.append(f"| {experiment} | {task} | {method} | {before}: {cell(first)} | {after}: {cell(again)} | "
                     f"{gaps:.1f} |")
    return "\n".join(lines) + "\n"


def latest_retrains(retrained: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One retrain per run and device, the last recorded (a run retrained twice on one device counts once)."""
    return list({(r["run_id"], device_of(r)): r for r in retrained}.values())


def devices_table(records: list[dict[str, Any]]) -> str:
    """Which (experiment, task) trained off the CPU: a GPU rounds differently, so a comparison's runs should share a
    device; a row marked mixed does not (compare its cells with that in mind). A reused record counts with the
    device its run trained on (its versions are that run's)."""
    by = group(records, "experiment", "task")
    rows = []
    for (experiment, task), recs in sorted(by.items()):
        counts = Counter(device_of(r) for r in recs)
        if set(counts) != {"cpu"}:
            where = ", ".join(f"{device} ({n} run{'s' if n > 1 else ''})" for device, n in sorted(counts.items()))
            rows.append(f"| {experiment} | {task} | {where}{' — mixed' if len(counts) > 1 else ''} |")
    if not rows:
        return "Every run trained on the CPU.\n"
    return ("Every run trained on the CPU except these (records per device; a reused record counts where its run "
            "trained):\n\n"
            "| experiment | task | trained on |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def _final_train_loss(record: dict[str, Any]) -> float | None:
    losses = record.get("train_loss_by_epoch") or []
    return losses[-1] if losses else None


def variant_table(records: list[dict[str, Any]], experiment: str, plan: dict, dev_metric: str | None = None,
                  final_train_loss: bool = False) -> str:
    """Rows task x method, one column per variant: the headline value, the dev metric ``dev_metric`` where a record
    has it (e.g. CB's macro-F1), or with ``final_train_loss`` the last epoch's training loss (how far a setting
    trained in the same epochs)."""
    def value(r: dict[str, Any]) -> float | None:
        if final_train_loss:
            return _final_train_loss(r)
        return r.get("dev_metrics", {}).get(dev_metric) if dev_metric else r["value"]

    rows = [r for r in records if r["experiment"] == experiment and value(r) is not None]
    if not rows:
        return "_No runs recorded yet._\n"
    variants = list(dict.fromkeys(v for (e, _, _, v) in plan if e == experiment))
    lines = ["| task | method | metric | " + " | ".join(variants) + " |",
             "|---|---|---|" + "---:|" * len(variants)]
    by = group(rows, "task", "method", "variant")
    digits = 3 if final_train_loss else 1
    for task, method in sorted({(r["task"], r["method"]) for r in rows}, key=lambda k: (k[0], _method_key(k[1]))):
        metric = ("final train loss" if final_train_loss else f"dev {dev_metric}" if dev_metric
                  else next(r for r in rows if r["task"] == task)["reported"])
        cells = [cell([value(r) for r in by.get((task, method, v), [])], plan.get((experiment, task, method, v)),
                      digits) for v in variants]
        lines.append(f"| {task} | {method} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_table(records: list[dict[str, Any]], experiment: str, plan: dict) -> str:
    """The paper's layout: one row per method, one column per task, SuperGLUE and NER averages. An average is given
    once every task of its kind that the experiment plans has all its seeds: an average over the tasks finished so
    far would not be the one the paper reports."""
    rows = [r for r in records if r["experiment"] == experiment]
    if not rows:
        return "_No runs recorded yet._\n"
    planned_tasks = {t for (e, t, _, _) in plan if e == experiment}
    tasks = sorted({r["task"] for r in rows} | planned_tasks, key=lambda t: (t in NER, t))
    methods = sorted({r["method"] for r in rows}, key=_method_key)
    by = group(rows, "task", "method")
    sg_tasks = [t for t in tasks if t in SUPERGLUE]
    ner_tasks = [t for t in tasks if t in NER]
    header = ("| method | " + " | ".join(tasks) + f" | SuperGLUE avg ({', '.join(sg_tasks) or 'none'}) "
              f"| NER avg ({', '.join(ner_tasks) or 'none'}) | params (cb or first task) |")
    lines = [header, "|---|" + "---:|" * (len(tasks) + 3)]
    for method in methods:
        cells, means = [], defaultdict(list)
        for task in tasks:
            values = [r["value"] for r in by.get((task, method), [])]
            expected = max((n for (e, t, m, _), n in plan.items() if (e, t, m) == (experiment, task, method)),
                           default=None)
            cells.append(cell(values, expected))
            if values and (not expected or len(values) == expected):
                means["sg" if task in SUPERGLUE else "ner"].append(statistics.fmean(values))
        sg = f"{statistics.fmean(means['sg']):.1f}" if sg_tasks and len(means["sg"]) == len(sg_tasks) else "–"
        ner = f"{statistics.fmean(means['ner']):.1f}" if ner_tasks and len(means["ner"]) == len(ner_tasks) else "–"
        params = next((r["trainable_params"] for r in rows if r["method"] == method), None)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {sg} | {ner} | {params:,} |")
    return "\n".join(lines) + "\n"


def margins(records: list[dict[str, Any]], experiment: str, better: str, other: str, key: str = "variant",
            selection_seed: int | None = None, plan: dict | None = None) -> str:
    """better − other per (task, ``key``), over the seeds both sides have: the mean of the per-seed differences, their
    sample std, and how many seeds put ``better`` above, level and below. On a 56-example dev set both methods'
    spreads can be 0, so the pairs say more than the spreads do; with 3 seeds even 3 of 3 in one direction is a
    one-sided sign-test p of 0.125, so none of this is significance. ``selection_seed``: the seed whose dev score
    also chose the learning rate (the sweep's), left out in a last column. ``plan`` (planned runs per group) adds
    ``/n`` to a row whose seeds are not all in yet."""
    rows = [r for r in records if r["experiment"] == experiment]
    by = group(rows, "task", key, "method")
    without = f" | without seed {selection_seed}" if selection_seed is not None else ""
    lines = [f"| task | {key} | seeds paired | {better} − {other} | std of the differences "
             f"| {better} above / level / below{without} |", "|---|---|---:|---:|---:|---:|"
             + ("---:|" if without else "")]
    found = False
    every: list[float] = []  # every pair's difference, over all rows: the sign test across tasks
    order = list(dict.fromkeys(v for (e, _, _, v) in (plan or {}) if e == experiment))  # the grid's variant order
    for task, variant in sorted({(r["task"], r[key]) for r in rows},
                                key=lambda tv: (tv[0], order.index(tv[1]) if tv[1] in order else len(order), tv[1])):
        a = {r["seed"]: r["value"] for r in by.get((task, variant, better), [])}
        b = {r["seed"]: r["value"] for r in by.get((task, variant, other), [])}
        seeds = sorted(a.keys() & b.keys())
        if len(seeds) < 2:
            continue
        found = True
        # rounded to 1e-9: level means the same number of examples right
        diffs = {seed: round(a[seed] - b[seed], 9) for seed in seeds}
        mean, std = mean_std(list(diffs.values()))
        variant_key = variant if key == "variant" else ""
        planned = max([len(seeds)] + [(plan or {}).get((experiment, task, m, variant_key), 0) for m in (better, other)])
        every += diffs.values()
        paired = _signs(diffs.values())
        rest = [d for seed, d in diffs.items() if seed != selection_seed]
        left_out = ""
        if without and rest:
            left_out = f" | {_signed(statistics.fmean(rest))} ({len(rest)} seed{'s' * (len(rest) > 1)})"
        elif without:
            left_out = " | –"
        lines.append(f"| {task} | {variant or '–'} | {len(seeds)}{'' if len(seeds) == planned else f'/{planned}'} | "
                     f"{_signed(mean)} | {std:.1f} | {paired}{left_out} |")
    if not found:
        return f"_{better} − {other}: fewer than two seeds of each side so far._\n"
    if len(lines) > 3:  # more than one row: how often better wins over all pairs, whatever the task's scale
        above, below = sum(d > 0 for d in every), sum(d < 0 for d in every)
        lines.append(f"| all rows | – | {len(every)} | – | – | {_signs(every)} (sign test: p = "
                     f"{sign_test_p(above, below):.3f}){' | –' if without else ''} |")
    return "\n".join(lines) + "\n"


def _signed(x: float) -> str:
    """``x`` to one decimal with its sign; a mean that rounds to zero reads +0.0, not -0.0."""
    return f"{round(x, 1) + 0.0:+.1f}"


def _signs(diffs: Iterable[float]) -> str:
    diffs = list(diffs)
    return f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)}"


def sign_test_p(above: int, below: int) -> float:
    """One-sided exact sign test: the chance of ``above`` or more wins in ``above + below`` fair coin flips (pairs
    that are level carry no sign and are left out)."""
    n = above + below
    return sum(math.comb(n, k) for k in range(above, n + 1)) / 2 ** n if n else 1.0


def main_margins(records: list[dict[str, Any]], plan: dict) -> list[str]:
    """APT − P-tuning v2 and APT − fine-tuning in the main grid, with the sweep's seed also left out."""
    return [margins(records, "main", "apt", other, key="experiment", selection_seed=1, plan=plan)
            for other in ("pt2", "ft")]


def epoch_choice_table(records: list[dict[str, Any]], experiment: str) -> str:
    """Per task and method: the dev value at the best epoch (what is reported for SuperGLUE; NER reports test at
    that epoch) against the dev value at the last epoch, mean over seeds. A method whose dev curve is noisy gains
    more from the choice."""
    rows = [r for r in records if r["experiment"] == experiment and r.get("dev_by_epoch")]
    if not rows:
        return "_No runs recorded yet._\n"
    lines = ["| task | method | seeds | dev at the best epoch | dev at the last epoch | gain from the choice |",
             "|---|---|---:|---:|---:|---:|"]
    for (task, method), runs in sorted(group(rows, "task", "method").items(), key=lambda k: (k[0][0],
                                                                                             _method_key(k[0][1]))):
        best = statistics.fmean(max(r["dev_by_epoch"]) for r in runs)
        last = statistics.fmean(r["dev_by_epoch"][-1] for r in runs)
        lines.append(f"| {task} | {method} | {len(runs)} | {best:.1f} | {last:.1f} | {best - last:+.1f} |")
    return "\n".join(lines) + "\n"


def best_epoch_table(records: list[dict[str, Any]]) -> str:
    """Per task and method: the epoch of the best dev score, each seed's and their mean, out of the run's epochs."""
    lines = ["| task | method | seeds | best epoch per seed | mean | of epochs |", "|---|---|---:|---|---:|---:|"]
    for (task, method), runs in sorted(group(records, "task", "method").items(),
                                       key=lambda k: (k[0][0], _method_key(k[0][1]))):
        runs = sorted(runs, key=lambda r: r["seed"])
        epochs = [r["best_epoch"] for r in runs]
        lines.append(f"| {task} | {method} | {len(runs)} | {', '.join(map(str, epochs))} | "
                     f"{statistics.fmean(epochs):.1f} | {runs[0]['epochs']} |")
    return "\n".join(lines) + "\n"


def with_references(records: list[dict[str, Any]], plan: dict, experiment: str, methods: Iterable[str] = ("pt2", "apt"),
                    source: str = "main",
                    retrained: Iterable[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]], dict]:
    """``experiment``'s records plus ``source``'s runs of ``methods`` on the same tasks, relabelled as
    ``experiment``'s (and the plan with them), so that its tables and paired margins set an ablation or PT-2* beside
    the P-tuning v2 and APT it is measured against: the same tasks, seeds and footing, taken from the main grid
    rather than trained twice. Where the experiment's runs of a task trained on one device and ``source``'s on
    another, a reference retrained on the experiment's device (``retrained``, run.py --retrain) takes the place of
    ``source``'s: the same seed on another device is another run, so pairs across devices would not be pairs."""
    tasks = {t for (e, t, _, _) in plan if e == experiment}
    methods = set(methods)
    variants: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (e, task, method, variant) in plan:
        if e == experiment:
            variants[task, method].add(variant)
    if any(len(v) > 1 for v in variants.values()):
        raise ValueError(f"{experiment}: with_references pairs runs by task, method and seed, so each method may have "
                         f"one variant only; got {dict(variants)}")
    # one variant per method in these experiments (PT-2*'s "half"): dropped, so that runs pair by task and seed
    rows = [{**r, "variant": ""} for r in records if r["experiment"] == experiment]
    devices: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        devices[r["task"]].add(device_of(r))
    twins = {(r["run_id"], device_of(r)): r for r in latest_retrains(retrained)}

    def on_the_tasks_device(r: dict[str, Any]) -> dict[str, Any]:
        """``r``, or its retrain (or its reused run's) on the device the experiment's runs of the task trained on;
        failing both, ``r`` marked as paired across devices (the report names those)."""
        own = devices[r["task"]]
        if not own or own == {device_of(r)}:  # no runs of the experiment's on this task, or on r's device
            return r
        if len(own) == 1:
            device = next(iter(own))
            twin = twins.get((r["run_id"], device)) or twins.get((r.get("reused_from"), device))
            if twin is not None:
                return twin
        return {**r, "other_device": True}

    moved = [{**on_the_tasks_device(r), "experiment": experiment, "variant": ""} for r in records
             if r["experiment"] == source and r["task"] in tasks and r["method"] in methods]
    if not rows:  # nothing of the experiment's own yet: its table says so rather than repeating main's rows
        return [], plan
    moved_plan = {(experiment, t, m, ""): n for (e, t, m, v), n in plan.items()
                  if (e == source and t in tasks and m in methods) or e == experiment}
    return rows + moved, {**plan, **moved_plan}


def cross_device_note(rows: list[dict[str, Any]]) -> str:
    """The references ``with_references`` had to take from another device than the runs they are paired with."""
    across = sorted(r["run_id"] for r in rows if r.get("other_device"))
    if not across:
        return ""
    return ("Paired across devices (no retrain on the runs' device yet: `python benchmarks/reproduce/run.py --retrain "
            "RUN_ID` there): " + ", ".join(f"`{run_id}`" for run_id in across) + ".\n")


def layer_lengths_cell(record: dict[str, Any], layers: int | None = None) -> str:
    """A prefix run's pseudo tokens per layer: 'l each' for one length, the list and its sum for PT-2*."""
    lengths = record.get("prefix_lengths")  # PT-2*'s per-layer list; None for one length per layer
    if lengths:
        return f"{', '.join(map(str, lengths))} (Σ {sum(lengths)})"
    if record.get("prefix_length") is None:
        return "–"
    return f"{record['prefix_length']} each" + (f" (Σ {record['prefix_length'] * layers})" if layers else "")


def params_table(records: list[dict[str, Any]], experiment: str, plan: dict, lengths: bool = False) -> str:
    """One row per method; per task the headline value (mean ± std) beside the method's trainable parameters, and
    with ``lengths`` its pseudo tokens per layer (the total for one length per layer takes the depth from a PT-2*
    list). The layout of the paper's ablation and PT-2* tables, where a method's cost matters as much as its
    score."""
    rows = [r for r in records if r["experiment"] == experiment]
    if not rows:
        return "_No runs recorded yet._\n"
    tasks = sorted({t for (e, t, _, _) in plan if e == experiment} | {r["task"] for r in rows},
                   key=lambda t: (t in NER, t))
    by = group(rows, "task", "method")
    layers = next((len(r["prefix_lengths"]) for r in rows if r.get("prefix_lengths")), None)
    header = ["method"]
    for task in tasks:
        metric = next((r["reported"] + " " + r["metric"] for r in rows if r["task"] == task), "")
        header += [f"{task} ({metric})" if metric else task, f"{task} params"]
        header += [f"{task} pseudo tokens per layer"] if lengths else []
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in sorted({r["method"] for r in rows}, key=_method_key):
        cells = [method]
        for task in tasks:
            runs = by.get((task, method), [])
            expected = max((n for (e, t, m, _), n in plan.items() if (e, t, m) == (experiment, task, method)),
                           default=None)
            cells += [cell([r["value"] for r in runs], expected),
                      f"{runs[0]['trainable_params']:,}" if runs else "–"]
            cells += [layer_lengths_cell(runs[0], layers) if runs else "–"] if lengths else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_low_resource(records: list[dict[str, Any]], path: Path, experiment: str = "low-resource",
                      full: str | None = "full-data") -> bool:
    """The paper's low-resource figure: headline value (mean ± std over seeds) against training examples, one panel
    per task, one line per method; the ``full`` experiment's runs of the same tasks (the whole training set) end
    each line."""
    rows = [r for r in records if r["experiment"] == experiment]
    if not rows:
        return False
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (t in NER, t))
    rows += [r for r in records if full and r["experiment"] == full and r["task"] in tasks]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        runs = [r for r in rows if r["task"] == task]
        for (method,), own in sorted(group(runs, "method").items(), key=lambda kv: _method_key(kv[0][0])):
            sizes = sorted({r["train_examples"] for r in own})
            stats = [mean_std([r["value"] for r in own if r["train_examples"] == n]) for n in sizes]
            ax.errorbar(sizes, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                        label=method, color=METHOD_COLORS.get(method))
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"training examples (of {runs[0]['train_examples_full']:,})")
        ax.set_title(f"{task}: {runs[0]['reported']} {runs[0]['metric']}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("headline metric (%)")
    return save_figure(fig, path)


def sweep_table(records: list[dict[str, Any]], grid: dict[str, Any], failed: Iterable[str] = ()) -> str:
    """Per (task, method): the dev value at every rate swept, low to high, and the rate the main grid takes (the best
    dev value of the finished sweep, ties to the smaller rate), with whether it sits at the sweep's edge (a better
    rate may lie beyond). Rates, not variant names: the same variant is a different rate on different tasks."""
    failed = set(failed)
    lines = ["| task | method | rates | dev by rate (low to high) | rate taken | at the edge |",
             "|---|---|---:|---|---:|---|"]
    found = False
    for task, method in dict.fromkeys((r.task, r.method) for r in expand(grid) if r.experiment == SWEEP):
        runs = {r["learning_rate"]: f"{r['dev_value']:.1f}" for r in records
                if r["experiment"] == SWEEP and r["task"] == task and r["method"] == method}
        runs.update({resolve_settings(grid, r, records, failed)["learning_rate"]: "failed"
                     for r in planned_runs(grid, records, failed) if r.run_id in failed and r.experiment == SWEEP
                     and r.task == task and r.method == method})
        if not runs:
            continue
        found = True
        rates = sorted(runs)
        swept = " · ".join(f"{rate:g}: {runs[rate]}" for rate in rates)
        if not sweep_complete(grid, task, method, records, failed):
            lines.append(f"| {task} | {method} | {len(rates)} | {swept} | sweep unfinished | – |")
            continue
        rate = best_sweep_record(task, method, records)["learning_rate"]
        # a tie goes to the smaller rate, so a taken rate below a highest rate that scores the same is not
        # extended by the rule, but a better rate may still lie beyond
        edge = ("lowest" if rate == rates[0] else "highest" if rate == rates[-1]
                else "tied with highest" if runs[rates[-1]] == runs[rate] else "no")
        lines.append(f"| {task} | {method} | {len(rates)} | {swept} | {rate:g} | {edge} |")
    return ("\n".join(lines) + "\n") if found else "_No runs recorded yet._\n"


def loss_flattened(losses: list[float], window: int = 3, tolerance: float = 0.05) -> bool | None:
    """Whether the training loss has flattened: the mean of the last `window` epochs is within `tolerance`
    (relative) of the mean of the `window` before. None when there are too few epochs to tell."""
    if len(losses) < 2 * window:
        return None
    last, before = statistics.fmean(losses[-window:]), statistics.fmean(losses[-2 * window:-window])
    return abs(before - last) <= tolerance * before


def time_table(records: list[dict[str, Any]]) -> str:
    """Runs trained per (experiment, task, method), their mean wall time and how many flattened their training loss;
    a reused record (``reused_from``) cost nothing and is counted where it was trained."""
    by = group([{**r, "device": device_of(r)} for r in records if not r.get("reused_from")],
               "experiment", "task", "method", "device")
    lines = ["| experiment | task | method | device | runs | epochs | mean seconds per run | "
             "runs whose train loss flattened |", "|---|---|---|---|---:|---:|---:|---:|"]
    partial = False
    for (experiment, task, method, device), rows in sorted(by.items()):
        flat = [loss_flattened(r.get("train_loss_by_epoch", [])) for r in rows]
        at_least = "≥ " if any(r.get("seconds_partial") for r in rows) else ""
        partial = partial or bool(at_least)
        lines.append(f"| {experiment} | {task} | {method} | {device} | {len(rows)} | {rows[0]['epochs']} | "
                     f"{at_least}{statistics.fmean(r['seconds'] for r in rows):.0f} | "
                     f"{sum(bool(f) for f in flat)}/{len(rows)} |")
    note = ("\n≥: some of these runs count only their last sitting (resumed before time was counted across "
            "sittings); `python benchmarks/reproduce/recount_seconds.py --write` recounts them.\n" if partial else "")
    return "\n".join(lines) + "\n" + note


def save_figure(fig: plt.Figure, path: Path) -> bool:
    """Write ``fig`` to ``path`` at the report's resolution and free it (the report draws many); True."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_variants(records: list[dict[str, Any]], experiment: str, path: Path) -> bool:
    rows = [r for r in records if r["experiment"] == experiment]
    if not rows:
        return False
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        by = group([r for r in rows if r["task"] == task], "method", "variant")
        labels = [f"{m}\n{v}" for (m, v) in sorted(by, key=lambda k: (_method_key(k[0]), k[1]))]
        stats = [mean_std([r["value"] for r in by[k]]) for k in sorted(by, key=lambda k: (_method_key(k[0]), k[1]))]
        ax.bar(range(len(stats)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3,
               color=["tab:blue" if lab.startswith("pt2") else "tab:orange" for lab in labels])
        for i, (m, _) in enumerate(stats):
            ax.text(i, m, f"{m:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=45, ha="right")
        ax.set_title(f"{experiment}: {task} ({rows[0]['metric'] if task == rows[0]['task'] else ''})")
        ax.set_ylabel("headline metric (%)")
        seeds = [r for r in rows if r["task"] == task]
        ax.set_ylim(max(0, min(r["value"] for r in seeds) - 10), min(100, max(r["value"] for r in seeds) + 8))
    return save_figure(fig, path)


def plot_sweep(records: list[dict[str, Any]], grid: dict[str, Any], path: Path) -> bool:
    """Dev value against learning rate, one panel per task, one line per method. The rate is shown as a multiple of
    the method's lr-mid rate (the script's rate; ft 2e-5), so prefix methods and ft share an axis; the rate each
    finished sweep hands to the main grid is starred."""
    middle = {(r.task, r.method): resolve_settings(grid, r, [])["learning_rate"]
              for r in expand(grid) if r.experiment == SWEEP and r.variant == "lr-mid"}
    rows = [r for r in records if r["experiment"] == SWEEP and (r["task"], r["method"]) in middle]
    if not rows:
        return False
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (t in NER, t))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False, sharey=False)
    for ax, task in zip(axes[0], tasks):
        for method, runs in sorted(group([r for r in rows if r["task"] == task], "method").items(),
                                   key=lambda kv: _method_key(kv[0][0])):
            mid = middle[task, method[0]]
            runs = sorted(runs, key=lambda r: r["learning_rate"])
            color = METHOD_COLORS.get(method[0])
            ax.plot([r["learning_rate"] / mid for r in runs], [r["dev_value"] for r in runs], marker="o",
                    label=method[0], color=color)
            best = best_sweep_record(task, method[0], records)
            ax.plot(best["learning_rate"] / mid, best["dev_value"], marker="*", markersize=13, color=color)
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("rate / lr-mid rate")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("dev metric (%)")
    return save_figure(fig, path)


def plot_gates(summary: dict[str, Any], path: Path) -> None:
    """Heat map of mean lambda * alpha (layer 1 at the bottom, as in the paper) beside lambda per layer."""
    gate = summary["effective_gate"]
    layers, length = len(gate), len(gate[0])
    fig, (heat, lam) = plt.subplots(1, 2, figsize=(min(14, 3 + 0.12 * length + 3), 3.4),
                                    gridspec_kw={"width_ratios": [4, 1]})
    image = heat.imshow(gate, origin="lower", aspect="auto", cmap="viridis")
    heat.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
    heat.xaxis.set_major_locator(MaxNLocator(integer=True))
    heat.set_xlabel("pseudo token")
    heat.set_ylabel("layer")
    heat.set_title(f"{summary['task']} {summary['method']}: mean lambda x alpha ({summary['split']})", fontsize=9)
    fig.colorbar(image, ax=heat)
    if summary["lambda"][0] is not None:
        lam.barh(range(layers), summary["lambda"], color="tab:orange")
        lam.set_yticks(range(layers), [str(i + 1) for i in range(layers)])
        lam.set_title("lambda per layer", fontsize=9)
    save_figure(fig, path)


def heavier_half(lower: float, upper: float, tolerance: float = 0.05) -> str:
    """Which half of the layers carries more gate mass; "neither" when they are within ``tolerance`` (relative) of
    each other: a hair's difference is no layer preference."""
    if abs(lower - upper) <= tolerance * max(lower, upper):
        return f"neither (within {tolerance:.0%})"
    return "lower" if lower > upper else "upper"


def gate_section(plots: Path | None = None) -> str:
    """One heat map per recorded gate file (drawn into plots/gates, by default beside the files) and a lower- vs
    upper-layer table (the paper: NER lower, COPA upper)."""
    plots = HERE / "results" if plots is None else plots
    files = sorted((HERE / "results" / "gates").glob("*.json"))
    if not files:
        return "_No gate maps yet (python benchmarks/reproduce/gates.py)._\n"
    lines = ["| run | examples | lambda per layer (1..N) | mean gate, lower half | mean gate, upper half | "
             "heavier half |", "|---|---:|---|---:|---:|---|"]
    images = []
    for file in files:
        summary = json.loads(file.read_text())
        rows = [statistics.fmean(row) for row in summary["effective_gate"]]
        half = len(rows) // 2
        lower, upper = statistics.fmean(rows[:half]), statistics.fmean(rows[-half:])
        lam = ", ".join(f"{x:.2f}" for x in summary["lambda"]) if summary["lambda"][0] is not None else "–"
        lines.append(f"| {summary['run_id']} | {summary['examples']} | {lam} | {lower:.3f} | {upper:.3f} | "
                     f"{heavier_half(lower, upper)} |")
        png = plots / "gates" / file.with_suffix(".png").name
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_gates(summary, png)
        images.append(f"![{summary['run_id']}](results/gates/{png.name})")
    return "\n".join(lines) + "\n\n" + "\n".join(images) + "\n"


def progress_table(records: list[dict[str, Any]], grid: dict[str, Any], failed: Iterable[str] = ()) -> str:
    """Recorded vs planned runs per experiment and task, with the median wall minutes of the recorded runs (trained
    here, not reused) of the same backbone and task on the CPU: how much of the grid is left, and roughly what it
    costs in CPU-hours (a GPU's minutes would price it at a fraction)."""
    planned: dict[tuple[str, str], int] = defaultdict(int)
    backbone: dict[tuple[str, str], str] = {}
    plan = planned_runs(grid, records, set(failed))
    for run in plan:
        planned[run.experiment, run.task] += 1
        backbone[run.experiment, run.task] = run.settings.get("model", "")
    have = {r["run_id"] for r in records}
    done: dict[tuple[str, str], int] = defaultdict(int)
    for run in plan:
        done[run.experiment, run.task] += run.run_id in have
    # A backbone 8x the size costs 8x a step: MPNet's runs must not borrow MiniLM's minutes, nor the reverse; and
    # fine-tuning costs more than a prefix, so what is left is priced by method where that method has a run.
    minutes: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_method: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        if "reused_from" not in r and device_of(r) == "cpu":
            model = r.get("model") or r.get("settings", {}).get("model", "")  # the first records: settings only
            minutes[model, r["task"]].append(r["seconds"] / 60)
            by_method[model, r["task"], r["method"]].append(r["seconds"] / 60)
    lines = ["| experiment | task | recorded / planned | median minutes per run so far (backbone, task) |",
             "|---|---|---:|---:|"]
    for (experiment, task), n in planned.items():
        spent_so_far = minutes[backbone[experiment, task], task]
        spent = f"{statistics.median(spent_so_far):.0f}" if spent_so_far else "–"
        lines.append(f"| {experiment} | {task} | {done[experiment, task]} / {n} | {spent} |")
    # What is left: the median of the same backbone, task and method, else of the same backbone and task; runs
    # with neither are counted apart.
    left, unpriced = 0.0, 0
    for run in plan:
        if run.run_id in have:
            continue
        model = run.settings.get("model", "")
        priced = by_method.get((model, run.task, run.method)) or minutes.get((model, run.task))
        if priced:
            left += statistics.median(priced)
        else:
            unpriced += 1
    missing = sum(planned.values()) - sum(done.values())
    estimate = (f"\n{missing} runs left: about {left / 60:.1f} CPU-hours at one thread per run"
                + (f", plus {unpriced} runs of a task and backbone not timed yet" if unpriced else "")
                + " (a sweep's edge may add runs; reused runs cost nothing).\n") if missing else ""
    return "\n".join(lines) + "\n" + estimate


def build_report(records: list[dict[str, Any]], grid: dict[str, Any], plots: Path | None = None,
                 failed: Iterable[str] = (), retrained: Iterable[dict[str, Any]] = ()) -> str:
    """The report's Markdown; its plots are drawn into ``plots`` (by default results/, where the report links).
    ``failed``: ids of runs that exited with an error (results/failures.jsonl); a failed sweep run is that sweep's
    worst rate."""
    plots = PLOTS if plots is None else plots
    failed = sorted(set(failed))
    retrained = list(retrained)
    plan = planned_seeds(grid, records, failed)
    total = len(planned_runs(grid, records, failed))
    out = [f"# Reproduction report: fine-tuning vs P-tuning v2 vs APT on MiniLM\n",
           f"Regenerate: `{COMMAND}` (from `results/runs.jsonl`: {len(records)} of {total} planned runs recorded). "
           "Run what is missing: `python benchmarks/reproduce/run.py --commit`. Grid and per-task protocol: "
           "`grid.yaml`. Headline metric: best dev accuracy (SuperGLUE), test micro-F1 at the best dev epoch (NER). "
           "Cells are mean ± sample std (n − 1) over seeds; `(k/n)` marks a cell with k of its n seeds finished.\n",
           devices_table(records)]
    reading = HERE / "reading.md"
    if reading.is_file():
        out += ["## Reading\n", reading.read_text().strip() + "\n"]
    out += ["## 1. P-tuning v2 parity: prefix init std and position shift\n",
            "P-tuning v2 as it ran: prefix N(0, 0.02) and real tokens' positions shifted by the prefix length "
            "(`std0.02-shift`). adaprefix's defaults are `std1-noshift` (0.1's, kept on this evidence).\n",
            variant_table(records, "parity", plan)]
    if plot_variants(records, "parity", plots / "parity.png"):
        out.append("![parity](results/parity.png)\n")
    out += ["CB's second metric, dev macro-F1 at the best epoch (about 50 means a class, usually `neutral`, is "
            "never predicted):\n", variant_table([r for r in records if r["task"] == "cb"], "parity", plan,
                                                 dev_metric="macro_f1")]
    out += ["Training loss at the last epoch (the same epochs for every setting; lower = trained further):\n",
            variant_table(records, "parity", plan, final_train_loss=True)]
    out += ["APT − P-tuning v2 per setting:\n", margins(records, "parity", "apt", "pt2", plan=plan)]
    out += ["## 2. Main comparison (paper layout)\n", paper_table(records, "main", plan),
            "APT − P-tuning v2 and APT − fine-tuning per task, paired by seed. Seed 1's dev score also chose each "
            "method's learning rate (its main run is the sweep's run at that rate), so the last column leaves it "
            "out:\n", *main_margins(records, plan),
            "The reported value is the best epoch's, chosen on the same dev set (the paper's protocol for "
            "SuperGLUE). What that choice adds, per method (dev, mean over seeds):\n",
            epoch_choice_table(records, "main")]
    out += ["## 3. Ablations\n", "One gate only (token-gate: APT without the layer gate λ; layer-gate: without the "
            "token gate α), both at APT's swept rate, and pt2+ (P-tuning v2 at its swept rate with a prefix 1.5x "
            "as long, to match APT's trainable parameters), beside the main grid's P-tuning v2 and APT on the same "
            "tasks and seeds, trained on the arms' device (retrained there where the main grid's ran elsewhere: "
            "section 8):\n"]
    ablation, ablation_plan = with_references(records, plan, "ablation", retrained=retrained)
    out += [params_table(ablation, "ablation", ablation_plan), cross_device_note(ablation)]
    if ablation:
        out += ["APT − each, paired by seed. Every arm takes a rate that seed 1's dev score chose (APT's or P-tuning "
                "v2's sweep), and main's seed-1 APT and P-tuning v2 are those very sweep runs (or their retrains), so "
                "the last column leaves seed 1 out:\n",
                *(margins(ablation, "ablation", "apt", other, key="experiment", selection_seed=1, plan=ablation_plan)
                  for other in ("pt2+", "token-gate", "layer-gate", "pt2"))]
    out += ["## 4. Low-resource\n", "Seeded random training subsets (the subset's seed is the run's), the full dev "
            "set, P-tuning v2's footing at the grid's per-task rates (`grid.yaml`; conll03 takes CoNLL04's), no "
            "sweep:\n", variant_table(records, "low-resource", plan)]
    if plot_low_resource(records, plots / "low_resource.png"):
        out += ["![low-resource](results/low_resource.png)\n", "APT − P-tuning v2 and APT − fine-tuning per "
                "training-set size, paired by seed:\n",
                *(margins(records, "low-resource", "apt", other, plan=plan) for other in ("pt2", "ft"))]
    full = [r for r in records if r["experiment"] == "full-data"]
    trained_on = f"; trained on {', '.join(sorted({device_of(r) for r in full}))}" if full else ""
    out += ["### On the full training sets\n", "The same footing on all of WiC's and CoNLL-2003's training data "
            f"(`full-data`, the plot's last points{trained_on}):\n", paper_table(records, "full-data", plan)]
    if full:
        out += ["Paired by seed:\n", *(margins(records, "full-data", "apt", other, key="experiment", plan=plan)
                                       for other in ("pt2", "ft"))]
    out += ["## 5. PT-2*\n", "P-tuning v2 with per-layer prefix lengths derived from the task's APT run's gates "
            "(`adaprefix.analysis.layer_lengths`: half the pseudo tokens, shared out by each layer's gate mass), at "
            "P-tuning v2's swept rate, beside the main grid's P-tuning v2 and APT (on PT-2*'s device, as in section "
            "3):\n"]
    star, star_plan = with_references(records, plan, "pt2-star", retrained=retrained)
    out += [params_table(star, "pt2-star", star_plan, lengths=True), cross_device_note(star)]
    if star:
        out += ["Paired by seed (seed 1's dev score chose P-tuning v2's rate, which PT-2* takes, and main's seed-1 "
                "runs are the sweep's or their retrains; the last column leaves seed 1 out):\n",
                *(margins(star, "pt2-star", a, b, key="experiment", selection_seed=1, plan=star_plan)
                  for a, b in (("pt2*", "pt2"), ("apt", "pt2*")))]
    out += ["## Learning-rate sweep (seed 1, dev metric)\n",
            "The dev value at each rate swept and the rate each method takes into the main grid (`grid.yaml`: "
            "`lr-sweep`, its edge rule `extend_at_edge`):\n", sweep_table(records, grid, failed)]
    if plot_sweep(records, grid, plots / "lr_sweep.png"):
        out.append("Dev value against rate, as a multiple of each method's lr-mid rate (the script's; ft 2e-5); "
                   "the star is the rate taken (until a sweep finishes, its best so far):\n\n"
                   "![learning-rate sweep](results/lr_sweep.png)\n")
    out += ["## 6. What the gates learn\n", gate_section(plots)]
    out += ["## 7. A larger backbone: all-mpnet-base-v2 (MPNet, 12 x 768), CB\n",
            "P-tuning v2's footing at the script's rates (no sweep); see `grid.yaml`.\n",
            paper_table(records, "mpnet", plan), margins(records, "mpnet", "apt", "pt2", key="experiment", plan=plan),
            margins(records, "mpnet", "apt", "ft", key="experiment", plan=plan)]
    out += ["## 8. Device check: the same runs on another device\n",
            "Recorded runs trained again with their recorded settings and seed on another device "
            "(`python benchmarks/reproduce/run.py --retrain RUN_ID`, into `results/retrained.jsonl`). A seed fixes "
            "the initialisation and the data order, not the run: dropout masks come from the device's own generator "
            "and its kernels round differently (and the GPU machine had its own torch build). Where an ablation's or "
            "PT-2*'s runs trained on another device than the main grid's, sections 3 and 5 take these as the "
            "references.\n", device_check(records, retrained)]
    out += ["## 9. Starting at the frozen model (issue 24)\n",
            "Two starts a fresh prefix does not have, beside the main grid's P-tuning v2 and APT on the same tasks "
            "and seeds: `exact` (APT with exact gates, `gate_mode: exact`: lambda starts at 0, so the model starts "
            "exactly at the frozen one; without the position shift, which would move it even then) and `pt2-text` "
            "(P-tuning v2 whose prefix starts as the frozen model's keys and values of the task's `init_text`). "
            "Beside them the floor, `head`: the task head alone on the frozen backbone (a linear probe), which says "
            "what any prefix adds over training the head it feeds. Each takes its own swept rate (`lr-sweep`, seed "
            "1):\n"]
    start_tasks = {r.task for r in expand(grid) if r.experiment == "exact-start"}
    start_sweeps = [r for r in records if r["experiment"] == SWEEP and r["task"] in start_tasks
                    and r["method"] in ("exact", "pt2-text", "pt2", "apt", "head")]
    out += [sweep_table(start_sweeps, grid, failed)]
    start, start_plan = with_references(records, plan, "exact-start", retrained=retrained)
    out += ["The comparison at those rates, seeds 1 to 3:\n", params_table(start, "exact-start", start_plan),
            cross_device_note(start)]
    if start:
        out += ["Paired by seed (seed 1's dev score chose each arm's rate; the last column leaves it out):\n",
                *(margins(start, "exact-start", a, b, key="experiment", selection_seed=1, plan=start_plan)
                  for a, b in (("exact", "pt2"), ("exact", "apt"), ("pt2-text", "pt2"), ("pt2-text", "apt"),
                               ("pt2", "head"), ("apt", "head"), ("exact", "head"))),
                "The epoch of the best dev score (the main grid's prefix runs peaked late; does a start at the "
                "frozen model peak earlier?):\n", best_epoch_table(start)]
    out += ["## Progress\n", "What the grid still misses (`python benchmarks/reproduce/run.py --list` names each run). "
            "Minutes are wall time of the CPU runs on 2 cores, mostly shared with other work (a resumed run counts "
            "the work each of its sittings kept).\n", progress_table(records, grid, failed)]
    if failed:
        out += [f"Runs that exited with an error (`results/{FAILURES.name}`; skipped unless `run.py --retry-failed`; "
                "a failed sweep run counts as that sweep's worst rate): " + ", ".join(f"`{f}`" for f in failed) + "\n"]
    out += ["## Wall time and convergence per run\n", "On the CPU: 2 cores, shared with development work while "
            "the grid ran, one thread per run; on a GPU: several runs sharing it. Seconds are indicative only. A "
            "resumed run counts the work each of its sittings kept (runs resumed before the recipe counted across "
            "sittings were recounted from their TensorBoard event times by `recount_seconds.py`). A run's training "
            "loss counts as flattened when its last 3 epochs' mean is within 5% of the 3 before.\n",
            time_table(records) if records else "_No runs recorded yet._\n"]
    return "\n".join(out)


README = HERE.parent.parent / "README.md"
HEADLINE_START, HEADLINE_END = "<!-- reproduce headline: start -->", "<!-- reproduce headline: end -->"


def headline(records: list[dict[str, Any]], grid: dict[str, Any], failed: Iterable[str] = ()) -> str:
    """The main comparison in the paper's layout with APT's paired margins, as the project README shows it."""
    plan = planned_seeds(grid, records, failed)
    done = sum(r["experiment"] == "main" for r in records)
    planned = sum(n for (experiment, *_), n in plan.items() if experiment == "main")
    return (f"Main comparison on MiniLM, {done} of {planned} runs recorded (mean ± sample std over seeds; `(k/n)`: "
            f"k of n seeds so far; regenerated by `{COMMAND}`):\n\n" + paper_table(records, "main", plan)
            + "\nPaired by seed (seed 1 also chose the learning rate; the last column leaves it out):\n\n"
            + "\n".join(main_margins(records, plan)) + "\n\n"
            + devices_table([r for r in records if r["experiment"] in ("main", "lr-sweep")]))


def replace_block(text: str, body: str, start: str = HEADLINE_START, end: str = HEADLINE_END) -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``body``."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one {start!r} followed by one {end!r}")
    head, rest = text.split(start)
    return head + start + "\n" + body.strip() + "\n" + end + rest.split(end, 1)[1]


def main() -> None:
    records = read_records()
    failed = [f["run_id"] for f in read_records(FAILURES)]
    grid = load_grid()
    REPORT.write_text(build_report(records, grid, failed=failed, retrained=read_records(RETRAINED)))
    README.write_text(replace_block(README.read_text(), headline(records, grid, failed)))
    print(f"wrote {REPORT} and the headline in {README.name} from {len(records)} records")


if __name__ == "__main__":
    main()
