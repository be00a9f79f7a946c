"""Generation in a run: exact match from greedy completions at every evaluation, beside the Trainer's loss, and the
completions that `adaprefix predict` and `adaprefix eval` produce for a generation task.

The Trainer's evaluation gives the loss (``completion_loss``, ``perplexity``); :class:`GenerationScorer` adds what
only generating can tell (``exact_match``, or a text-to-text task's ``accuracy``). :class:`~.callbacks.EpochRecorder`
asks it for each eval set and writes both into the one epoch record, so the best epoch is chosen on the task's main
metric as for every other task.

The loss pass already runs the model on every prompt followed by its reference completion, so it also tells which
prompts greedy decoding would complete with the reference (the argmax is the reference token at every step, EOS
included: :func:`~.completion_loss.greedy_agrees`). Given the Trainer's eval rows and its ``compute_metrics``, the
scorer takes those completions as they are and generates only for the other prompts: the same texts, without
generating what the loss pass has already checked. Only a float32 evaluation vouches (the margin,
:data:`~.completion_loss.GREEDY_MARGIN`, is sized to float32 rounding); under mixed precision every prompt is
generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..files import atomic_write_json
from ..tasks.answers import unlabelled
from ..tasks.base import Example
from ..tasks.kinds.generation import GenerationTask, generate_completions
from ..tasks.metrics import IGNORE_INDEX, logits_of
from .completion_loss import row_fingerprints

#: In a run folder: how many tokens `adaprefix predict` generates (the longest train/dev completion + margin).
GENERATION_FILE = "generation.json"


class GenerationScorer:
    """Greedy generation over each eval set's prompts, scored by the task (:meth:`GenerationTask.score`).

    The prompts are tokenized once; each set generates up to its own longest reference completion, its EOS and
    a margin (:meth:`GenerationTask.max_new_tokens`), in batches of ``batch_size`` left-padded prompts.

    ``eval_rows``: each set's encoded rows (``input_ids``, ``labels``) in the order the Trainer evaluates them. With
    them, pass :meth:`compute_metrics` to the Trainer: each evaluation's loss pass then vouches for the prompts whose
    greedy completion is their reference, and the next call for that set generates only the others. The loss pass's
    rows are matched to a set by their fingerprints, so a pass that is not over that set's rows in that order vouches
    for nothing (all its prompts are generated).
    """

    def __init__(self, task: GenerationTask, tokenizer: Any, eval_sets: dict[str, Sequence[Example]],
                 max_length: int, batch_size: int, eval_rows: Mapping[str, Iterable[Mapping[str, Any]]] | None = None):
        self.task, self.tokenizer, self.batch_size = task, tokenizer, batch_size
        self.examples = dict(eval_sets)
        self.max_new_tokens = {name: task.max_new_tokens(ex, tokenizer) for name, ex in self.examples.items()}
        self.prompts = {name: task.prompt_ids(ex, tokenizer, max_length, self.max_new_tokens[name])
                        for name, ex in self.examples.items()}
        unknown = sorted(set(eval_rows or {}) - set(self.examples))
        if unknown:
            raise ValueError(f"eval_rows names {unknown}, which are not eval sets here ({sorted(self.examples)})")
        self.rows = {name: [(list(row["input_ids"]), list(row["labels"])) for row in rows]
                     for name, rows in (eval_rows or {}).items()}
        self.fingerprints = {name: _fingerprints([ids for ids, _ in rows]) for name, rows in self.rows.items()}
        self._vouched: dict[str, dict[tuple[int, ...], str]] = {}
        #: Of the last call, how many prompts the loss pass vouched for and how many were generated.
        self.last_counts = {"vouched": 0, "generated": 0}

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        """The task's own metrics of the loss pass; and the completions that pass vouched for, kept for the next
        call on the set whose rows it went over."""
        metrics = self.task.compute_metrics(eval_pred)
        predictions = logits_of(eval_pred.predictions)
        if predictions.ndim == 2 and predictions.shape[1] >= 4:  # (NLL, count, greedy agrees, row fingerprint)
            for name, fingerprints in self.fingerprints.items():
                if np.array_equal(predictions[:, 3], fingerprints):  # this set's rows, in this order
                    self._vouched[name] = self._completions(name, self.rows[name], predictions[:, 2] > 0.5)
        return metrics

    def _completions(self, name: str, rows: list[tuple[list[int], list[int]]],
                     agrees: np.ndarray) -> dict[tuple[int, ...], str]:
        """Prompt -> the text greedy decoding produces, for the rows whose reference greedy decoding reproduces up
        to its first EOS within the set's token budget."""
        eos = self.tokenizer.eos_token_id
        vouched = {}
        for (ids, labels), agree in zip(rows, agrees):
            start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
            if not agree or start is None:
                continue
            target = labels[start:len(ids)]
            if eos not in target or target.index(eos) + 1 > self.max_new_tokens[name]:
                continue  # greedy decoding would run on past the reference (cut short, or no EOS in budget)
            vouched[tuple(ids[:start])] = self.tokenizer.decode(target[:target.index(eos)], skip_special_tokens=True)
        return vouched

    def __call__(self, name: str, model: Any) -> dict[str, float]:
        """The generation metrics of eval set ``name`` with ``model`` as it is now."""
        return self.task.score(self.examples[name], self.completions(name, model))

    def completions(self, name: str, model: Any) -> list[str]:
        """Greedy completions of eval set ``name``'s prompts, in order: those the last loss pass over the set
        vouched for, and generated ones for the rest."""
        vouched = self._vouched.pop(name, {})  # one evaluation's word holds for that evaluation only
        prompts = self.prompts[name]
        texts: list[str | None] = [vouched.get(tuple(p)) for p in prompts]
        todo = [i for i, text in enumerate(texts) if text is None]
        if todo:
            generated = generate_completions(model, self.tokenizer, [prompts[i] for i in todo],
                                             self.max_new_tokens[name], self.batch_size)
            for i, text in zip(todo, generated):
                texts[i] = text
        self.last_counts = {"vouched": len(prompts) - len(todo), "generated": len(todo)}
        return texts


