"""Compare finished runs: a method x task table (mean and std over seeds) and a bar plot, both redrawable from the
results JSON alone (:func:`write_outputs`)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from .plotting import pyplot

from ..training.config import TRAIN_METHODS  # noqa: E402


def headline(final: dict) -> float:
    """The number the paper reports: test score at the best dev epoch where a test split exists, else best dev."""
    metric = final["main_metric"]
    return final["test"][metric] if final.get("test") else final["dev"][metric]


def summarize_runs(run_dirs: Iterable[str | Path]) -> list[dict]:
    """One row per (task, method) over the finished runs given: mean, std and values of the headline metric."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in run_dirs:
        final_file = Path(run) / "final_metrics.json"
        if final_file.is_file():
            final = json.loads(final_file.read_text())
            groups[(final["task"], final["method"])].append(final)
    rows = []
    for (task, method), finals in sorted(groups.items()):
        values = [100 * headline(f) for f in finals]
        rows.append({
            "task": task, "method": method, "metric": finals[0]["main_metric"],
            "reported": "test at best dev" if finals[0].get("test") else "best dev",
            "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values, "seeds": [f["seed"] for f in finals], "epochs": finals[0]["epochs"],
            "best_epochs": [f["best_epoch"] for f in finals],
            "trainable_parameters": finals[0]["trainable_parameters"],
            "train_seconds": statistics.fmean(f["train_seconds"] for f in finals),
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| task | method | metric (x100) | mean | std | seeds | best epochs | trainable params | time/run (s) |",
             "|---|---|---|---:|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['metric']} ({r['reported']}) | {r['mean']:.2f} | "
                     f"{r['std']:.2f} | {', '.join(map(str, r['seeds']))} | "
                     f"{', '.join(map(str, r['best_epochs']))} | {r['trainable_parameters']:,} | "
                     f"{r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Grouped bars: one group per task, one bar per method, error bars = std over seeds."""
    tasks = sorted({r["task"] for r in rows})
    methods = [m for m in sorted(TRAIN_METHODS, key=lambda m: m == "apt") if any(r["method"] == m for r in rows)]
    width = 0.8 / max(len(methods), 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(tasks) + 1), 3.5))
    for j, method in enumerate(methods):
        xs, means, stds = [], [], []
        for i, task in enumerate(tasks):
            row = next((r for r in rows if r["task"] == task and r["method"] == method), None)
            if row:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                means.append(row["mean"])
                stds.append(row["std"])
        bars = ax.bar(xs, means, width, yerr=stds, label=method, capsize=3)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("score x100")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results_json: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``<name>.md`` (the command, date, commit and versions, then the table) and ``<name>.png`` (the bars) in
    ``out_dir``, from the comparison's ``<name>.json`` alone: no run folder needed."""
    from .run_info import describe

    results_json, out_dir = Path(results_json), Path(out_dir)
    data = json.loads(results_json.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    header = f"Command: `{data['command']}`\n\n"
    if "date" in data:  # results written before the run metadata was recorded have the command only
        header += describe(data) + "\n\n"
    markdown, plot = out_dir / f"{results_json.stem}.md", out_dir / f"{results_json.stem}.png"
    markdown.write_text(header + markdown_table(data["rows"]))
    plot_comparison(data["rows"], plot, title=results_json.stem)
    return markdown, plot
