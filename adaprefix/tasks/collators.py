"""Collators that transformers does not ship."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class MultipleChoiceCollator:
    """Pad multiple-choice features into ``(batch, num_choices, seq_len)`` tensors.

    Each feature holds ``input_ids`` etc. as a list of ``num_choices`` token lists, plus an int
    ``labels`` (-100 when unlabelled). All choices of the batch are padded to one common length.
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        labels = [f["labels"] for f in features] if "labels" in features[0] else None
        keys = [k for k in features[0] if k != "labels"]
        batch_size = len(features)
        num_choices = len(features[0]["input_ids"])
        flat = [{k: f[k][c] for k in keys} for f in features for c in range(num_choices)]
        batch = self.tokenizer.pad(flat, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = {k: v.view(batch_size, num_choices, -1) for k, v in batch.items()}
        if labels is not None:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
