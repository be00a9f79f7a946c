"""Seeded subsets of a split's examples, for low-resource runs (``--max-train-samples``)."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from .errors import DataError

T = TypeVar("T")


def sample_examples(examples: Sequence[T], n: int | None, seed: int) -> list[T]:
    """``n`` examples drawn at random with ``seed``, kept in file order; all of them when ``n`` is None or >= len.

    Works the same for every kind of task (an example is one record, one set of choices or one sentence).
    The draw uses its own ``random.Random(seed)``, so it does not depend on, or disturb, Python's, NumPy's or
    torch's global generators. The subsets of one seed are nested: the first ``n`` of one seeded permutation,
    so the 100-example subset is part of the 200-example one (learning curves add data, never swap it).
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise DataError(f"n: expected a positive number of examples, got {n}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]
