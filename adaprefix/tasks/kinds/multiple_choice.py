"""Multiple choice: one (text, text_pair) per candidate, a linear scorer per choice, the best one wins."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from ..base import EncodedSplit, Example, Task
from ..collators import MultipleChoiceCollator
from ..metrics import accuracy, logits_of
from .encoding import label_of, resolve_length, tokenize_texts


class MultipleChoiceTask(Task):
    """Pick one of ``num_choices`` (text, text_pair) candidates; a linear scorer per choice."""

    kind = "multiple-choice"
    num_choices: int = 2

    @abstractmethod
    def format(self, example: Example) -> list[tuple[str, str | None]]:
        """One ``(text, text_pair)`` per choice, in choice order."""

    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        max_length = resolve_length(tokenizer, max_length)
        per_ex = [self.format(ex) for ex in examples]
        flat = [p for choices in per_ex for p in choices]
        feats, flags = tokenize_texts(
            tokenizer, [a for a, _ in flat], [b if b is not None else "" for _, b in flat], max_length
        )
        rows, truncated, pos = [], [], 0
        for ex, choices in zip(examples, per_ex):
            chunk = feats[pos : pos + len(choices)]
            truncated.append(any(flags[pos : pos + len(choices)]))
            pos += len(choices)
            row = {k: [c[k] for c in chunk] for k in chunk[0]}
            row["labels"] = label_of(ex)
            rows.append(row)
        return EncodedSplit(rows, truncated, has_labels=any(ex.get("label") is not None for ex in examples))

    def collator(self, tokenizer: Any) -> Any:
        return MultipleChoiceCollator(tokenizer)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = logits_of(eval_pred.predictions)
        return {"accuracy": accuracy(logits.argmax(-1), np.asarray(eval_pred.label_ids))}
