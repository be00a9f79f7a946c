"""The decoder grid's report: ``results/runs.jsonl`` (written by grid.py) as tables, in ``results/report.md``.

    python benchmarks/decoder/report.py

Per experiment, model and task: every arm's runs, with dev accuracy at the best dev epoch, invalid generations
(naming no label), the dev completion loss there, the optimiser steps it took to first reach 90% of the run's best
accuracy, trainable parameters and the run's time; then, per arm at its chosen rate, the mean over seeds and the
margin to LoRA paired by seed. The completion loss at init of every arm comes from ``results/init_loss.json``
(init_loss.py). Nothing here is filled in by hand: a cell with no run says so.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "results" / "runs.jsonl"
INIT = HERE / "results" / "init_loss.json"
OUT = HERE / "results" / "report.md"
REFERENCE = "lora"


def read_records(path: Path = RECORDS) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_to_90(record: dict) -> int | None:
    """The optimiser step of the first epoch whose dev accuracy reached 90% of the run's best."""
    epochs = [e for e in record["epochs"] if e.get("dev_accuracy") is not None]
    if not epochs:
        return None
    best = max(e["dev_accuracy"] for e in epochs)
    return next(e["step"] for e in epochs if e["dev_accuracy"] >= 0.9 * best)


def _cell(value, digits: int = 1, scale: float = 100.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def run_table(records: list[dict]) -> list[str]:
    lines = ["| run | lr | dev accuracy | invalid | completion loss | best epoch / of | steps to 90% | trainable | time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["arm"], r["learning_rate"], r["seed"])):
        dev = r["dev"]
        lines.append(f"| {r['arm']} s{r['seed']} | {r['learning_rate']:g} | {_cell(dev.get('accuracy'))} | "
                     f"{_cell(dev.get('invalid'))} | {_cell(dev.get('completion_loss'), 3, 1.0)} | "
                     f"{r['best_epoch']} / {len(r['epochs'])} | {steps_to_90(r) or '-'} | "
                     f"{r['trainable_parameters']:,} | {r['train_seconds'] / 60:.0f} min |")
    return lines


def chosen_rates(records: list[dict]) -> dict[str, float]:
    """Each arm's best seed-1 rate in the SmolLM2 CB sweep (ties: the smaller rate), for arms whose sweep is done."""
    sweep = defaultdict(list)
    for r in records:
        if r["experiment"] == "sweep":
            sweep[r["arm"]].append(r)
    return {arm: float(max(runs, key=lambda r: (round(r["dev"]["accuracy"], 9), -r["learning_rate"]))["learning_rate"])
            for arm, runs in sweep.items() if len(runs) == 3}


def summary_table(records: list[dict], rates: dict[str, float]) -> list[str]:
    """Per arm at its chosen rate (or, while its sweep runs, every seed-1 run so far): mean dev accuracy over seeds
    and the margin to LoRA paired by seed."""
    by_arm: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in records:
        rate = rates.get(r["arm"])
        if rate is not None and math.isclose(r["learning_rate"], rate):
            by_arm[r["arm"]][r["seed"]] = r
    lines = ["| arm | rate | seeds | dev accuracy (mean ± sd) | invalid | minus LoRA (paired) |",
             "|---|---:|---:|---:|---:|---:|"]
    reference = by_arm.get(REFERENCE, {})
    for arm, runs in sorted(by_arm.items()):
        accs = [runs[s]["dev"]["accuracy"] for s in sorted(runs)]
        sd = statistics.stdev(accs) * 100 if len(accs) > 1 else float("nan")
        pairs = [runs[s]["dev"]["accuracy"] - reference[s]["dev"]["accuracy"] for s in runs if s in reference]
        margin = f"{100 * statistics.mean(pairs):+.1f} ({len(pairs)})" if pairs and arm != REFERENCE else "-"
        invalid = statistics.mean(runs[s]["dev"].get("invalid", float("nan")) for s in runs)
        lines.append(f"| {arm} | {rates[arm]:g} | {len(runs)} | {100 * statistics.mean(accs):.1f} ± "
                     f"{'-' if math.isnan(sd) else f'{sd:.1f}'} | {_cell(invalid)} | {margin} |")
    return lines


def init_table() -> list[str]:
    if not INIT.is_file():
        return ["(no results/init_loss.json: run init_loss.py)"]
    data = json.loads(INIT.read_text())
    lines = [f"Completion loss of the label word on the first {data['examples']} {data['task']} dev examples, "
             f"{data['model']}, prefix length {data['prefix_length']}, before any training "
             f"(`{data['metadata']['command']}`):", "",
             "| start | completion loss |", "|---|---:|"]
    for row in data["rows"]:
        what = row["prefix"]
        if "prefix_init_std" in row:
            what += f", init std {row['prefix_init_std']:g}"
        if "text" in row:
            what += f", from the {row['text']} ({row['prefix_init_text']!r})"
        lines.append(f"| {what} | {row['completion_loss']:.3f} |")
    return lines


def markdown(records: list[dict]) -> str:
    lines = ["# Decoders at a real budget: adaptive prefixes that start at the frozen model against LoRA", "",
             "Generated by `python benchmarks/decoder/report.py` from `results/runs.jsonl` (`grid.py`'s records) and "
             "`results/init_loss.json`. The grid and its cost: `grid.yaml`; where the time goes: `results/timing.md`.",
             "", "## The start", ""]
    lines += init_table()
    rates = chosen_rates(records)
    lines += ["", "## Each arm at its chosen rate", "",
              "The rate: the arm's best seed-1 dev accuracy in the SmolLM2 CB sweep. Arms whose sweep is not "
              "complete are left out here (their runs are below).", ""]
    lines += summary_table([r for r in records if r["model"] == "smollm2" and r["task"] == "cb-t2t"], rates) \
        if rates else ["No arm's sweep is complete yet."]
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
