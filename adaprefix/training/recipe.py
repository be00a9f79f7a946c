"""The training recipe: P-tuning v2's protocol (evaluate every epoch, keep the best dev) on transformers.Trainer.

Run directory:
    config.yaml          resolved settings            metrics.jsonl     one record per epoch
    adapter/ | model/    best-dev adapter (ft: model)  final_metrics.json written last: the run is finished
    tokenizer/           tokenizer used                tb/               TensorBoard logs
    checkpoints/         latest sealed Trainer checkpoint, for --resume
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoConfig, AutoTokenizer, Trainer, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

from ..adapter import PARAM_PREFIX
from ..arch import HIDDEN_DROPOUT_NAMES, hidden_dropout_name
from ..inject import attach
from ..persistence import save_adapter
from ..tasks import Task, custom_task, get_task, sample_examples
from ..tasks.base import tokenizer_limit
from .callbacks import (CheckpointSealer, EpochRecorder, NonFiniteLossError, NonFiniteLossGuard, remove_unsealed,
                        restore_run_snapshot, sealed_checkpoints)
from .config import TrainConfig, TrainConfigError
from ..files import atomic_replace_dir, atomic_write_json, atomic_write_text, read_jsonl

BYTE_LEVEL_BPE = ("roberta", "gpt2", "qwen2", "deberta")  # need add_prefix_space=True for pre-split words
RUN_FILES = ("metrics.jsonl", "adapter", "model")  # run state that every sealed checkpoint carries a snapshot of


class RunExistsError(RuntimeError):
    """The output directory already holds a run; nothing is overwritten without --overwrite."""


@dataclass
class RunResult:
    run_dir: Path
    final: dict[str, Any]

    def summary(self) -> str:
        f = self.final
        main = f["main_metric"]
        parts = [f"{f['task']} {f['method']}: best dev {main} {f['dev'][main]:.4f} (epoch {f['best_epoch']})"]
        if f.get("test"):
            parts.append(f"test {main} {f['test'][main]:.4f}")
        parts.append(f"trainable params {f['trainable_parameters']:,} "
                     f"({100 * f['trainable_parameters'] / f['total_parameters']:.2f}%)")
        parts.append(f"{f['train_seconds']:.0f}s")
        return " | ".join(parts) + f" | {self.run_dir}"


def build_task(cfg: TrainConfig) -> Task:
    """The run's task: a registered one by name, or for ``custom`` the one the files call for (tasks.custom_task)."""
    if cfg.task != "custom":
        return get_task(cfg.task)
    return custom_task(cfg.train_file, cfg.dev_file, cfg.test_file, file_format=cfg.format,
                       text_column=cfg.text_column, text_pair_column=cfg.text_pair_column,
                       label_column=cfg.label_column, token_column=cfg.token_column, tag_column=cfg.tag_column,
                       tsv_quoting=cfg.tsv_quoting)


def resolved_settings(cfg: TrainConfig, task: Task) -> TrainConfig:
    """``cfg`` with the choices a run makes for itself written in: the data seed, and a custom task's format,
    so that config.yaml says exactly what was run and rebuilds the task without sniffing the files again."""
    changes: dict[str, Any] = {"data_seed": cfg.resolved_data_seed}
    if cfg.task == "custom":
        changes["format"] = task.file_format
    return dataclasses.replace(cfg, **changes)


def load_tokenizer(path: str, task: Task, model_type: str | None = None):
    kwargs = {}
    if task.kind == "token-classification" and model_type in BYTE_LEVEL_BPE:
        kwargs["add_prefix_space"] = True
    return AutoTokenizer.from_pretrained(path, **kwargs)


def resolve_max_length(cfg: TrainConfig, task: Task, tokenizer) -> int:
    """The truncation length a run uses: its own setting, else the task's default, else the tokenizer's limit.

    With ``shift_positions`` the real tokens sit at positions l .. l+T-1, so T is capped at the position limit minus
    the prefix length (P-tuning v2 would index past BERT's position table there).
    """
    limit = tokenizer_limit(tokenizer)
    length = cfg.max_length or task.default_max_length or limit
    adapter = cfg.adapter_config() if cfg.method != "ft" else None
    if adapter is not None and adapter.shift_positions:
        length = min(length, limit - adapter.prefix_length)
        if length < 1:
            raise TrainConfigError(f"prefix_length {adapter.prefix_length} with shift_positions leaves no room in "
                                   f"the tokenizer's {limit} positions; use a shorter prefix or "
                                   "--shift-positions false")
    return length


