"""Decoder inference: APT (per-query gates, fused fast path) against P-tuning v2, side by side in one process.

The model is Llama-shaped with random weights from ``LlamaConfig`` (no download): 4 layers, hidden 256, 8 attention
heads with 2 key/value heads (grouped-query), intermediate 688, sdpa attention, and a vocabulary of 1024: with
Llama's 32000 the output layer's matmul alone outweighs the four layers and would hide what attention costs. Every
variant is its own model built from the same seed, so the backbones are identical; ``attach`` adds a prefix of 16.

Variants:

- ``pt2``        ``AdaptivePrefixConfig(method="pt2", prefix_length=16)``: the prefix concatenated onto the keys.
- ``apt``        ``AdaptivePrefixConfig(method="apt", prefix_length=16)``: per-query gates on the fused path.
- ``apt-eager``  the same APT model run with the fused path switched off (``adaprefix.attention.fast_path(False)``),
  i.e. the eager per-query path every APT decoder forward used before; shows what the fast path changed.
- ``exact``      ``AdaptivePrefixConfig(method="apt", gate_mode="exact")``: exact per-query gates (the gate weighs
  each pseudo token's exponential) on the same fused path.
- ``separate``   ``AdaptivePrefixConfig(method="apt", gate_mode="separate")``: the host's own sdpa over the real
  keys, plus the prefix in a softmax of its own (per-query gates weighing inside it), added times lambda.

Two tasks, each timed per variant:

- ``forward``: one eval-mode forward under ``torch.no_grad()`` at batch ``--batch`` x ``--seq-len`` random tokens
  (full attention mask), logits included;
- ``generate``: ``generate()`` of ``--new-tokens`` tokens, greedy, with the KV cache, from a batch of
  ``--gen-batch`` short prompts of ``--prompt-len`` tokens, the first left-padded by a quarter of its length
  (``min_new_tokens`` = ``max_new_tokens``, so every call produces the same number of tokens).

Timing is interleaved: each repetition runs every variant once per task, round-robin, the starting variant rotating;
``--warmup`` untimed repetitions come first. Every call also records its process CPU time: utilisation
cpu / (wall x threads) is about 0.95 on an idle machine and drops when another process takes a core; calls below
``--min-util`` are flagged as contended, kept in the JSON and left out of the statistics, and repetitions continue
(up to ``--max-reps``) until each variant has ``--reps`` clean calls per task. Reported: medians per variant and
task, ratios of medians, and paired ratios over repetitions where both calls were clean. Targets: apt/pt2 <= 1.3
for the forward, <= 1.25 for generation.

Outputs ``benchmarks/speed/results/decoder_fast_path.{json,md}``, opening with the command that made them.

Run from the repository root::

    .venv/bin/python benchmarks/speed/bench_decoder.py            # the committed numbers (a minute or two)
    .venv/bin/python benchmarks/speed/bench_decoder.py --quick    # seconds-long smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from adaprefix import AdaptivePrefixConfig, attach  # noqa: E402
from adaprefix.analysis.run_info import machine_metadata, run_metadata  # noqa: E402
from adaprefix.attention import fast_path  # noqa: E402

VARIANTS = ("pt2", "apt", "apt-eager", "exact", "separate")
TASKS = ("forward", "generate")
TARGETS = {("forward", "apt/pt2"): 1.3, ("generate", "apt/pt2"): 1.25}
RATIOS = (("apt", "pt2"), ("apt-eager", "pt2"), ("apt", "apt-eager"), ("exact", "pt2"), ("exact", "apt"),
          ("separate", "pt2"), ("separate", "exact"))
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL = dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def build(variant: str, prefix_length: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same backbone for every variant
    model = LlamaForCausalLM(LlamaConfig(**MODEL, attn_implementation="sdpa")).eval()
    torch.manual_seed(seed + 1)
    method = "pt2" if variant == "pt2" else "apt"
    gate_mode = variant if variant in ("exact", "separate") else "scale"
    return attach(model, AdaptivePrefixConfig(method=method, prefix_length=prefix_length, gate_mode=gate_mode)).eval()


def make_inputs(args: argparse.Namespace) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, MODEL["vocab_size"], (args.batch, args.seq_len), generator=g)
    prompts = torch.randint(3, MODEL["vocab_size"], (args.gen_batch, args.prompt_len), generator=g)
    prompt_mask = torch.ones_like(prompts)
    pad = args.prompt_len // 4
    prompts[0, :pad], prompt_mask[0, :pad] = MODEL["pad_token_id"], 0  # one left-padded prompt
    return {"forward": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            "generate": {"input_ids": prompts, "attention_mask": prompt_mask}}


def run_task(variant: str, model: torch.nn.Module, task: str, inputs: dict, new_tokens: int) -> None:
    with fast_path(variant != "apt-eager"), torch.no_grad():
        if task == "forward":
            model(**inputs[task])
        else:
            out = model.generate(**inputs[task], max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=MODEL["pad_token_id"])
            assert out.shape[1] == inputs[task]["input_ids"].shape[1] + new_tokens


def timed(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def stats(values) -> dict:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "min": float("nan"), "n": 0}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(a.min()), "n": int(a.size)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small shapes, 2 repetitions, prints the table and writes nothing")
    parser.add_argument("--reps", type=int, default=20, help="clean timed calls per variant and task")
    parser.add_argument("--max-reps", type=int, default=None, help="most repetitions (default: 3 x --reps)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    parser.add_argument("--min-util", type=float, default=0.85,
                        help="a call whose CPU time / (wall x threads) is below this counts as contended")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--gen-batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where the results go (default: {RESULTS_DIR.relative_to(REPO)}; --quick: nowhere)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.warmup, args.min_util = 2, 1, 0.0
        args.seq_len, args.new_tokens = min(args.seq_len, 64), min(args.new_tokens, 4)
    if args.out_dir is None and not args.quick:
        args.out_dir = RESULTS_DIR
    return args


def summarise(times: dict, reps: dict, clean: dict, names: list[str]) -> tuple[dict, dict]:
    summary = {task: {v: stats(np.asarray(times[task][v])[np.asarray(clean[task][v], dtype=bool)]) for v in names}
               for task in TASKS}
    ratios = {}
    for task in TASKS:
        ratios[task] = {}
        for a, b in RATIOS:
            if a not in names or b not in names:
                continue
            ok_a = {r: t for r, t, ok in zip(reps[task][a], times[task][a], clean[task][a]) if ok}
            ok_b = {r: t for r, t, ok in zip(reps[task][b], times[task][b], clean[task][b]) if ok}
            paired = [ok_a[r] / ok_b[r] for r in sorted(ok_a.keys() & ok_b.keys())] or [float("nan")]
            q1, med, q3 = np.percentile(paired, [25, 50, 75])
            key = f"{a}/{b}"
            ratios[task][key] = {
                "ratio_of_medians": summary[task][a]["median"] / summary[task][b]["median"],
                "paired_median": float(med), "paired_q1": float(q1), "paired_q3": float(q3),
                "paired_n": len(ok_a.keys() & ok_b.keys()), "target": TARGETS.get((task, key)),
            }
    return summary, ratios


def markdown(meta: dict, summary: dict, ratios: dict, contended: dict) -> str:
    lines = [
        f"Command: `{meta['command']}`",
        "",
        f"{meta['date']} | commit {meta['commit']} | torch {meta['torch']} | transformers {meta['transformers']} | "
        f"{meta['threads']} threads | {meta['cpu']} | {meta['model']} | prefix {meta['prefix_length']} | forward: "
        f"batch {meta['batch']} x {meta['seq_len']} tokens, eval, no_grad | generate: {meta['new_tokens']} new tokens, "
        f"greedy, KV cache, batch {meta['gen_batch']} x {meta['prompt_len']}-token prompts (one left-padded) | "
        f"{meta['warmup']} warm-up + {meta['reps']} clean timed calls per variant and task, interleaved round-robin "
        f"over {meta['repetitions']} repetitions; calls with CPU utilisation < {meta['min_util']} are flagged as "
        "contended and left out (kept in the JSON)",
        "",
        "| task | variant | median s | IQR (s) | min s | clean / contended |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, per_variant in summary.items():
        for name, s in per_variant.items():
            lines.append(f"| {task} | {name} | {s['median']:.4f} | {s['q1']:.4f}-{s['q3']:.4f} | {s['min']:.4f} | "
                         f"{s['n']} / {contended[task][name]} |")
    lines += ["", "| task | ratio | of medians | paired median (IQR), n | target |", "|---|---|---:|---:|---|"]
    for task, per_key in ratios.items():
        for key, r in per_key.items():
            verdict = ""
            if r["target"] is not None:
                verdict = f"<= {r['target']} ({'met' if r['ratio_of_medians'] <= r['target'] else 'NOT met'})"
            lines.append(f"| {task} | {key} | {r['ratio_of_medians']:.3f} | {r['paired_median']:.3f} "
                         f"({r['paired_q1']:.3f}-{r['paired_q3']:.3f}), {r['paired_n']} | {verdict} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)}")
    inputs = make_inputs(args)
    models = {name: build(name, args.prefix_length, args.seed) for name in names}
    times = {task: {n: [] for n in names} for task in TASKS}
    cpu = {task: {n: [] for n in names} for task in TASKS}
    reps = {task: {n: [] for n in names} for task in TASKS}

    def clean_flags():
        return {task: {n: [c / (w * threads) >= args.min_util for w, c in zip(times[task][n], cpu[task][n])]
                       for n in names} for task in TASKS}

    for rep in range(args.warmup):
        for task in TASKS:
            for name in names:
                run_task(name, models[name], task, inputs, args.new_tokens)
    max_reps = args.max_reps or 3 * args.reps
    repetitions = 0
    while repetitions < max_reps:
        shift = repetitions % len(names)
        order = names[shift:] + names[:shift]  # rotate who goes first
        for task in TASKS:
            for name in order:
                wall, used = timed(lambda: run_task(name, models[name], task, inputs, args.new_tokens))
                times[task][name].append(wall)
                cpu[task][name].append(used)
                reps[task][name].append(repetitions)
        repetitions += 1
        flags = clean_flags()
        done = min(sum(flags[task][n]) for task in TASKS for n in names)
        print(f"repetition {repetitions}: {done}/{args.reps} clean calls for the least-served variant", flush=True)
        if done >= args.reps:
            break

    clean = clean_flags()
    contended = {task: {n: len(c) - sum(c) for n, c in per.items()} for task, per in clean.items()}
    if any(sum(c) < args.reps for per in clean.values() for c in per.values()):
        print(f"warning: fewer than {args.reps} clean calls after {max_reps} repetitions: the machine is busy")
    summary, ratios = summarise(times, reps, clean, names)
    meta = {
        **run_metadata(),
        **machine_metadata(),
        "model": "LlamaForCausalLM, random weights: 4 layers, hidden 256, 8 heads / 2 kv heads, sdpa",
        "model_config": MODEL,
        "prefix_length": args.prefix_length,
        "batch": args.batch, "seq_len": args.seq_len,
        "gen_batch": args.gen_batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "warmup": args.warmup, "reps": args.reps, "repetitions": repetitions, "min_util": args.min_util,
        "seed": args.seed, "quick": args.quick, "variants": names,
    }
    table = markdown(meta, summary, ratios, contended)
    print(table)
    if args.out_dir is not None:
        result = {"meta": meta, "summary": summary, "ratios": ratios,
                  "raw": {task: {n: {"wall": times[task][n], "cpu": cpu[task][n], "repetition": reps[task][n],
                                     "clean": clean[task][n]} for n in names} for task in TASKS}}
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "decoder_fast_path.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out_dir / "decoder_fast_path.md").write_text(table)
        print(f"wrote decoder_fast_path.json and decoder_fast_path.md in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
