"""Load test of `adaprefix serve`: throughput and latency with 1, 2, 4, 8 adapters, mixed vs per-adapter batching,
and resident memory with N adapters vs N copies of the model.

    python benchmarks/serve/bench.py                       # writes results/serve.json and results/serve.md

Adapters are made, not trained: MiniLM (`minilm`) with an adapter attached under its own seed, prefix length,
method and head (CB's 3 labels, RTE's 2), saved as run folders the way `adaprefix train` writes them. Speed does not
depend on what the weights learned. A real uvicorn server on a free localhost port answers a fixed number of
requests (one CB/RTE-style pair each) from a fixed number of concurrent clients, with adapters drawn at random
(seeded) among the first N. Every configuration runs in one process, side by side: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

PREMISES = ["The committee said the new bridge would open next spring after the final safety inspection.",
            "A woman in a red coat walked her two dogs along the beach early on Sunday morning.",
            "The company reported that its profits fell sharply in the third quarter of the year.",
            "Scientists found traces of water in rock samples brought back from the far side of the moon."]
HYPOTHESES = ["The bridge is open.", "Someone walked dogs.", "Profits rose.", "Water was found on the moon."]


def make_runs(root: Path, count: int) -> list[Path]:
    """``count`` run folders on MiniLM with untrained adapters that differ in seed, method, length and head."""
    import torch
    import yaml

    from adaprefix.files import atomic_write_json
    from adaprefix.training.build import build_model, build_task
    from adaprefix.training.config import load_train_config

    runs = []
    for i in range(count):
        task = ("cb", "rte")[i % 2]
        cfg = load_train_config(None, {"task": task, "model": "minilm", "method": ("apt", "pt2")[i // 2 % 2],
                                       "prefix_length": (8, 16, 12, 20)[i % 4], "seed": i})
        task_spec = build_task(cfg)
        labels = task_spec.labels_for(cfg.data_dir)
        tokenizer = task_spec.load_tokenizer(cfg.model_path())
        torch.manual_seed(i)
        model = build_model(cfg, task_spec, labels, tokenizer)
        run = root / f"{task}-{cfg.method}-l{cfg.adapter.prefix_length}-s{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_json(run / "labels.json", labels)
        tokenizer.save_pretrained(run / "tokenizer")
        model.save_adapter(run / "adapter")
        runs.append(run)
    return runs


def _relative(path: Path) -> str:
    """A path as the repository sees it: committed results name no machine's folders."""
    try:
        return str(path.resolve().relative_to(HERE.parents[1]))
    except ValueError:
        return path.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _traffic(base: str, names: list[str], requests: int, concurrency: int, seed: int) -> tuple[float, list]:
    import httpx

    rng = random.Random(seed)
    jobs = [(rng.choice(names), {"premise": rng.choice(PREMISES), "hypothesis": rng.choice(HYPOTHESES)})
            for _ in range(requests)]
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def client(session):
        while not queue.empty():
            name, example = queue.get_nowait()
            start = time.perf_counter()
            response = await session.post(f"{base}/v1/predict", json={"adapter": name, "inputs": [example]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(timeout=120) as session:
        await session.post(f"{base}/v1/predict", json={"adapter": names[0], "inputs": [jobs[0][1]]})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return wall, latencies


def serve_and_measure(engine, names, requests, concurrency, seed) -> dict:
    import uvicorn

    from adaprefix.serve.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        wall, latencies = asyncio.run(_traffic(f"http://127.0.0.1:{port}", names, requests, concurrency, seed))
        health = json.loads(__import__("urllib.request").request.urlopen(f"http://127.0.0.1:{port}/health").read())
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    latencies.sort()
    return {"requests": requests, "wall_s": round(wall, 3), "throughput_rps": round(requests / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
            "forwards": health["batches"] - 1, "rows_per_forward": round((health["rows"] - 1) / max(health["batches"] - 1, 1), 2)}


MEMORY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
mode, runs = sys.argv[2], sys.argv[3:]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
if mode == "engine":
    from adaprefix.serve.engine import Engine
    held = Engine.from_runs(runs)
    model = next(iter(held.groups.values())).model
else:  # one model per run, as separate single-adapter servers would hold them
    from adaprefix.training import load_run
    held = [load_run(run) for run in runs]
    model = held[0].model
backbone = sum(p.numel() * p.element_size() for p in model.base_model.parameters())
models = [group.model for group in held.groups.values()] if mode == "engine" else [run.model for run in held]
import torch
with torch.no_grad():  # one forward each, so that every weight is resident (not just memory-mapped) when measured
    for m in models:
        m(input_ids=torch.tensor([[101, 2023, 102]]))
storages = {}  # every parameter and buffer tensor held, counted once per storage (shared tensors once)
for m in models:
    for t in [*m.parameters(), *m.buffers()]:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
print(json.dumps({"rss_bytes": rss(), "backbone_param_bytes": backbone, "tensor_bytes": sum(storages.values())}))
"""


def memory(runs: list[Path], mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(HERE.parents[1]), mode, *map(str, runs)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=192, help="requests per configuration (one input each)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients sending at once")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each configuration; medians are reported")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--note", default="2-core CPU, possibly shared with other work: seconds are noisy, ratios from "
                        "one side-by-side run are the figures to read", help="machine conditions, for the report")
    args = parser.parse_args()

    import torch

    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.serve.engine import Engine, Settings

    started = time.perf_counter()
    meta = run_metadata(packages=("torch", "transformers", "fastapi", "uvicorn", "httpx"))
    meta.update(machine_metadata(), torch_threads=torch.get_num_threads())
    meta["note"] = args.note
    with tempfile.TemporaryDirectory() as folder:
        runs = make_runs(Path(folder), 8)
        settings = Settings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
        engine = Engine.from_runs(list(map(str, runs)), settings)
        names = list(engine.adapters)
        trials: dict[tuple[int, str], list[dict]] = {}
        # One adapter: mixed and per-adapter batching are the same server.
        configs = [(1, "mixed")] + [(n, b) for n in (2, 4, 8) for b in ("mixed", "per-adapter")]
        for repeat in range(args.repeats):
            # Interleaved, and each repeat starts one configuration later: a slow spell of the machine, or a drift
            # over the run, hits every configuration alike.
            shift = repeat % len(configs)
            for count, batching in configs[shift:] + configs[:shift]:
                engine.settings.batching = batching
                result = serve_and_measure(engine, names[:count], args.requests, args.concurrency,
                                           seed=count + 100 * repeat)
                trials.setdefault((count, batching), []).append(result)
                print(json.dumps({"repeat": repeat, "adapters": count, "batching": batching, **result}), flush=True)
        throughput = [{"adapters": count, "batching": batching, "repeats": len(results),
                       **{key: statistics.median(r[key] for r in results) for key in results[0]},
                       "throughput_rps_each": [r["throughput_rps"] for r in results]}
                      for (count, batching), results in sorted(trials.items())]
        del engine
        mem = {"one_backbone_one_adapter": memory(runs[:1], "engine"), "engine_8_adapters": memory(runs, "engine"),
               "8_models": memory(runs, "copies")}
    by = {(r["adapters"], r["batching"]): r for r in throughput}
    single = by[(1, "mixed")]["throughput_rps"]
    ratios = {f"mixed_{n}_vs_single_adapter": round(by[(n, "mixed")]["throughput_rps"] / single, 3)
              for n in (2, 4, 8)}
    ratios.update({f"mixed_vs_per_adapter_{n}": round(by[(n, "mixed")]["throughput_rps"]
                                                      / by[(n, "per-adapter")]["throughput_rps"], 3)
                   for n in (2, 4, 8)})
    base = mem["one_backbone_one_adapter"]["rss_bytes"]
    ratios["rss_8_adapters_vs_one_backbone"] = round(mem["engine_8_adapters"]["rss_bytes"] / base, 3)
    ratios["rss_8_models_vs_one_backbone"] = round(mem["8_models"]["rss_bytes"] / base, 3)
    tensors = mem["one_backbone_one_adapter"]["tensor_bytes"]
    ratios["tensors_8_adapters_vs_one_backbone"] = round(mem["engine_8_adapters"]["tensor_bytes"] / tensors, 3)
    ratios["tensors_8_models_vs_one_backbone"] = round(mem["8_models"]["tensor_bytes"] / tensors, 3)
    record = {"meta": meta, "settings": vars(args) | {"out": _relative(args.out)}, "throughput": throughput,
              "memory": mem, "ratios": ratios, "elapsed_s": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "serve.md").write_text(report(record))
    print(report(record))


def report(record: dict) -> str:
    meta, ratios = record["meta"], record["ratios"]
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    lines = ["# adaprefix serve: load test", "",
             f"Command: `{meta.get('command', 'python benchmarks/serve/bench.py')}`  ",
             f"Commit {meta.get('commit')}, {meta.get('cpu', '')}, torch threads {meta['torch_threads']}; "
             f"{meta['note']}.", "",
             f"Each row is the median of {record['settings']['repeats']} runs of "
             f"{record['settings']['requests']} requests (one CB/RTE pair each, adapters drawn at random "
             f"among the first N), {record['settings']['concurrency']} concurrent clients, max batch "
             f"{record['settings']['max_batch_size']}, max wait {record['settings']['max_wait_ms']} ms. Adapters are "
             "untrained (MiniLM, different seeds, methods, prefix lengths 8-20 and heads of 2 or 3 labels): speed "
             "does not depend on what they learned.", "",
             "| adapters | batching | req/s (median) | req/s of each run | p50 ms | p99 ms | forwards | rows/forward |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["throughput"]:
        each = ", ".join(f"{x:.0f}" for x in r["throughput_rps_each"])
        lines.append(f"| {r['adapters']} | {r['batching']} | {r['throughput_rps']:.1f} | {each} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['forwards']:g} | {r['rows_per_forward']:.2f} |")
    mem = record["memory"]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in ratios.items()]
    lines += ["", f"Resident memory: one backbone with one adapter {mib(mem['one_backbone_one_adapter']['rss_bytes'])}, "
              f"one backbone with 8 adapters {mib(mem['engine_8_adapters']['rss_bytes'])}, 8 models "
              f"{mib(mem['8_models']['rss_bytes'])} (process RSS, torch and python included; backbone parameters "
              f"{mib(mem['one_backbone_one_adapter']['backbone_param_bytes'])}). Model tensors held (parameters and "
              f"buffers, each storage once): {mib(mem['one_backbone_one_adapter']['tensor_bytes'])}, "
              f"{mib(mem['engine_8_adapters']['tensor_bytes'])} and {mib(mem['8_models']['tensor_bytes'])}. "
              "Each model ran one forward before it was measured, so its weights are resident. RSS beyond the "
              "tensors is torch and Python themselves; runs whose tokenizer files are identical share one tokenizer "
              "(about 10 MiB each).",
              "Targets: mixed throughput with 8 adapters >= 0.9x one adapter's; RSS with 8 adapters <= 1.1x one "
              "backbone's.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
