"""Gate-pruned adapters: dev score against the number of pseudo tokens kept, at several thresholds.

    python benchmarks/pruning/prune_curve.py runs/reproduce/lr-sweep/cb-exact-lr-lo-s1 [RUN ...]

For each run folder (an apt run, best with ``gate_mode: exact``): the run's own dev score, then, per threshold, a
pruned copy (``adaprefix.training.runs.prune_run``: the tokens whose gate never exceeded the threshold on the dev set
are dropped) evaluated on the same dev set. The thresholds are where the run's own gates put them: the largest gate
of each pseudo token on the dev set, ranked, gives the threshold that keeps 90%, 75%, 50%, 25% and 10% of the tokens
(a fixed threshold list suits no two runs: their gates differ in scale). With exact gates the curve ends with the
prefix removed altogether (every layer gate at 0, the trained head kept), which is what the prefix adds over the
head. Appends each run's curve to ``results/curves.json`` (keyed by run) and rewrites ``results/curves.md`` and
``results/curves.png``. The gates are read on the dev set the score is taken on: a curve says what the adapter
needs, not how a threshold generalises.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP = (0.9, 0.75, 0.5, 0.25, 0.1)  # shares of the pseudo tokens kept, each by its own threshold


def thresholds_keeping(max_gates: list[list[float]], shares=KEEP) -> list[float]:
    """The thresholds that keep about ``shares`` of the pseudo tokens: a token is kept when its largest gate exceeds
    the threshold, so keeping the k largest takes the (k+1)-th largest gate. Padding slots (-1) are not tokens."""
    gates = sorted((g for row in max_gates for g in row if g >= 0), reverse=True)
    keep = {round(share * len(gates)) for share in shares}
    return sorted({gates[k] for k in keep if 0 < k < len(gates)})


def without_prefix(run: Path, folder: Path) -> Path:
    """A copy of ``run`` (adapter, tokenizer, labels, config) whose layer gates are all 0: with exact gates, the
    frozen model with the run's trained head."""
    import shutil

    from safetensors.torch import load_file, save_file

    target = folder / "no-prefix"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "tb", "eval*"))
    weights = target / "adapter" / "adapter.safetensors"
    tensors = load_file(weights)
    tensors = {k: v.zero_() if k.endswith("layer_gate.scale") else v for k, v in tensors.items()}
    save_file(tensors, weights)
    return target


def curve(run: Path) -> dict:
    from adaprefix.training import evaluate_run, load_run
    from adaprefix.training.runs import prune_run

    loaded = load_run(run)
    key = f"dev_{loaded.task.main_metric}"
    gate_mode = loaded.model.adapter_config.gate_mode
    total = sum(loaded.model.adapter_config.layer_lengths(len(loaded.model.adaprefix.prefix.layer_lengths)))
    points = [{"threshold": None, "kept": total, "dev": evaluate_run(run)[key]}]
    with tempfile.TemporaryDirectory() as folder:
        gates = prune_run(run, Path(folder) / "all", 0.0).max_gates.nan_to_num(-1.0).tolist()
    for threshold in thresholds_keeping(gates):
        with tempfile.TemporaryDirectory() as folder:
            result = prune_run(run, Path(folder) / "pruned", threshold)
            points.append({"threshold": threshold, "kept": sum(result.lengths), "lengths": result.lengths,
                           "dev": evaluate_run(Path(folder) / "pruned")[key]})
        print(run.name, points[-1], flush=True)
    if gate_mode == "exact":
        with tempfile.TemporaryDirectory() as folder:
            dev = evaluate_run(without_prefix(run, Path(folder)))[key]
        points.append({"threshold": "no prefix", "kept": 0, "dev": dev})
        print(run.name, points[-1], flush=True)
    return {"task": loaded.task.name, "metric": key, "gate_mode": gate_mode, "tokens": total, "points": points,
            "max_gates": gates}


def markdown(curves: dict) -> str:
    lines = ["# Gate-pruned adapters: dev score against pseudo tokens kept", "",
             "Made by `python benchmarks/pruning/prune_curve.py RUN ...` (see its docstring). `unpruned`: the run's "
             "own adapter; each threshold drops the pseudo tokens whose largest gate on the dev set did not exceed "
             "it; `no prefix`: every layer gate at 0 (exact gates: the frozen model with the run's trained head).",
             ""]
    for run, c in curves.items():
        lines += [f"## {run} ({c['task']}, gate_mode {c['gate_mode']}, {c['metric']})", "",
                  "| threshold | tokens kept | of | dev |", "|---|---:|---:|---:|"]
        for p in c["points"]:
            dev = "-" if p["dev"] is None else f"{100 * p['dev'] if p['dev'] <= 1 else p['dev']:.1f}"
            threshold = p["threshold"]
            if threshold is None:
                threshold = "unpruned"
            elif not isinstance(threshold, str):
                threshold = f"{threshold:.3g}"
            lines.append(f"| {threshold} | {p['kept']} | "
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
