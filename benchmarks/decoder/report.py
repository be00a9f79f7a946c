"""The decoder grid's report: ``results/runs.jsonl`` (written by grid.py) as tables, in ``results/report.md``.

    python benchmarks/decoder/report.py

Per experiment, model and task: every arm's runs, with dev accuracy at the best dev epoch, invalid generations
(naming no label), the dev completion loss there, the optimiser steps it took to first reach 90% of the run's best
accuracy, trainable parameters and the run's time. Per model and task, each arm at its chosen rate: the mean over
seeds and the margin to LoRA paired by seed. Over every SmolLM2 run at the chosen rates (CB and RTE, paired by task
and seed): the issue's moonshot, an adaptive prefix within 2 points of LoRA, 3 above pt2 and above LLaMA-Adapter.
``results/curves.png``: dev accuracy against optimiser steps, each arm at its chosen rate, seed 1. The completion
loss at init of every arm comes from ``results/init_loss.json`` (init_loss.py), the untuned model's dev scores from
``results/zero_shot.json`` (zero_shot.py). Nothing here is filled in by hand:
a cell with no run says so.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load_grid_module():
    """grid.py, loaded by its path: the records and each arm's rate, read as the runners read them. By path, since
    the reproduction has a ``grid`` module of its own."""
    name = "adaprefix_benchmarks_decoder_grid"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "grid.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: its dataclass looks its module up
        spec.loader.exec_module(module)
    return sys.modules[name]


decoder_grid = _load_grid_module()
RECORDS = HERE / "results" / "runs.jsonl"
INIT = HERE / "results" / "init_loss.json"
ZERO_SHOT = HERE / "results" / "zero_shot.json"
OUT = HERE / "results" / "report.md"
CURVES = HERE / "results" / "curves.png"
REFERENCE = "lora"
#: The issue's moonshot, for each adaptive arm: (the arm it is compared with, the least mean paired margin, in points).
MOONSHOT = (("lora", -2.0), ("pt2", 3.0), ("llama-adapter", 0.0))
ADAPTIVE = ("apt", "exact", "exact-text", "separate")


def grid_arms() -> dict[str, dict]:
    """The arms of grid.yaml, with their rates."""
    return decoder_grid.load_grid(HERE / "grid.yaml")["arms"]


def read_records(path: Path = RECORDS) -> list[dict]:
    """grid.py's records (a run recorded twice is refused)."""
    return decoder_grid.read_records(path)


def moonshot_keys() -> set[tuple]:
    """The (model, task, seed) of every SmolLM2 run grid.yaml plans: the pairs a final moonshot verdict needs."""
    grid = decoder_grid.load_grid(HERE / "grid.yaml")
    return {(e["model"], task, int(seed)) for e in grid["experiments"] if e["model"] == decoder_grid.SWEEP_MODEL
            for task in e["tasks"] for seed in e["seeds"]}


def steps_to_90(record: dict) -> int | None:
    """The optimiser step of the first epoch whose dev accuracy reached 90% of the run's best (exactly 90% counts:
    207 of 277 is 90% of 230 of 277, although 0.9 * (230/277) rounds above 207/277)."""
    epochs = [e for e in record["epochs"] if e.get("dev_accuracy") is not None]
    if not epochs:
        return None
    best = max(e["dev_accuracy"] for e in epochs)
    return next(e["step"] for e in epochs if e["dev_accuracy"] >= 0.9 * best - 1e-9)


def run_seconds(record: dict) -> float:
    """A run's wall time over all its sittings: its ``train_seconds``, or its last epoch's ``elapsed_seconds`` where
    that is more (a PEFT run resumed before run.py counted every sitting recorded its last sitting's time alone)."""
    last = record["epochs"][-1].get("elapsed_seconds") if record["epochs"] else None
    return max(record["train_seconds"], last or 0.0)


