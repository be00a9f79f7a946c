"""The training recipe: P-tuning v2's protocol (evaluate every epoch, keep the best dev) on transformers.Trainer.

What the run is built from is in :mod:`.build`; its folder (layout, refusal to clobber, resume) in :mod:`.run_dir`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoConfig, PrinterCallback, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

from ..adapter import PARAM_PREFIX
from ..files import atomic_replace_dir, atomic_write_json, atomic_write_text
from ..persistence import save_adapter
from ..tasks import sample_examples
from .build import (build_model, build_optimizer, build_task, exponential_scheduler, precision_flags,
                    resolve_max_length, resolved_schedule, resolved_settings)
from .callbacks import CheckpointSealer, EpochRecorder, NonFiniteLossError, NonFiniteLossGuard, sealed_checkpoints
from .completion_loss import logits_preprocessor, trainer_class
from .config import WHOLE_MODEL_METHODS, TrainConfig, TrainConfigError
from .display import VERBOSITIES, RunDisplay, library_output
from .generation import GenerationScorer, write_generation_settings
from .run_dir import RUN_FILES, RunExistsError, is_main_process, prepare_run_dir, restore_for_resume, run_lock
from .trainer import SelectiveEvalTrainer

__all__ = ["RunExistsError", "RunResult", "resolve_max_length", "train"]


@dataclass
class RunResult:
    """A finished run: its folder and what final_metrics.json holds."""

    run_dir: Path
    final: dict[str, Any]

    def summary(self) -> str:
        """The one-line report the CLI prints: best dev (and test), trainable parameters, time, folder."""
        f = self.final
        main = f["main_metric"]
        parts = [f"{f['task']} {f['method']}: best dev {main} {f['dev'][main]:.4f} (epoch {f['best_epoch']})"]
        if f.get("test"):
            parts.append(f"test {main} {f['test'][main]:.4f}")
        parts.append(f"trainable params {f['trainable_parameters']:,} "
                     f"({100 * f['trainable_parameters'] / f['total_parameters']:.2f}%)")
        parts.append(f"{f['train_seconds']:.0f}s")
        return " | ".join(parts) + f" | {self.run_dir}"


def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          extra_callbacks: list | None = None, verbosity: str = "normal") -> RunResult:
    """Train ``cfg.method`` on ``cfg.task`` and write the run directory; returns the final metrics.

    ``verbosity``: ``normal`` shows a live progress bar and a line per epoch, ``quiet`` nothing but warnings and
    errors, ``verbose`` transformers' own bars, log dicts and load reports (see :mod:`.display`).
    """
    if verbosity not in VERBOSITIES:
        raise TrainConfigError(f"verbosity: expected one of {', '.join(VERBOSITIES)}, got {verbosity!r}")
    with library_output(verbosity), run_lock(cfg.run_dir()):
        return _train(cfg, overwrite, resume, extra_callbacks, verbosity)


def _train(cfg: TrainConfig, overwrite: bool, resume: bool, extra_callbacks: list | None,
           verbosity: str) -> RunResult:
    started = time.time()
    note = print if verbosity != "quiet" else (lambda *args, **kwargs: None)
    cfg, run = prepare_run_dir(cfg, overwrite, resume)
    task = build_task(cfg)
    cfg = resolved_settings(cfg, task)
    data_dir = cfg.data_dir
    labels = task.labels_for(data_dir)
    model_path = cfg.model_path()
    set_seed(cfg.seed)
    model_type = AutoConfig.from_pretrained(model_path).model_type
    tokenizer = task.load_tokenizer(model_path, model_type)

    splits = {"train": task.load("train", data_dir), "dev": task.load(task.eval_split, data_dir)}
    if task.test_split is not None and task.has_split(task.test_split, data_dir):
        splits["test"] = task.load(task.test_split, data_dir)
    train_full = len(splits["train"])
    splits["train"] = sample_examples(splits["train"], cfg.max_train_samples, cfg.data_seed)
    if len(splits["train"]) < train_full:
        note(f"note: training on {len(splits['train'])} of {train_full} train examples, drawn with data_seed "
              f"{cfg.data_seed}")
    for name in ("dev", "test"):  # the first N, so that runs with any seed are scored on the same examples
        if name in splits and cfg.max_eval_samples:
            splits[name] = splits[name][: cfg.max_eval_samples]
    max_length = resolve_max_length(cfg, task, tokenizer)
    encoded = {name: task.encode(examples, tokenizer, max_length) for name, examples in splits.items()}
    truncated = {name: e.num_truncated for name, e in encoded.items()}
    for name, count in truncated.items():
        if count:
            note(f"note: {count} of {encoded[name].num_examples} {name} examples were longer than "
                  f"{max_length} tokens and were truncated")

    set_seed(cfg.seed)
    model = build_model(cfg, task, labels, tokenizer, verbosity=verbosity)
    if is_main_process():
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_json(run / "labels.json", labels)
        tokenizer.save_pretrained(run / "tokenizer")
        if task.kind == "generation":
            write_generation_settings(run, task, tokenizer, splits["train"] + splits["dev"])

    checkpoints = run / "checkpoints"

    schedule = resolved_schedule(cfg, task)
    optimizer = build_optimizer(model, cfg)
    scheduler = exponential_scheduler(optimizer, cfg, len(encoded["train"])) if schedule == "exponential" else None
    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.resolved_learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=0,
        lr_scheduler_type="constant" if schedule == "constant" else "linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=None,  # CheckpointSealer prunes, after sealing the new checkpoint
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        report_to="none",
        seed=cfg.seed,
        use_cpu=not use_cuda,
        ddp_backend="gloo" if not use_cuda and int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        ddp_find_unused_parameters=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        disable_tqdm=verbosity != "verbose",  # the run's own display (or none) instead
        **precision_flags(cfg.precision),
    )
    # The main process restores the run's files to its last checkpoint before any other rank reads them (the
    # TrainingArguments above set up the process group this waits on).
    with args.main_process_first(local=False, desc="restoring the run to its last checkpoint"):
        resume_from, history = restore_for_resume(run) if resume else (None, [])
    eval_sets = {name: encoded[name].dataset_by_length for name in ("dev", "test") if name in encoded}
    main_key = f"dev_{task.main_metric}"
    # Generation tasks: exact match needs generating, which the Trainer's evaluation (the loss) does not do.
    scorer = GenerationScorer(task, tokenizer, {name: splits[name] for name in eval_sets}, max_length,
                              cfg.eval_batch_size, eval_rows=eval_sets) if task.kind == "generation" else None

    def save_best() -> None:
        if cfg.method in WHOLE_MODEL_METHODS:
            atomic_replace_dir(run / "model", lambda tmp: model.save_pretrained(tmp))
        else:
            atomic_replace_dir(run / "adapter", lambda tmp: save_adapter(model, tmp))

    display = RunDisplay(main_key, cfg.epochs) if verbosity == "normal" else None
    recorder = EpochRecorder(run, list(eval_sets), main_key, save_best, history,
                             on_record=display.on_record if display is not None else None, extra_metrics=scorer,
                             only_when_improved=() if cfg.test_every_epoch else ("test",), started=started)
    callbacks = [recorder, NonFiniteLossGuard(), CheckpointSealer(run, RUN_FILES)]
    if display is not None:
        callbacks.append(display)
    if is_main_process():
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run / "tb"))))
    trainer = trainer_class(task, SelectiveEvalTrainer)(
        wants=recorder.wants,
        on_skip=recorder.skip,
        model=model,
        args=args,
        train_dataset=encoded["train"].dataset,
        eval_dataset=eval_sets,
        data_collator=task.collator(tokenizer),
        compute_metrics=scorer.compute_metrics if scorer is not None else task.compute_metrics,
        preprocess_logits_for_metrics=logits_preprocessor(task),
        optimizers=(optimizer, scheduler),
        callbacks=callbacks + list(extra_callbacks or []),
    )
    if verbosity != "verbose":
        trainer.remove_callback(PrinterCallback)  # the raw log dicts; metrics.jsonl and the display say it better
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLossError as err:
        sealed = sealed_checkpoints(checkpoints)
        kept = f"the last good checkpoint is {sealed[-1]}" if sealed else "no checkpoint was complete yet"
        best = f"; the best adapter so far (epoch {recorder.best['epoch']}) is in {run}" if recorder.best else ""
        raise NonFiniteLossError(f"{err}: training stopped; {kept}{best}. Start again with a lower "
                                 "--learning-rate and --overwrite (or another --output-dir)") from None
    finally:
        if display is not None:
            display.close()

    best = recorder.best
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(PARAM_PREFIX))
    final = {
        "task": cfg.task, "method": cfg.method, "model": cfg.model, "seed": cfg.seed, "epochs": cfg.epochs,
        "data_seed": cfg.data_seed, "train_examples": len(splits["train"]), "train_examples_full": train_full,
        "main_metric": task.main_metric, "best_epoch": best["epoch"] if best else None,
        "dev": _strip(best, "dev_") if best else {}, "test": _strip(best, "test_") if best else {},
        "trainable_parameters": n_trainable, "total_parameters": n_total,
        # Across sittings (see EpochRecorder); "train_seconds_partial": resumed from epochs an older adaprefix
        # recorded without their times, so only the sittings since count.
        "train_seconds": recorder.elapsed_seconds(), "sitting_seconds": time.time() - started,
        **({} if recorder.clock_complete else {"train_seconds_partial": True}),
        "truncated": truncated, "max_length": max_length, "lr_schedule": schedule,
        "resumed": resume,
    }
    if is_main_process():
        atomic_write_json(run / "final_metrics.json", final)
    return RunResult(run, final)


def _strip(record: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)}
