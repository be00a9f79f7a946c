"""Where does a prefix method's step time go? Per-op CPU profile and adaprefix hook timings, side by side.

Builds the same variants as ``bench_step.py`` (same backbone, batch and seed), warms each up, then for each variant
profiles ``--steps`` training steps with ``torch.profiler`` (retrying while the machine is contended, see
``bench_step.py``) and prints, per op, calls and self CPU milliseconds per step. It then times the adaprefix forward
pre-hooks (the base-model hook that builds the prefix, and each layer's hook that computes gates and the gated
prefix) by wrapping them, and reports the median per call, which is robust to short contention spikes.

    python benchmarks/speed/profile_step.py                       # floor, pt2, apt; sdpa
    python benchmarks/speed/profile_step.py --attn eager --variants pt2,apt --rows 25
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import bench_step as bench  # noqa: E402
from adaprefix import is_attached  # noqa: E402


def op_profile(runner: bench.Runner, batch, steps: int, threads: int, min_util: float, tries: int = 5):
    """{op: (calls per step, self CPU ms per step)} from the first uncontended profiled window."""
    for _ in range(tries):
        c0, w0 = time.process_time(), time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                runner.step(batch, record=False)
        util = (time.process_time() - c0) / ((time.perf_counter() - w0) * threads)
        if util >= min_util:
            break
    return {e.key: (e.count / steps, e.self_cpu_time_total / steps / 1000) for e in prof.key_averages()}, util


def hook_times(runner: bench.Runner, batch, steps: int) -> dict[str, tuple[float, int]] | None:
    """Median ms per call and calls per forward of the adaprefix pre-hooks (None if the model has none)."""
    base = runner.model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not is_attached(runner.model) or layers is None:
        return None
    calls: dict[str, list[float]] = {"base": [], "layer": []}
    for kind, module in [("base", base)] + [("layer", layer) for layer in layers]:
        for key, hook in list(module._forward_pre_hooks.items()):
            def timed(*args, _hook=hook, _kind=kind, **kwargs):
                t = time.perf_counter()
                out = _hook(*args, **kwargs)
                calls[_kind].append(time.perf_counter() - t)
                return out

            module._forward_pre_hooks[key] = timed
    for _ in range(steps):
        runner.step(batch, record=False)
    return {kind: (statistics.median(v) * 1000, len(v) // steps) for kind, v in calls.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--variants", default="floor,pt2,apt")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--rows", type=int, default=20, help="ops to print, by largest self CPU time")
    parser.add_argument("--threads", type=int, default=len(__import__("os").sched_getaffinity(0)))
    parser.add_argument("--min-util", type=float, default=0.85)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = bench.make_batch(16, 128, 30522, 0)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    runners = {n: bench.make_runner(n, args.attn, 16, 0, 1e-4) for n in names}
    for runner in runners.values():
        for _ in range(3):
            runner.step(batch, record=False)

    profiles = {}
    for name, runner in runners.items():
        profiles[name], util = op_profile(runner, batch, args.steps, args.threads, args.min_util)
        print(f"{name}: profiled at CPU utilisation {util:.2f}")
    ops = sorted(set().union(*profiles.values()), key=lambda k: -max(p.get(k, (0, 0))[1] for p in profiles.values()))
    print(f"\nper step: calls x self CPU ms ({args.attn}, {args.threads} threads)")
    print(f"{'op':44s}" + "".join(f"{n:>20s}" for n in profiles))
    for op in ops[: args.rows]:
        cells = "".join(f"{p.get(op, (0, 0))[0]:6.0f}x {p.get(op, (0, 0))[1]:9.2f} ms " for p in profiles.values())
        print(f"{op[:44]:44s}{cells}")
    totals = "".join(f"{sum(v[1] for v in p.values()):18.1f} ms" for p in profiles.values())
    print(f"{'total self CPU':44s}{totals}")

    print("\nadaprefix pre-hooks (median ms per call, calls per forward):")
    for name, runner in runners.items():
        times = hook_times(runner, batch, 10)
        if times:
            print(f"  {name}: " + ", ".join(f"{k} {ms:.3f} ms x {n}" for k, (ms, n) in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
