"""Use a finished (or interrupted) run: reload its model, evaluate a split, predict new inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments

from ..errors import AdaprefixError
from ..inject import load_adapter
from ..tasks import DataError, Task
from ..tasks.answers import answer, unlabelled, word_starts
from .config import WHOLE_MODEL_METHODS, TrainConfig, load_train_config
from ..files import atomic_write_json
from .build import build_model, build_task, resolve_max_length
from .display import library_output, load_pretrained
from .completion_loss import logits_preprocessor, trainer_class
from .generation import GenerationScorer, predict_completions, read_generation_settings


class RunNotFoundError(AdaprefixError, FileNotFoundError):
    """The folder is not a run directory, or holds no saved model yet."""


@dataclass
class LoadedRun:
    """A run reloaded for use: its settings, task, tokenizer, best model (in eval mode) and label names; for a
    generation task, also what it recorded about generating (``max_new_tokens``)."""

    config: TrainConfig
    task: Task
    tokenizer: Any
    model: torch.nn.Module
    labels: list[str]
    generation: dict[str, int] = field(default_factory=dict)


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run's best-dev model (backbone + adapter, or the fine-tuned model), tokenizer and task."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise RunNotFoundError(f"{run}: not a run directory (no config.yaml); give the --output-dir of a train run")
    cfg = load_train_config(run / "config.yaml")  # today's grouped format, or the flat one of older runs
    task = build_task(cfg)
    weights = run / ("model" if cfg.method in WHOLE_MODEL_METHODS else "adapter")
    if not weights.is_dir():
        raise RunNotFoundError(f"{weights}: missing; the run has not finished an epoch yet")
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    with library_output("normal"):  # no bars; a load report only when something beyond the head is off
        if cfg.method in WHOLE_MODEL_METHODS:
            model = load_pretrained(task.auto_model_class(), weights)
            labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        else:
            saved_labels = run / "labels.json"  # the label order the head was trained with
            labels = json.loads(saved_labels.read_text()) if saved_labels.is_file() else task.labels_for(cfg.data_dir)
            model = load_adapter(build_model(cfg, task, labels, tokenizer, attach_adapter=False), weights)
    return LoadedRun(cfg, task, tokenizer, model.eval(), labels, read_generation_settings(run))


def evaluate_run(run_dir: str | Path, split: str = "dev", data_dir: str | None = None) -> dict[str, float]:
    """Metrics of the run's best model on ``split``; also written to ``<run>/eval_<split>.json``."""
    loaded = load_run(run_dir)
    cfg, task = loaded.config, loaded.task
    examples = task.load(split, data_dir or cfg.data_dir)
    encoded = task.encode(examples, loaded.tokenizer, resolve_max_length(cfg, task, loaded.tokenizer))
    if not encoded.has_labels:
        raise DataError(f"the {split} split of {task.name} has no labels (SuperGLUE test sets are unlabelled); "
                         "evaluate on dev, or use `adaprefix predict` for test inputs")
    args = TrainingArguments(output_dir=str(Path(run_dir) / "eval"), per_device_eval_batch_size=cfg.eval_batch_size,
                             report_to="none", use_cpu=not torch.cuda.is_available(), label_names=["labels"])
    dataset = encoded.dataset_by_length
    max_length = resolve_max_length(cfg, task, loaded.tokenizer)
    # Generation tasks: exact match (or accuracy) from greedy generation, as in training
    scorer = GenerationScorer(task, loaded.tokenizer, {split: examples}, max_length, cfg.eval_batch_size,
                              eval_rows={split: dataset}) if task.kind == "generation" else None
    compute_metrics = scorer.compute_metrics if scorer is not None else task.compute_metrics
    trainer = trainer_class(task, Trainer)(model=loaded.model, args=args, data_collator=task.collator(loaded.tokenizer),
                                           compute_metrics=compute_metrics,
                                           preprocess_logits_for_metrics=logits_preprocessor(task))
    metrics = trainer.evaluate(dataset, metric_key_prefix=split)
    if scorer is not None:
        metrics.update({f"{split}_{k}": v for k, v in scorer(split, loaded.model).items()})
    metrics[f"{split}_truncated"] = encoded.num_truncated
    atomic_write_json(Path(run_dir) / f"eval_{split}.json", metrics)
    return metrics


