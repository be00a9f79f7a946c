"""What a run is built from its settings: the task, the backbone with its adapter, the optimizer and the schedule."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch
from transformers import AutoConfig

from ..adapter import PARAM_PREFIX
from ..arch import HIDDEN_DROPOUT_NAMES, hidden_dropout_name
from ..inject import attach
from ..tasks import Task, custom_task, get_task
from ..text_init import init_prefix_from_text
from ..tasks.base import tokenizer_limit
from .config import TrainConfig, TrainConfigError
from .display import load_pretrained


def build_task(cfg: TrainConfig) -> Task:
    """The run's task: a registered one by name, or for ``custom`` the one the files call for (tasks.custom_task)."""
    if cfg.task != "custom":
        return get_task(cfg.task)
    data = cfg.custom
    return custom_task(data.train_file, data.dev_file, data.test_file, file_format=data.format,
                       text_column=data.text_column, text_pair_column=data.text_pair_column,
                       label_column=data.label_column, token_column=data.token_column, tag_column=data.tag_column,
                       tsv_quoting=data.tsv_quoting, prompt_column=data.prompt_column,
                       completion_column=data.completion_column, kind=data.kind)


def resolved_settings(cfg: TrainConfig, task: Task) -> TrainConfig:
    """``cfg`` with the choices a run makes for itself written in: the data seed, and a custom task's format and
    kind, so that config.yaml says exactly what was run and rebuilds the task without sniffing the files again."""
    changes: dict[str, Any] = {"data_seed": cfg.resolved_data_seed}
    if cfg.task == "custom":
        changes["custom"] = dataclasses.replace(cfg.custom, format=task.file_format, kind=task.data_kind)
    return dataclasses.replace(cfg, **changes)


def resolve_max_length(cfg: TrainConfig, task: Task, tokenizer) -> int:
    """The truncation length a run uses: its own setting, else the task's default, else the tokenizer's limit.

    With ``shift_positions`` the real tokens sit at positions l .. l+T-1, so T is capped at the position limit minus
    the prefix length (P-tuning v2 would index past BERT's position table there).
    """
    limit = tokenizer_limit(tokenizer)
    length = cfg.max_length or task.default_max_length or limit
    adapter = cfg.adapter
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


def build_model(cfg: TrainConfig, task: Task, labels: list[str], tokenizer, attach_adapter: bool = True,
                verbosity: str = "normal"):
    """The task's Auto model on the backbone, with the adapter attached unless the method is full fine-tuning.

    ``verbosity`` (see :mod:`.display`): below ``verbose``, the load report that only says the head is new is dropped.
    """
    kwargs = {}
    if task.kind not in ("multiple-choice", "generation"):  # a language-model head has no label set
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
    # A checkpoint with another task's head (e.g. 2 labels) gets a fresh head for this task.
    kwargs.update(dropout_overrides(cfg, AutoConfig.from_pretrained(cfg.model_path())))
    model = load_pretrained(task.auto_model_class(), cfg.model_path(), verbosity, ignore_mismatched_sizes=True,
                            **kwargs)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.method == "head":
        freeze_backbone(model, task)
    if cfg.adapter is not None and attach_adapter:
        attach(model, cfg.adapter)
        if cfg.adapter.prefix_init_text is not None:  # the prefix starts as this text's keys and values
            init_prefix_from_text(model, tokenizer, cfg.adapter.prefix_init_text)
    return model


def freeze_backbone(model: torch.nn.Module, task: Task) -> None:
    """Train the task head alone (method ``head``): every parameter of the backbone (``model.base_model``, its pooler
    included, as an adapter run leaves it) is frozen; what lies outside it is the head."""
    if task.kind == "generation":
        raise TrainConfigError(f"method: 'head' trains a task head on the frozen backbone, and {task.name} is a "
                               "generation task, whose only head is the language-model head (tied to the input "
                               "embeddings in most decoders); use an adapter method or ft")
    backbone = {id(p) for p in model.base_model.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in backbone)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainConfigError(f"method: 'head' found no head outside the backbone of {type(model).__name__}")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with separate groups: adapter (prefix, gates) and task head, each with its own learning rate."""
    lr = cfg.resolved_learning_rate
    head_lr = cfg.head_learning_rate if cfg.head_learning_rate is not None else lr
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_adapter = name.startswith(PARAM_PREFIX)
        group_lr = lr if (in_adapter or cfg.method == "ft") else head_lr  # head: the head's own rate, if given
        decay = cfg.weight_decay if (p.ndim >= 2 and "norm" not in name.lower()) else 0.0
        groups.setdefault((group_lr, decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()],
                             lr=lr)


def resolved_schedule(cfg: TrainConfig, task: Task) -> str:
    """``cfg.lr_schedule``, with ``auto`` read as P-tuning v2 does: exponential for tagging, linear otherwise."""
    if cfg.lr_schedule != "auto":
        return cfg.lr_schedule
    return "exponential" if task.kind == "token-classification" else "linear"


def exponential_scheduler(optimizer, cfg: TrainConfig, train_size: int):
    """A scheduler that multiplies the learning rate by ``exp_decay`` once per epoch of ``train_size`` examples."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    batches = math.ceil(math.ceil(train_size / world) / cfg.batch_size)
    updates_per_epoch = max(math.ceil(batches / cfg.gradient_accumulation_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cfg.exp_decay ** (step // updates_per_epoch))


def precision_flags(precision: str) -> dict[str, bool]:
    """TrainingArguments' bf16 / fp16 flags for a precision setting; auto: bf16, else fp16, on GPU, fp32 on CPU."""
    if precision == "auto":
        if not torch.cuda.is_available():
            return {}
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
