"""What the gates learned, for the report: run `adaprefix gates` on trained grid runs and keep the numbers.

    python benchmarks/reproduce/gates.py                                 # gate_maps in grid.yaml and PT-2*'s sources
    python benchmarks/reproduce/gates.py parity/cb-apt-std0.02-shift-s1  # or the runs named

For each run it writes results/gates/<experiment>__<run>.json: the effective gate (layers x pseudo
tokens, mean lambda * alpha over the dev set), lambda per layer and alpha statistics. report.py draws the heat maps
from these files alone, so they can be redrawn without the run folders (which are not committed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from grid import gate_file, gate_runs, load_grid  # noqa: E402
from run import RUNS_DIR, read_records  # noqa: E402


def trained_folder(run_id: str, records: list[dict] | None = None) -> Path:
    """Where ``run_id`` was trained: its own folder, or, for a run whose record reuses another's (the main grid's
    seed 1 is often the sweep's run at the chosen rate), that run's folder."""
    records = read_records() if records is None else records
    reused = next((r["reused_from"] for r in records if r["run_id"] == run_id and "reused_from" in r), None)
    return RUNS_DIR / (reused or run_id)


def record_gates(run_id: str, split: str = "dev") -> Path:
    from adaprefix.analysis.gates import gate_report
    from adaprefix.analysis.run_info import run_metadata
    from adaprefix.files import atomic_write_text

    run_dir = trained_folder(run_id)
    if not (run_dir / "final_metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run; train it first (benchmarks/reproduce/run.py)")
    report = gate_report(run_dir, split, output=run_dir / "gates.png")
    final = json.loads((run_dir / "final_metrics.json").read_text())
    summary = {"run_id": run_id, "trained_as": str(run_dir.relative_to(RUNS_DIR)), "task": final["task"], "method": final["method"], "split": split,
               "examples": report["examples"], "effective_gate": report["effective_gate"],
               "lambda": [row["lambda"] for row in report["layers"]],
               "alpha_mean": [row["alpha_mean"] for row in report["layers"]],
               "alpha_example_std": [row["alpha_example_std"] for row in report["layers"]],
               **run_metadata(argv=[str(Path(__file__)), run_id])}
    path = gate_file(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=1) + "\n")  # PT-2* may read it at any moment
    return path


def main() -> None:
    run_ids = sys.argv[1:] or gate_runs(load_grid())
    records = read_records()
    for run_id in run_ids:
        if not (trained_folder(run_id, records) / "final_metrics.json").is_file():
            print(f"skipping {run_id}: not trained yet")
            continue
        print(f"wrote {record_gates(run_id)}")


if __name__ == "__main__":
    main()
