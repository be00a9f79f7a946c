"""Encoding helpers shared by the kinds of task: length, labels, text tokenization with counted truncation."""

from __future__ import annotations

from typing import Any

from ..base import Example, tokenizer_limit
from ..metrics import IGNORE_INDEX


def resolve_length(tokenizer: Any, max_length: int | None) -> int:
    """``max_length``, or the tokenizer's own limit when it is None."""
    return int(max_length) if max_length is not None else tokenizer_limit(tokenizer)


def label_of(ex: Example) -> int:
    """The example's label id, or the ignore index where it has none (an unlabelled split)."""
    label = ex.get("label")
    return IGNORE_INDEX if label is None else int(label)


def tokenize_texts(
    tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int
) -> tuple[list[dict[str, list[int]]], list[bool]]:
    """Tokenize texts (or text pairs); only inputs over ``max_length`` are truncated.

    Pairs are cut with ``longest_first`` (tokens come off the longer member first), so a short
    question or hypothesis survives a long passage. Returns the features and a truncated flag for each.
    """
    full = tokenizer(texts, pairs, truncation=False, verbose=False)
    keys = list(full.keys())
    feats = [{k: full[k][i] for k in keys} for i in range(len(texts))]
    over = [i for i, f in enumerate(feats) if len(f["input_ids"]) > max_length]
    if over:
        cut = tokenizer(
            [texts[i] for i in over],
            [pairs[i] for i in over] if pairs is not None else None,
            truncation="longest_first" if pairs is not None else True,
            max_length=max_length,
        )
        for j, i in enumerate(over):
            feats[i] = {k: cut[k][j] for k in keys}
    flags = [False] * len(texts)
    for i in over:
        flags[i] = True
    return feats, flags