@torch.no_grad()
def predict(loaded: LoadedRun, inputs: Sequence[dict[str, Any]], batch_size: int = 32,
            max_new_tokens: int | None = None) -> list[dict[str, Any]]:
    """Predict raw inputs given as examples in the task's own format (what ``task.load`` returns, labels optional):
    e.g. {"premise", "hypothesis"} for RTE, {"text", "text_pair"} for custom classification, {"tokens": [...]} for
    tagging, {"prompt"} for custom generation. Returns one dict per input with the label and class probabilities,
    the tags, or the greedy completion (``prediction``; text-to-text tasks also the ``label`` it names).

    Generation tasks generate up to ``max_new_tokens`` (default: what the run recorded, the longest train/dev
    completion + EOS + a margin).
    """
    task, tokenizer, model = loaded.task, loaded.tokenizer, loaded.model
    if task.kind == "generation":
        limit = max_new_tokens or loaded.generation.get("max_new_tokens") or task.max_new_tokens([], tokenizer)
        return predict_completions(task, tokenizer, model, inputs, resolve_max_length(loaded.config, task, tokenizer),
                                   limit, batch_size)
    encoded = task.encode(unlabelled(task, inputs), tokenizer, resolve_max_length(loaded.config, task, tokenizer))
    collate = task.collator(tokenizer)
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(encoded.rows), batch_size):
        rows = encoded.rows[start:start + batch_size]
        starts = [word_starts(row["labels"]) if task.kind == "token-classification" else None for row in rows]
        batch = collate(rows)
        batch.pop("labels", None)
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
        results += [answer(task, loaded.labels, logits[i], starts[i]) for i in range(len(rows))]
    return results


def prune_run(run_dir: str | Path, output: str | Path, threshold: float, split: str = "dev",
              max_examples: int = 512):
    """A copy of the run in ``output`` whose adapter keeps only the pseudo tokens whose gate exceeded ``threshold``
    on ``split`` (:func:`adaprefix.pruning.prune_adapter`); ``adaprefix eval`` and ``predict`` take it as any run.
    Returns the :class:`~adaprefix.pruning.PruneResult`."""
    import dataclasses
    import shutil

    import yaml

    from ..files import atomic_write_text
    from ..pruning import prune_adapter

    run, target = Path(run_dir), Path(output)
    if target.resolve() == run.resolve():
        raise RunNotFoundError(f"{target}: the pruned run must go to another folder than {run}")
    if target.exists() and any(target.iterdir()):
        raise RunNotFoundError(f"{target}: not empty; give a new folder for the pruned run")
    loaded = load_run(run)
    cfg, task = loaded.config, loaded.task
    if cfg.method in WHOLE_MODEL_METHODS:
        raise RunNotFoundError(f"{run}: a run of method {cfg.method} has no adapter to prune")
    examples = task.load(split, cfg.data_dir)[:max_examples]
    rows = list(task.encode(examples, loaded.tokenizer, resolve_max_length(cfg, task, loaded.tokenizer)).dataset)
    collate = task.collator(loaded.tokenizer)
    batches = (collate(rows[i:i + cfg.eval_batch_size]) for i in range(0, len(rows), cfg.eval_batch_size))
    result = prune_adapter(loaded.model, batches, threshold)
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer", "labels.json", "generation.json"):
        source = run / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)
    loaded.model.save_adapter(target / "adapter")
    pruned = dataclasses.replace(cfg, adapter=loaded.model.adapter_config, output_dir=str(target))
    atomic_write_text(target / "config.yaml", yaml.safe_dump(pruned.to_dict(), sort_keys=False))
    atomic_write_json(target / "pruned.json", {"source": str(run), "threshold": threshold, "split": split,
                                               "lengths": result.lengths, "kept": result.kept,
                                               "max_gates": result.max_gates.nan_to_num(-1.0).tolist()})
    return result
