"""Load test of `adaprefix serve`'s fairness: latency of small requests (one input each) on an idle server and while
one large request is in flight. Bounded and localhost only: one real uvicorn server on a free port, a fixed number
of small requests, a fixed large request.

    python benchmarks/serve/fairness.py                    # the code of this checkout: writes results/fairness.*
    python benchmarks/serve/fairness.py --code DIR --label before   # another version's adaprefix (e.g. an older
                                                                    # commit unpacked with `git archive`)

Two CB-style runs on MiniLM (made as bench.py makes them: untrained, speed does not depend on the weights). First
``--small`` requests are sent one every ``--every`` seconds on the idle server; then the large request of
``--large`` inputs is sent, and after ``--after`` seconds the same small requests at the same pace. Each small
request's latency counts from its own sending; those sent while the large request was in flight are the "with a
large request" figures. Each run is added to results/fairness.json under its label; results/fairness.md shows them
all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(latencies: list[float]) -> dict:
    return {"requests": len(latencies), "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * _percentile(latencies, 0.99), 1), "max_ms": round(1000 * max(latencies), 1)}


async def _traffic(base: str, names: list[str], args) -> dict:
    import httpx

    example = {"premise": "A woman in a red coat walked her two dogs along the beach early on Sunday morning.",
               "hypothesis": "Someone walked dogs."}

    async def small(session, sent_log):
        start = time.perf_counter()
        response = await session.post(f"{base}/v1/predict", json={"adapter": names[1], "inputs": [example]})
        response.raise_for_status()
        sent_log.append((start, time.perf_counter() - start))

    async def paced(session, sent_log):
        tasks = []
        for _ in range(args.small):
            tasks.append(asyncio.ensure_future(small(session, sent_log)))
            await asyncio.sleep(args.every)
        await asyncio.gather(*tasks)

    limits = httpx.Limits(max_connections=args.small + 2)
    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as session:
        await small(session, [])  # warm-up
        idle: list = []
        await paced(session, idle)
        large_inputs = [dict(example, hypothesis=f"Someone walked {i} dogs.") for i in range(args.large)]
        large_start = time.perf_counter()
        large = asyncio.ensure_future(session.post(f"{base}/v1/predict",
                                                   json={"adapter": names[0], "inputs": large_inputs}))
        await asyncio.sleep(args.after)
        during: list = []
        await paced(session, during)
        response = await large
        response.raise_for_status()
        large_end = time.perf_counter()
    in_flight = [latency for sent, latency in during if sent < large_end]
    return {"idle": _summary([latency for _, latency in idle]),
            "with_large": _summary(in_flight) if in_flight else None,
            "large_s": round(large_end - large_start, 2), "small_sent_during_large": len(in_flight)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=HERE.parents[1], help="folder holding the adaprefix to measure")
    parser.add_argument("--label", default="this checkout", help="the run's name in the results")
    parser.add_argument("--large", type=int, default=1000, help="inputs of the large request")
    parser.add_argument("--small", type=int, default=20, help="small requests per phase")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between small requests")
    parser.add_argument("--after", type=float, default=1.0, help="seconds from the large request to the first small")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=600, help="client timeout per request (s)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    sys.path.insert(1, str(HERE))

    import torch
    import uvicorn

    import adaprefix
    from bench import _free_port, make_runs  # noqa: E402 - after the path that picks the adaprefix measured
    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.serve.app import create_app
    from adaprefix.serve.engine import Engine, Settings

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        runs = make_runs(Path(folder), 2)
        engine = Engine.from_runs(list(map(str, runs)), Settings(max_batch_size=args.max_batch_size,
                                                                 max_wait_ms=args.max_wait_ms))
        names = list(engine.adapters)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            result = asyncio.run(_traffic(f"http://127.0.0.1:{port}", names, args))
        finally:
            server.should_exit = True
            thread.join(timeout=60)
    record = {"label": args.label, "adaprefix": str(Path(adaprefix.__file__).parent), "torch_threads":
              torch.get_num_threads(), "settings": {k: v for k, v in vars(args).items() if k not in ("code", "out")},
              **result, "elapsed_s": round(time.perf_counter() - started, 1),
              "metadata": {**run_metadata(), "machine": machine_metadata()}}
    print(json.dumps(record), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "fairness.json"
    runs_so_far = json.loads(store.read_text()) if store.is_file() else {}
    runs_so_far[args.label] = {k: v for k, v in record.items() if k != "adaprefix"}
    store.write_text(json.dumps(runs_so_far, indent=2) + "\n")
    (args.out / "fairness.md").write_text(report(runs_so_far))


def report(runs: dict) -> str:
    lines = ["# adaprefix serve: small requests beside a large one", "",
             "Command: `python benchmarks/serve/fairness.py [--code DIR --label NAME]` (see its docstring), with "
             "OMP_NUM_THREADS=1 on a 2-core CPU shared with other jobs: seconds are noisy.", "",
             "| run | large request | idle p50 / p99 ms | with the large request in flight: p50 / p99 ms (n) | "
             "large request s |", "|---|---|---|---|---|"]
    for label, run in runs.items():
        with_large = run["with_large"]
        during = (f"{with_large['p50_ms']:.0f} / {with_large['p99_ms']:.0f} ({with_large['requests']})"
                  if with_large else "none sent before it ended")
        lines.append(f"| {label} | {run['settings']['large']} inputs, batch {run['settings']['max_batch_size']} | "
                     f"{run['idle']['p50_ms']:.0f} / {run['idle']['p99_ms']:.0f} | {during} | {run['large_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
