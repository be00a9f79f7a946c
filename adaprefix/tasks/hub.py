"""Optional fallback: fetch a task split from the Hugging Face hub when local files are missing.

Used only when the data dir lacks the files and neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE``
is set to 1. Failure is never fatal by itself: the caller turns it into a DataError that also says
where local files were looked for.
"""

from __future__ import annotations

import os
from typing import Any

_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_TRUE = {"1", "true", "yes", "on"}


def hub_allowed() -> bool:
    """Whether a hub look-up may be tried (no offline switch is on)."""
    return not any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_split(path: str, config: str | None, split: str) -> tuple[list[dict[str, Any]], Any]:
    """``datasets.load_dataset(path, config, split=...)`` for split train / dev / test.

    Returns the records and the dataset's ``features`` (to map ClassLabel ids back to names).
    Raises whatever ``datasets`` raises.
    """
    import datasets

    ds = datasets.load_dataset(path, config, split=_HUB_SPLITS[split])
    return [dict(r) for r in ds], ds.features