def dropout_overrides(cfg: TrainConfig, model_config) -> dict[str, float]:
    """``from_pretrained`` kwargs that set the backbone's hidden dropout, under the name its config uses."""
    if cfg.hidden_dropout is None:
        return {}
    name = hidden_dropout_name(model_config)
    if name is None:
        raise TrainConfigError(f"hidden_dropout: the {model_config.model_type} config has none of "
                               f"{', '.join(HIDDEN_DROPOUT_NAMES)}; leave hidden_dropout unset for this backbone")
    return {name: cfg.hidden_dropout}


def build_model(cfg: TrainConfig, task: Task, labels: list[str], tokenizer, attach_adapter: bool = True):
    """The task's Auto model on the backbone, with the adapter attached unless the method is full fine-tuning."""
    kwargs = {}
    if task.kind != "multiple-choice":
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
    # A checkpoint with another task's head (e.g. 2 labels) gets a fresh head for this task; transformers reports it.
    kwargs.update(dropout_overrides(cfg, AutoConfig.from_pretrained(cfg.model_path())))
    model = task.auto_model_class().from_pretrained(cfg.model_path(), ignore_mismatched_sizes=True, **kwargs)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.method != "ft" and attach_adapter:
        attach(model, cfg.adapter_config())
    return model


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with separate groups: adapter (prefix, gates) and task head, each with its own learning rate."""
    lr = cfg.resolved_learning_rate
    head_lr = cfg.head_learning_rate if cfg.head_learning_rate is not None else lr
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_adapter = name.startswith(PARAM_PREFIX)
        group_lr = lr if (in_adapter or cfg.method == "ft") else head_lr
        decay = cfg.weight_decay if (p.ndim >= 2 and "norm" not in name.lower()) else 0.0
        groups.setdefault((group_lr, decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()],
                             lr=lr)


def resolved_schedule(cfg: TrainConfig, task: Task) -> str:
    """``cfg.lr_schedule``, with ``auto`` read as P-tuning v2 does: exponential for tagging, linear otherwise."""
    if cfg.lr_schedule != "auto":
        return cfg.lr_schedule
    return "exponential" if task.kind == "token-classification" else "linear"


def _exponential_scheduler(optimizer, cfg: TrainConfig, train_size: int):
    world = int(os.environ.get("WORLD_SIZE", 1))
    batches = math.ceil(math.ceil(train_size / world) / cfg.batch_size)
    updates_per_epoch = max(math.ceil(batches / cfg.gradient_accumulation_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cfg.exp_decay ** (step // updates_per_epoch))


def _precision_flags(precision: str) -> dict[str, bool]:
    if precision == "auto":
        if not torch.cuda.is_available():
            return {}
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def prepare_run_dir(cfg: TrainConfig, overwrite: bool, resume: bool) -> tuple[TrainConfig, Path]:
    """Refuse to clobber a run; on resume, continue with the settings the run was started with."""
    run = cfg.run_dir()
    finished = (run / "final_metrics.json").is_file()
    if not _is_main_process():  # rank 0 decides; the others would race its rmtree and its first writes
        return (TrainConfig(**yaml.safe_load((run / "config.yaml").read_text())) if resume else cfg), run
    if resume:
        saved = run / "config.yaml"
        if not saved.is_file():
            raise RunExistsError(f"{run}: nothing to resume (no config.yaml); start it without --resume")
        if finished:
            raise RunExistsError(f"{run}: this run already finished (final_metrics.json); nothing to resume")
        print(f"resuming {run} with the settings in {saved} (settings given now are not applied)")
        return TrainConfig(**yaml.safe_load(saved.read_text())), run
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            state = "a finished run (final_metrics.json)" if finished else "an unfinished run"
            raise RunExistsError(f"{run}: already holds {state}; pass --overwrite to replace it"
                                 + ("" if finished else ", or --resume to continue it")
                                 + ", or choose another --output-dir")
        shutil.rmtree(run)
    return cfg, run


def train(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
          extra_callbacks: list | None = None) -> RunResult:
    """Train ``cfg.method`` on ``cfg.task`` and write the run directory; returns the final metrics."""
    started = time.time()
    cfg, run = prepare_run_dir(cfg, overwrite, resume)
    task = build_task(cfg)
    cfg = resolved_settings(cfg, task)
    data_dir = cfg.data_dir
    labels = task.labels_for(data_dir)
    model_path = cfg.model_path()
    set_seed(cfg.seed)
    model_type = AutoConfig.from_pretrained(model_path).model_type
    tokenizer = load_tokenizer(model_path, task, model_type)

    splits = {"train": task.load("train", data_dir), "dev": task.load(task.eval_split, data_dir)}
    if task.test_split is not None and task.has_split(task.test_split, data_dir):
        splits["test"] = task.load(task.test_split, data_dir)
    train_full = len(splits["train"])
    splits["train"] = sample_examples(splits["train"], cfg.max_train_samples, cfg.data_seed)
    if len(splits["train"]) < train_full:
        print(f"note: training on {len(splits['train'])} of {train_full} train examples, drawn with data_seed "
              f"{cfg.data_seed}")
    for name in ("dev", "test"):  # the first N, so that runs with any seed are scored on the same examples
        if name in splits and cfg.max_eval_samples:
            splits[name] = splits[name][: cfg.max_eval_samples]
    max_length = resolve_max_length(cfg, task, tokenizer)
    encoded = {name: task.encode(examples, tokenizer, max_length) for name, examples in splits.items()}
    truncated = {name: e.num_truncated for name, e in encoded.items()}
    for name, count in truncated.items():
        if count:
            print(f"note: {count} of {encoded[name].num_examples} {name} examples were longer than "
                  f"{max_length} tokens and were truncated")

    set_seed(cfg.seed)
    model = build_model(cfg, task, labels, tokenizer)
    if _is_main_process():
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_json(run / "labels.json", labels)
        tokenizer.save_pretrained(run / "tokenizer")

    checkpoints = run / "checkpoints"
    resume_from = None
    history: list[dict] = []
    if resume:
        sealed = sealed_checkpoints(checkpoints)
        resume_from = str(sealed[-1]) if sealed else None
        if _is_main_process():
            remove_unsealed(checkpoints)
            if sealed:  # metrics and best adapter exactly as they were when that checkpoint was sealed
                restore_run_snapshot(sealed[-1], run, RUN_FILES)
            else:  # nothing sealed yet: start over
                for name in RUN_FILES:
                    _remove(run / name)
        history = read_jsonl(run / "metrics.jsonl")

    schedule = resolved_schedule(cfg, task)
    optimizer = build_optimizer(model, cfg)
    scheduler = _exponential_scheduler(optimizer, cfg, len(encoded["train"])) if schedule == "exponential" else None
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
        **_precision_flags(cfg.precision),
    )
    eval_sets = {name: encoded[name].dataset for name in ("dev", "test") if name in encoded}
    main_key = f"dev_{task.main_metric}"

    def save_best() -> None:
        if cfg.method == "ft":
            atomic_replace_dir(run / "model", lambda tmp: model.save_pretrained(tmp))
        else:
            atomic_replace_dir(run / "adapter", lambda tmp: save_adapter(model, tmp))

    recorder = EpochRecorder(run, list(eval_sets), main_key, save_best, history)
    callbacks = [recorder, NonFiniteLossGuard(), CheckpointSealer(run, RUN_FILES)]
    if _is_main_process():
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run / "tb"))))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"].dataset,
        eval_dataset=eval_sets,
        data_collator=task.collator(tokenizer),
        compute_metrics=task.compute_metrics,
        optimizers=(optimizer, scheduler),
        callbacks=callbacks + list(extra_callbacks or []),
    )
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLossError as err:
        sealed = sealed_checkpoints(checkpoints)
        kept = f"the last good checkpoint is {sealed[-1]}" if sealed else "no checkpoint was complete yet"
        best = f"; the best adapter so far (epoch {recorder.best['epoch']}) is in {run}" if recorder.best else ""
        raise NonFiniteLossError(f"{err}: training stopped; {kept}{best}. Start again with a lower "
                                 "--learning-rate and --overwrite (or another --output-dir)") from None

    best = recorder.best
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(PARAM_PREFIX))
    final = {
        "task": cfg.task, "method": cfg.method, "model": cfg.model, "seed": cfg.seed, "epochs": cfg.epochs,
        "data_seed": cfg.data_seed, "train_examples": len(splits["train"]), "train_examples_full": train_full,
        "main_metric": task.main_metric, "best_epoch": best["epoch"] if best else None,
        "dev": _strip(best, "dev_") if best else {}, "test": _strip(best, "test_") if best else {},
        "trainable_parameters": n_trainable, "total_parameters": n_total,
        "train_seconds": time.time() - started, "truncated": truncated, "max_length": max_length,
        "lr_schedule": schedule,
        "resumed": resume,
    }
    if _is_main_process():
        atomic_write_json(run / "final_metrics.json", final)
    return RunResult(run, final)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _strip(record: dict, prefix: str) -> dict:
    return {k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)}
