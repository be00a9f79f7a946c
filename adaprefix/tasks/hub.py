"""Optional fallback: fetch a task split from the Hugging Face hub when local files are missing.

Used only when the data dir lacks the files and neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE``
is set to 1. :func:`hub_fallback` is the one place that tries it: a failure becomes a DataError that also says
where local files were looked for.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import DataError

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


def hub_fallback(missing: DataError, path: str, config: str | None,
                 split: str) -> tuple[list[dict[str, Any]], Any, str]:
    """A split from the hub after the local files were not found: ``(records, features, where)``.

    ``missing`` is the "not found" error of the local search; when the hub may not be tried, or the look-up fails,
    it is raised again as a :class:`DataError` that names both the local search and the hub's failure. ``where``
    names the source for the examples' ``source`` field, e.g. ``hub:super_glue/cb[dev]``.
    """
    call = f"load_dataset({path!r}" + (f", {config!r}" if config else "") + ")"
    if not hub_allowed():
        raise DataError(f"{missing} Hub fallback skipped: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set") from None
    try:
        records, features = load_hub_split(path, config, split)
    except Exception as exc:  # any network/hub failure: report it with the local search
        raise DataError(f"{missing} The hub fallback {call} failed too: {type(exc).__name__}: {exc}") from None
    return records, features, f"hub:{path}" + (f"/{config}" if config else "") + f"[{split}]"
