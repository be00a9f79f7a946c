"""Mutation testing of adaprefix's core with mutmut, on a seeded random sample of the mutants.

mutmut (config: pyproject.toml, [tool.mutmut]) mutates the core modules (config, prefix, gates, attention, inject,
persistence, introspect, arch/) and runs, for each mutant, the fast core tests that cover the mutated function.
All ~1,900 mutants would take many CPU hours here; a random sample, fixed by its seed, gives an unbiased score in
bounded time (mutmut itself runs the quickest mutants first, so stopping a full run early would not).

Run from the repository root:
    .venv/bin/pip install mutmut==3.8.1
    .venv/bin/python benchmarks/mutation/run_sample.py --sample 120 --seed 0 --max-minutes 45
Writes results/sample-seed<seed>.json (every sampled mutant and its verdict) and prints the score.
`.venv/bin/mutmut show <name>` prints a mutant's diff; `.venv/bin/mutmut run` runs them all.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from adaprefix.analysis.run_info import run_metadata  # noqa: E402

MUTMUT = [str(ROOT / ".venv" / "bin" / "mutmut")]
# mutmut's exit-code verdicts (mutmut/stats.py, status_by_exit_code); anything else is "suspicious"
VERDICTS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 2: "interrupted",
            None: "not checked", 34: "skipped", 35: "suspicious", 36: "timeout", 37: "caught by type check",
            -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}
DETECTED = ("killed", "timeout", "segfault", "caught by type check")  # the tests noticed the mutant
UNCHECKED = ("not checked", "no tests", "skipped", "interrupted")


def all_mutants() -> dict[str, int | None]:
    found = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        found.update(json.loads(meta.read_text())["exit_code_by_key"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=45.0)
    parser.add_argument("--recheck", help="a results JSON: run its surviving mutants again instead of a sample")
    parser.add_argument("--module", action="append", default=None,
                        help="sample only the mutants of this module, e.g. adaprefix.pruning (repeatable)")
    args = parser.parse_args()

    # Generate the mutants of the code as it is now and collect which tests cover which function, running no mutant
    # (mutmut stops at the unknown name): the sample must be drawn from the current mutants, not a stale set.
    subprocess.run([*MUTMUT, "run", "--max-children", "1", "no-such-mutant"], cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = sorted(all_mutants())
    if args.module:
        names = [n for n in names if n.split(".x")[0] in args.module]
        if not names:
            raise SystemExit(f"no mutants in {args.module}: is each module in pyproject.toml's [tool.mutmut] only_mutate?")
    if args.recheck:  # the survivors of an earlier result, after tests were added for them
        previous = json.loads(Path(args.recheck).read_text())
        sample = sorted(n for n in previous["survived"] if n in names)
    else:
        sample = sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))
    started = time.time()
    try:
        subprocess.run([*MUTMUT, "run", "--max-children", "1", *sample], cwd=ROOT, timeout=args.max_minutes * 60,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"stopped after {args.max_minutes} minutes; unchecked mutants are reported as such", file=sys.stderr)
    minutes = (time.time() - started) / 60

    results = all_mutants()
    verdicts = {name: VERDICTS.get(results.get(name), "suspicious") for name in sample}
    checked = [v for v in verdicts.values() if v not in UNCHECKED]
    killed = sum(v in DETECTED for v in checked)
    score = killed / len(checked) if checked else float("nan")
    # Wilson 95% interval: the sample's uncertainty about the score of all mutants.
    z, n = 1.96, len(checked)
    centre = (score + z * z / (2 * n)) / (1 + z * z / n) if n else float("nan")
    half = z * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n)) / (1 + z * z / n) if n else float("nan")
    by_file: dict[str, dict[str, int]] = {}
    for name, verdict in verdicts.items():
        module = name.split(".x")[0]
        by_file.setdefault(module, {}).setdefault(verdict, 0)
        by_file[module][verdict] += 1
    argv = [sys.argv[0], "--recheck", args.recheck] if args.recheck else \
        [sys.argv[0], "--sample", str(args.sample), "--seed", str(args.seed), "--max-minutes", f"{args.max_minutes:g}",
         *(f"--module={m}" for m in args.module or ())]
    summary = {
        "tool": "mutmut 3.8.1",
        **run_metadata(packages=("mutmut",), argv=argv),
        "mutants_total": len(names),
        "sampled": len(sample),
        "checked": n,
        "detected": killed,
        "verdict_counts": {v: list(verdicts.values()).count(v) for v in sorted(set(verdicts.values()))},
        "survived": [name for name, v in verdicts.items() if v == "survived"],
        "score": round(score, 3),
        "score_95ci": [round(centre - half, 3), round(centre + half, 3)],
        "minutes": round(minutes, 1),
        "by_module": by_file,
        "verdicts": verdicts,
    }
    scope = "-" + "+".join(m.rsplit(".", 1)[-1] for m in args.module) if args.module else ""
    name = f"recheck-{Path(args.recheck).stem}.json" if args.recheck else f"sample{scope}-seed{args.seed}.json"
    out = Path(__file__).parent / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "verdicts"}, indent=2))


if __name__ == "__main__":
    main()