def _cell(value, digits: int = 1, scale: float = 100.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def run_table(records: list[dict]) -> list[str]:
    lines = ["| run | lr | dev accuracy | invalid | completion loss | best epoch / of | steps to 90% | trainable | time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["arm"], r["learning_rate"], r["seed"])):
        if r.get("failed"):
            lines.append(f"| {r['arm']} s{r['seed']} | {r['learning_rate']:g} | failed: {r['failed']} "
                         f"(after {len(r['epochs'])} epochs) | - | - | - | - | - | - |")
            continue
        dev = r["dev"]
        lines.append(f"| {r['arm']} s{r['seed']} | {r['learning_rate']:g} | {_cell(dev.get('accuracy'))} | "
                     f"{_cell(dev.get('invalid'))} | {_cell(dev.get('completion_loss'), 3, 1.0)} | "
                     f"{r['best_epoch']} / {len(r['epochs'])} | {steps_to_90(r) or '-'} | "
                     f"{r['trainable_parameters']:,} | {run_seconds(r) / 60:.0f} min |")
    return lines


def chosen_rates(records: list[dict]) -> dict[str, float]:
    """Each arm's best seed-1 rate in the SmolLM2 CB sweep (ties: the smaller rate), for arms whose sweep has every
    rate of grid.yaml recorded: grid.py's own choice (``swept_rate``)."""
    grid = decoder_grid.load_grid(HERE / "grid.yaml")
    return {arm: rate for arm in grid["arms"] if (rate := decoder_grid.swept_rate(grid, arm, records)) is not None}


def at_chosen_rates(records: list[dict], rates: dict[str, float]) -> dict[str, dict[tuple, dict]]:
    """Per arm, its runs at its chosen rate in grid.yaml's experiments, keyed by (model, task, seed)."""
    experiments = {e["name"] for e in decoder_grid.load_grid(HERE / "grid.yaml")["experiments"]}
    by_arm: dict[str, dict[tuple, dict]] = defaultdict(dict)
    for r in records:
        rate = rates.get(r["arm"])
        if (rate is not None and math.isclose(r["learning_rate"], rate) and r["experiment"] in experiments
                and not r.get("failed")):
            by_arm[r["arm"]][(r["model"], r["task"], r["seed"])] = r
    return by_arm


def sweep_edge(arm: str, rate: float, records: list[dict]) -> str:
    """Where ``rate`` sits in the arm's swept rates (grid.yaml's, and any beyond an edge): "lowest" or "highest" (a
    rate beyond the sweep might have done better), else ""."""
    rates = decoder_grid.sweep_rates(decoder_grid.load_grid(HERE / "grid.yaml"), arm, records)[0]
    if math.isclose(rate, max(rates)):
        return "highest"
    return "lowest" if math.isclose(rate, min(rates)) else ""


def peaked_late(record: dict, last: int = 2) -> bool:
    """Whether the run's best dev accuracy came in its last ``last`` epochs: a curve that may not have flattened."""
    return record["best_epoch"] > len(record["epochs"]) - last


def summary_table(records: list[dict], rates: dict[str, float], sweeps: list[dict] | None = None) -> list[str]:
    """Per arm at its chosen rate, on one model and task: mean dev accuracy over seeds, the margin to LoRA paired by
    seed, how soon and how late the runs peaked, their size and their time. ``sweeps``: the records that hold the
    sweep (default ``records``), for marking a rate at its edge."""
    by_arm = at_chosen_rates(records, rates)
    lines = ["| arm | rate | seeds | dev accuracy (mean ± sd) | invalid | minus LoRA (paired) | steps to 90% (mean) | "
             "best in the last 2 epochs | trainable | time (mean) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    reference = by_arm.get(REFERENCE, {})
    for arm, runs in sorted(by_arm.items()):
        seeds = [runs[s] for s in sorted(runs)]
        accs = [r["dev"]["accuracy"] for r in seeds]
        sd = statistics.stdev(accs) * 100 if len(accs) > 1 else float("nan")
        pairs = [runs[s]["dev"]["accuracy"] - reference[s]["dev"]["accuracy"] for s in runs if s in reference]
        margin = f"{100 * statistics.mean(pairs):+.1f} ({len(pairs)})" if pairs and arm != REFERENCE else "-"
        invalid = statistics.mean(r["dev"].get("invalid", float("nan")) for r in seeds)
        steps = [s for s in map(steps_to_90, seeds) if s is not None]
        edge = sweep_edge(arm, rates[arm], records if sweeps is None else sweeps)
        rate = f"{rates[arm]:g}" + (f" ({edge} swept)" if edge else "")
        lines.append(f"| {arm} | {rate} | {len(runs)} | {100 * statistics.mean(accs):.1f} ± "
                     f"{'-' if math.isnan(sd) else f'{sd:.1f}'} | {_cell(invalid)} | {margin} | "
                     f"{f'{statistics.mean(steps):.0f}' if steps else '-'} | "
                     f"{sum(map(peaked_late, seeds))} of {len(seeds)} | {seeds[0]['trainable_parameters']:,} | "
                     f"{statistics.mean(map(run_seconds, seeds)) / 60:.0f} min |")
    return lines


def paired(records: list[dict], rates: dict[str, float], arm: str, other: str) -> dict[tuple, float]:
    """``arm`` minus ``other`` in dev accuracy points, per (model, task, seed) both have at their chosen rates."""
    by_arm = at_chosen_rates(records, rates)
    mine, theirs = by_arm.get(arm, {}), by_arm.get(other, {})
    return {k: 100 * (mine[k]["dev"]["accuracy"] - theirs[k]["dev"]["accuracy"]) for k in sorted(mine) if k in theirs}


def paired_margins(records: list[dict], rates: dict[str, float], arm: str, other: str) -> list[float]:
    """:func:`paired`'s margins, in (model, task, seed) order."""
    return list(paired(records, rates, arm, other).values())


def moonshot_table(records: list[dict], rates: dict[str, float], expected: set[tuple] | None = None) -> list[str]:
    """Each adaptive arm against LoRA, pt2 and LLaMA-Adapter: the mean paired margin over every run both have at
    their chosen rates (SmolLM2, CB and RTE), and whether it meets the moonshot's bar.

    The verdict is final only when each comparison pairs every (model, task, seed) in ``expected`` (grid.yaml's
    SmolLM2 runs); before that it reads "met so far" or "not met so far", with the fewest pairs any comparison has.
    Means are rounded to 1e-9 points before the bars, so that pairs which cancel exactly read as 0."""
    expected = moonshot_keys() if expected is None else expected
    head = " | ".join(f"minus {other} (bar {bar:+g})" for other, bar in MOONSHOT)
    lines = [f"| arm | {head} | moonshot |", "|---|" + "---:|" * len(MOONSHOT) + "---|"]
    for arm in ADAPTIVE:
        cells, verdicts, covered = [], [], []
        for other, bar in MOONSHOT:
            pairs = {k: v for k, v in paired(records, rates, arm, other).items() if k in expected}
            if not pairs:
                cells.append("-")
                verdicts.append(None)
                continue
            mean = round(statistics.mean(pairs.values()), 9)
            cells.append(f"{mean:+.2f} ({len(pairs)})")
            verdicts.append(mean > bar if bar == 0 else mean >= bar)
            covered.append(len(pairs))
        if None in verdicts:
            verdict = "not yet measured"
        else:
            verdict = "met" if all(verdicts) else "not met"
            if min(covered) < len(expected):
                verdict += f" so far ({min(covered)} of {len(expected)} pairs)"
        lines.append(f"| {arm} | {' | '.join(cells)} | {verdict} |")
    return lines


def plot_curves(records: list[dict], rates: dict[str, float], path: Path = CURVES) -> bool:
    """Dev accuracy against optimiser steps, each arm at its chosen rate, seed 1, one panel per SmolLM2 task;
    False (and nothing written) when no arm has such a run."""
    by_arm = at_chosen_rates([r for r in records if r["model"] == "smollm2" and r["seed"] == 1], rates)
    tasks = sorted({key[1] for runs in by_arm.values() for key in runs})
    if not tasks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm in sorted(by_arm):
            run = by_arm[arm].get(("smollm2", task, 1))
            if run is None:
                continue
            epochs = [e for e in run["epochs"] if e.get("dev_accuracy") is not None]
            ax.plot([e["step"] for e in epochs], [100 * e["dev_accuracy"] for e in epochs], marker="o",
                    markersize=3, label=f"{arm} ({run['learning_rate']:g})",
                    linestyle="--" if arm in ("lora", "llama-adapter") else "-")
        ax.set_title(f"SmolLM2-135M, {task}, seed 1")
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel("dev accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def init_table(paths: list[Path] | None = None) -> list[str]:
    """The completion loss at init of every start, a column per model (init_loss.py's files: SmolLM2's
    ``init_loss.json``, then ``init_loss-<model>.json``)."""
    paths = paths if paths is not None else [p for p in [INIT, *sorted(INIT.parent.glob("init_loss-*.json"))]
                                             if p.is_file()]
    if not paths:
        return ["(no results/init_loss.json: run init_loss.py)"]
    runs = [json.loads(p.read_text()) for p in paths]
    first = runs[0]
    lines = [f"Completion loss of the label word on the first {first['examples']} {first['task']} dev examples, prefix "
             f"length {first['prefix_length']}, before any training ("
             + "; ".join(f"{d['model']}: `{d['metadata']['command']}`" for d in runs) + "):", "",
             "| start | " + " | ".join(d.get("model_name", "smollm2") for d in runs) + " |",
             "|---|" + "---:|" * len(runs)]

    def label(row: dict) -> str:
        what = row["prefix"]
        if "prefix_init_std" in row:
            what += f", init std {row['prefix_init_std']:g}"
        if "text" in row:
            what += f", from the {row['text']} ({row['prefix_init_text']!r})"
        return what

    by_model = [{label(row): row for row in d["rows"]} for d in runs]
    for what in dict.fromkeys(label(row) for d in runs for row in d["rows"]):
        cells = []
        for rows in by_model:
            row = rows.get(what)
            if row is None:
                cells.append("-")
            elif row.get("completion_loss") is None:
                cells.append("refused by PEFT")
            else:
                cells.append(f"{row['completion_loss']:.3f}")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return lines


def zero_shot_table(path: Path = ZERO_SHOT) -> list[str]:
    """The untuned models' dev scores beside the majority class (zero_shot.py), or a line saying they are missing."""
    if not path.is_file():
        return ["(no results/zero_shot.json: run zero_shot.py)"]
    data = json.loads(path.read_text())
    lines = ["Each model with no adapter, prompted and scored as the runs are (`python benchmarks/decoder/zero_shot.py`):"
             " strictly (the whole generation must be a label word, as a run is scored), and on the first word it "
             "generates, the most lenient reading.", "",
             "| model | task | dev examples | accuracy | invalid | first-word accuracy | first-word invalid | "
             "completion loss | majority class |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for model, entry in sorted(data.items()):
        for task, s in sorted(entry["tasks"].items()):
            lines.append(f"| {model} | {task} | {s['dev_examples']} | {_cell(s['accuracy'])} | {_cell(s['invalid'])} | "
                         f"{_cell(s['first_word_accuracy'])} | {_cell(s['first_word_invalid'])} | "
                         f"{s['completion_loss']:.3f} | {s['majority_label'].strip()!r}: "
                         f"{_cell(s['majority_accuracy'])} |")
    return lines


def markdown(records: list[dict], curves: Path = CURVES) -> str:
    lines = ["# Decoders at a real budget: adaptive prefixes that start at the frozen model against LoRA", "",
             "Generated by `python benchmarks/decoder/report.py` from `results/runs.jsonl` (`grid.py`'s records) and "
             "`results/init_loss*.json` and `results/zero_shot.json`. The grid and its cost: `grid.yaml`; where the "
             "time goes: `results/timing.md`.",
             "", "## The start", ""]
    lines += init_table()
    lines += [""] + zero_shot_table()
    rates = chosen_rates(records)
    lines += ["", "## Each arm at its chosen rate", "",
              "The rate: the arm's best seed-1 dev accuracy in the SmolLM2 CB sweep, which RTE and Gemma take too. "
              "Arms whose sweep is not complete are left out here (their runs are below). A run whose best epoch is "
              "one of its last two (the first of tied best epochs counts) may not have flattened: more epochs might "
              "have helped it. A rate marked highest or lowest swept is at the edge of the arm's sweep: a rate beyond "
              "it might have done better. Time is wall time, pauses included: an upper bound."]
    if not rates:
        lines += ["", "No arm's sweep is complete yet."]
    for model, task in sorted({(r["model"], r["task"]) for r in records}, key=lambda mt: (mt[0] != "smollm2", mt)):
        chosen = [r for r in records if r["model"] == model and r["task"] == task]
        if rates and at_chosen_rates(chosen, rates):
            lines += ["", f"### {model}, {task}", ""] + summary_table(chosen, rates, records)
    lines += ["", "## The moonshot", "",
              "Each adaptive arm's mean margin in dev accuracy points, paired by task and seed over every SmolLM2 run "
              "at the chosen rates (the number of pairs in brackets). The bar: within 2 points of LoRA, at least 3 "
              "above pt2, above LLaMA-Adapter. The verdict is final once every comparison pairs all of grid.yaml's "
              f"{len(moonshot_keys())} SmolLM2 task and seed pairs; until then it says \"so far\".", ""]
    lines += moonshot_table([r for r in records if r["model"] == "smollm2"], rates)
    usual = {arm: spec["rates"][len(spec["rates"]) // 2] for arm, spec in grid_arms().items()}
    if plot_curves(records, {**usual, **rates}, curves):
        lines += ["", f"Dev accuracy by optimiser step, seed 1, each arm at its chosen rate (where its sweep is not "
                      f"complete, its usual rate): `results/{curves.name}`."]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["experiment"], r["model"], r["task"])].append(r)
    for (experiment, model, task), runs in groups.items():
        lines += ["", f"## {experiment}: {model}, {task} ({len(runs)} runs)", ""]
        lines += run_table(runs)
    if not records:
        lines += ["", "No run is recorded yet."]
    return "\n".join(lines) + "\n"


def main() -> None:
    OUT.write_text(markdown(read_records()))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
