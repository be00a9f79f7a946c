"""The routing cost alone: one MiniLM forward of a batch on 1 adapter, on 8 adapters mixed, and grouped per adapter.

    python benchmarks/serve/bench_forward.py        # about a minute; writes results/forward.json and forward.md

The HTTP load test (bench.py) is bound by its request path on this machine; this times what the server's batcher
calls, in one process, interleaved: a batch of 32 CB-style pairs (a) all on one adapter, (b) each row on one of 8
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


def main(repeats: int = 15, batch: int = 32) -> None:
    import tempfile

    import torch

    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.serve.engine import Engine
    from bench import HYPOTHESES, PREMISES, make_runs

    meta = {**run_metadata(packages=("torch", "transformers")), **machine_metadata()}
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine.from_runs(list(map(str, make_runs(Path(folder), 8))))
    names = list(engine.adapters)
    rng = random.Random(0)
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
    median = {k: statistics.median(v) for k, v in times.items()}
    record = {"meta": meta, "batch": batch, "repeats": repeats,
              "median_s": {k: round(v, 4) for k, v in median.items()},
              "ratios": {"mixed_8_vs_single_adapter_throughput": round(median["single_adapter"] / median["mixed_8"], 3),
                         "mixed_8_vs_grouped_8_throughput": round(median["grouped_8"] / median["mixed_8"], 3)}}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "forward.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Routing cost: one forward of 32 rows on MiniLM", "",
             f"Command: `{meta['command']}`; commit {meta['commit']}; {meta['cpu']}, {meta['threads']} threads; the "
             "2-core machine was loaded by a background training job (interleaved medians; read the ratios).", "",
             "| case | median s |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in median.items()] + [
             "", "| ratio | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in record["ratios"].items()] + [""]
    (out / "forward.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
