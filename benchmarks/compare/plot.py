"""Redraw a comparison's table and plot from its results JSON alone (no run folders, no training):

    python benchmarks/compare/plot.py benchmarks/compare/results/cb_minilm_12ep_3seeds.json

writes cb_minilm_12ep_3seeds.{md,png} beside the JSON, or in --out-dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adaprefix.analysis.compare import write_outputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results/<name>.json written by compare.py")
    parser.add_argument("--out-dir", type=Path, help="where the .md and .png go (default: beside each JSON)")
    args = parser.parse_args(argv)
    for results in args.results:
        for path in write_outputs(results, args.out_dir or results.parent):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
