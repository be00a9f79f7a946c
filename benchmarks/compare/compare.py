"""Run methods x tasks x seeds with one shared budget, then write a table (md, json) and a bar plot.

    python benchmarks/compare/compare.py --name quick --tasks rte conll04 --methods pt2 apt --seeds 42 \
        --epochs 3 --set batch_size=32

Runs go to runs/compare/<name>/<task>-<method>-s<seed>; a finished run is reused, so an interrupted sweep
continues where it stopped. Results: benchmarks/compare/results/<name>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adaprefix.analysis.compare import markdown_table, summarize_runs, write_outputs
from adaprefix.analysis.run_info import run_metadata
from adaprefix.training import load_train_config, train
from adaprefix.training.recipe import RunExistsError

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="Name of this comparison (results file names).")
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", default=["ft", "pt2", "apt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--config", help="YAML settings shared by every run.")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Settings shared by every run.")
    parser.add_argument("--runs-dir", default="runs/compare")
    args = parser.parse_args()

    shared = dict(item.split("=", 1) for item in args.set)
    run_dirs = []
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                out = Path(args.runs_dir) / args.name / f"{task}-{method}-s{seed}"
                run_dirs.append(out)
                if (out / "final_metrics.json").is_file():
                    print(f"reusing finished run {out}")
                    continue
                cfg = load_train_config(args.config, {**shared, "task": task, "method": method, "seed": seed,
                                                      "epochs": args.epochs, "output_dir": str(out)})
                started = time.time()
                try:
                    result = train(cfg, resume=(out / "config.yaml").is_file())
                except RunExistsError:
                    result = train(cfg, overwrite=True)
                print(f"{result.summary()} ({time.time() - started:.0f}s)", flush=True)

    rows = summarize_runs(run_dirs)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"{args.name}.json").write_text(json.dumps({**run_metadata(), "rows": rows}, indent=2) + "\n")
    write_outputs(results / f"{args.name}.json", results)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
