"""Gate-pruned adapters: dev score against the number of pseudo tokens kept, at several thresholds.

    python benchmarks/pruning/prune_curve.py runs/reproduce/lr-sweep/cb-exact-lr-lo-s1 [RUN ...]

For each run folder (an apt run, best with ``gate_mode: exact``): the run's own dev score, then, per threshold, a
pruned copy (``adaprefix.training.runs.prune_run``: the tokens whose gate never exceeded the threshold on the dev set
are dropped) evaluated on the same dev set. Appends each run's curve to ``results/curves.json`` (keyed by run) and
rewrites ``results/curves.md`` and ``results/curves.png``. The gates are read on the dev set the score is taken on:
a curve says what the adapter needs, not how a threshold generalises.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.0, 0.001, 0.01, 0.03, 0.1, 0.3)


def curve(run: Path, thresholds=THRESHOLDS) -> dict:
    from adaprefix.config import ConfigError
    from adaprefix.training import evaluate_run, load_run
    from adaprefix.training.runs import prune_run

    loaded = load_run(run)
    key = f"dev_{loaded.task.main_metric}"
    total = sum(loaded.model.adapter_config.layer_lengths(len(loaded.model.adaprefix.prefix.layer_lengths)))
    points = [{"threshold": None, "kept": total, "dev": evaluate_run(run)[key]}]
    for threshold in thresholds:
        with tempfile.TemporaryDirectory() as folder:
            try:
                result = prune_run(run, Path(folder) / "pruned", threshold)
            except ConfigError as err:  # nothing left at this threshold
                points.append({"threshold": threshold, "kept": 0, "dev": None, "note": str(err)})
                continue
            points.append({"threshold": threshold, "kept": sum(result.lengths), "lengths": result.lengths,
                           "dev": evaluate_run(Path(folder) / "pruned")[key]})
        print(run.name, points[-1], flush=True)
    return {"task": loaded.task.name, "metric": key, "gate_mode": loaded.model.adapter_config.gate_mode,
            "tokens": total, "points": points}


def markdown(curves: dict) -> str:
    lines = ["# Gate-pruned adapters: dev score against pseudo tokens kept", "",
             "Made by `python benchmarks/pruning/prune_curve.py RUN ...` (see its docstring). `unpruned`: the run's "
             "own adapter; each threshold drops the pseudo tokens whose largest gate on the dev set did not exceed "
             "it.", ""]
    for run, c in curves.items():
        lines += [f"## {run} ({c['task']}, gate_mode {c['gate_mode']}, {c['metric']})", "",
                  "| threshold | tokens kept | of | dev |", "|---|---:|---:|---:|"]
        for p in c["points"]:
            dev = "-" if p["dev"] is None else f"{100 * p['dev'] if p['dev'] <= 1 else p['dev']:.1f}"
            lines.append(f"| {'unpruned' if p['threshold'] is None else p['threshold']} | {p['kept']} | "
                         f"{c['tokens']} | {dev} |")
        lines.append("")
    return "\n".join(lines)


def plot(curves: dict, path: Path) -> None:
    from adaprefix.analysis.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, c in curves.items():
        points = [p for p in c["points"] if p["dev"] is not None]
        ax.plot([p["kept"] / c["tokens"] for p in points], [p["dev"] for p in points], marker="o", label=run)
    ax.set_xlabel("share of pseudo tokens kept")
    ax.set_ylabel("dev score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders to prune (none: redraw from the JSON)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    from adaprefix.analysis.run_info import run_metadata

    out = HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    store = out / "curves.json"
    curves = json.loads(store.read_text()) if store.is_file() else {}
    for run in args.runs:
        curves[run.name] = {**curve(run), "metadata": run_metadata()}
    store.write_text(json.dumps(curves, indent=1) + "\n")
    (out / "curves.md").write_text(markdown(curves))
    if curves:
        plot(curves, out / "curves.png")


if __name__ == "__main__":
    main()
