"""From a model's logits to answers in the form ``adaprefix predict --output`` writes; shared by ``predict`` and
``serve`` so that both answer an input the same way."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import Example, Task


def unlabelled(task: Task, examples: Sequence[Example]) -> list[Example]:
    """Input examples ready for ``task.encode`` without gold labels. A tagging example gets placeholder ``O`` tags so
    that its encoding marks the sub-tokens that start a word (the ones whose tag is read off)."""
    if task.kind == "token-classification":
        return [dict(ex, tags=["O"] * len(ex["tokens"])) for ex in examples]
    if task.kind == "generation":  # a custom task's prompt records carry no label field
        return [dict(ex, label=None) if "label" in ex else dict(ex) for ex in examples]
    return [dict(ex, label=None) for ex in examples]


def word_starts(encoded_labels: Sequence[int]) -> list[bool]:
    """A tagging row's sub-tokens that carry a word's tag (the others are labelled -100)."""
    return [label != -100 for label in encoded_labels]


def answer(task: Task, labels: Sequence[str], logits: torch.Tensor,
           starts: Sequence[bool] | None = None) -> dict[str, Any]:
    """One input's answer from its logits: ``{"tags": [...]}`` (one per word) for tagging, where ``logits`` is
    (sub-tokens, classes) and ``starts`` marks each word's first sub-token; otherwise ``{"label", "scores"}`` with
    the class probabilities, where ``logits`` is (classes,). A label past ``labels`` (a multiple-choice answer index)
    is named by its index."""
    if task.kind == "token-classification":
        ids = logits.argmax(-1).tolist()
        return {"tags": [labels[j] for j, start in zip(ids, starts) if start]}
    probs = logits.float().softmax(-1)
    j = int(probs.argmax())
    return {"label": labels[j] if j < len(labels) else str(j), "scores": [round(float(p), 6) for p in probs]}
