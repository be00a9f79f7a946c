"""Sequence (or sequence-pair) classification: one label per input, head on the first token."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from ..base import EncodedSplit, Example, Task
from ..errors import DataError
from ..metrics import accuracy, logits_of, macro_f1
from .encoding import label_of, resolve_length, tokenize_texts


class SequenceClassificationTask(Task):
    """Single text or text-pair classification; head on the first token."""

    kind = "sequence-classification"

    @abstractmethod
    def format(self, example: Example) -> tuple[str, str | None]:
        """The model input of one example: ``(text, text_pair)``; ``text_pair`` None for one text."""

    def encode(self, examples: Sequence[Example], tokenizer: Any, max_length: int | None = None) -> EncodedSplit:
        max_length = resolve_length(tokenizer, max_length)
        formatted = [self.format(ex) for ex in examples]
        texts = [a for a, _ in formatted]
        has_pair = [b is not None for _, b in formatted]
        if any(has_pair) and not all(has_pair):
            bad = examples[has_pair.index(False)]
            raise DataError("some examples have a second text and others not", path=bad.get("source"))
        pairs = [b for _, b in formatted] if any(has_pair) else None
        feats, flags = tokenize_texts(tokenizer, texts, pairs, max_length)
        for f, ex in zip(feats, examples):
            f["labels"] = label_of(ex)
        return EncodedSplit(feats, flags, has_labels=any(ex.get("label") is not None for ex in examples))

    def collator(self, tokenizer: Any) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, eval_pred: Any) -> dict[str, float]:
        logits = logits_of(eval_pred.predictions)
        labels = np.asarray(eval_pred.label_ids)
        preds = logits.argmax(-1)
        out = {"accuracy": accuracy(preds, labels)}
        if "macro_f1" in self.metric_names:
            out["macro_f1"] = macro_f1(preds, labels)
        return out
