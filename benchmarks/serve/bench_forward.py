"""The routing cost alone: one MiniLM forward of a batch on 1 adapter, on 8 adapters mixed, and grouped per adapter.

    python benchmarks/serve/bench_forward.py        # a few minutes; writes results/forward.json and forward.md

The HTTP load test (bench.py) is bound by its request path on this machine; this times what the server's batcher
calls, in one process, interleaved: a batch of 16 or 32 CB-style pairs (a) all on one adapter, (b) each row on one of 8
adapters (``adapter_names``), (c) the same rows as 8 forwards, one per adapter, as a single-adapter server must.
Adapters are untrained (different seeds, methods, prefix lengths 8-20, heads of 2 or 3 labels).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def measure(engine, names: list[str], batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of one forward of ``batch`` rows: single adapter, 8 mixed, 8 grouped (interleaved)."""
    import torch

    from bench import HYPOTHESES, PREMISES

    rng = random.Random(batch)
    inputs = [{"premise": rng.choice(PREMISES), "hypothesis": rng.choice(HYPOTHESES)} for _ in range(batch)]
    routed = [names[i % 8] for i in range(batch)]
    rows = {name: engine.encode(name, inputs) for name in names}  # every input encoded for every adapter
    single = rows[names[0]]
    mixed = [rows[name][i] for i, name in enumerate(routed)]
    grouped = [[rows[name][i] for i, n in enumerate(routed) if n == name] for name in names]
    cases = {"single_adapter": lambda: engine.run(single), "mixed_8": lambda: engine.run(mixed),
             "grouped_8": lambda: [engine.run(group) for group in grouped]}
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.inference_mode():
        for case in cases.values():
            case()  # warm-up
        for _ in range(repeats):
            for name, case in cases.items():  # interleaved, so load changes hit every case alike
                start = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    import argparse
    import tempfile

    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.serve.engine import Engine
    from bench import make_runs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, action="append", help="rows per forward (repeatable; default 16 and 32)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--note", default="2-core CPU, possibly shared with other work (interleaved medians; read the "
                        "ratios)", help="machine conditions, for the report")
    args = parser.parse_args()
    meta = {**run_metadata(packages=("torch", "transformers")), **machine_metadata(), "note": args.note}
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine.from_runs(list(map(str, make_runs(Path(folder), 8))))
    names = list(engine.adapters)
    results = {}
    for batch in args.batch or [16, 32]:
        median = measure(engine, names, batch, args.repeats)
        results[batch] = {"median_s": {k: round(v, 4) for k, v in median.items()},
                          "ratios": {"mixed_8_vs_single_adapter_throughput":
                                     round(median["single_adapter"] / median["mixed_8"], 3),
                                     "mixed_8_vs_grouped_8_throughput":
                                     round(median["grouped_8"] / median["mixed_8"], 3)}}
    record = {"meta": meta, "repeats": args.repeats, "batches": results}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "forward.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Routing cost: one forward on MiniLM, 1 adapter vs 8 mixed vs 8 grouped", "",
             f"Command: `{meta['command']}`; commit {meta['commit']}; {meta['cpu']}, {meta['threads']} threads; "
             f"{meta['note']}.", "",
             "| rows | single adapter s | mixed 8 s | grouped 8 s | mixed vs single (throughput) | mixed vs grouped |",
             "|---|---|---|---|---|---|"]
    for batch, r in results.items():
        m, q = r["median_s"], r["ratios"]
        lines.append(f"| {batch} | {m['single_adapter']:.4f} | {m['mixed_8']:.4f} | {m['grouped_8']:.4f} | "
                     f"{q['mixed_8_vs_single_adapter_throughput']} | {q['mixed_8_vs_grouped_8_throughput']} |")
    lines.append("")
    (out / "forward.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