def _fingerprints(rows: list[list[int]]) -> np.ndarray:
    """:func:`~.completion_loss.row_fingerprints` of unpadded rows, as the loss pass's float32 column holds them."""
    width = max((len(row) for row in rows), default=0)
    padded = torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long).reshape(len(rows), width)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
    return row_fingerprints(padded, mask.reshape(padded.shape)).numpy().astype(np.float32)


def write_generation_settings(run: Path, task: GenerationTask, tokenizer: Any,
                              examples: Sequence[Example]) -> dict[str, int]:
    """Record in the run folder how many tokens prediction generates: enough for the longest completion of
    ``examples`` (train and dev), its EOS and the margin."""
    settings = {"max_new_tokens": task.max_new_tokens(examples, tokenizer)}
    atomic_write_json(run / GENERATION_FILE, settings)
    return settings


def read_generation_settings(run: Path) -> dict[str, int]:
    """What :func:`write_generation_settings` recorded; {} for a run that has none."""
    import json

    path = Path(run) / GENERATION_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def predict_completions(task: GenerationTask, tokenizer: Any, model: Any, inputs: Sequence[Example],
                        max_length: int, max_new_tokens: int, batch_size: int = 32) -> list[dict[str, Any]]:
    """Greedy completions of ``inputs`` (examples in the task's own format), each as the task describes it
    (``prediction``, and a text-to-text task's ``label``)."""
    examples = unlabelled(task, inputs)
    prompts = task.prompt_ids(examples, tokenizer, max_length, max_new_tokens)
    texts = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    return [task.describe(ex, text) for ex, text in zip(examples, texts)]
