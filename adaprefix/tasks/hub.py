"""Optional fallback: fetch a task split from the Hugging Face hub when local files are missing.

Used only when the data dir lacks the files and neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE``
is set to 1. :func:`hub_fallback` is the one place that tries it: a failure becomes a DataError that also says
where local files were looked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import DataError


@dataclass(frozen=True)
class HubDataset:
    """A dataset repository on the hub at a fixed revision: ``load_dataset(path, name, revision=revision)``."""

    path: str
    revision: str


# datasets >= 4.0 refuses repositories that load through a script ("Dataset scripts are no longer supported"), which
# the bare ids "conll2003" and "super_glue" were. Both ids below hold parquet files only, and a revision pins what they
# hold (docs/reference/tasks.md, the Data item, gives the evidence for each).
#: CoNLL-2003: the hub's parquet export of the canonical repository (where "conll2003" redirects); the export branch
#: keeps the ClassLabel tag names the loader maps ids back with.
CONLL2003 = HubDataset("eriktks/conll2003", "refs/convert/parquet")
#: SuperGLUE: "super_glue" moved to aps/super_glue, whose script was replaced by parquet files; this commit has them.
SUPER_GLUE = HubDataset("aps/super_glue", "3de24cf8022e94f4ee4b9d55a6f539891524d646")

_HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_TRUE = {"1", "true", "yes", "on"}


def hub_allowed() -> bool:
    """Whether a hub look-up may be tried (no offline switch is on)."""
    return not any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub_split(source: HubDataset, config: str | None, split: str) -> tuple[list[dict[str, Any]], Any]:
    """``datasets.load_dataset(source.path, config, split=..., revision=source.revision)`` for train / dev / test.

    Returns the records and the dataset's ``features`` (to map ClassLabel ids back to names).
    Raises whatever ``datasets`` raises.
    """
    import datasets

    ds = datasets.load_dataset(source.path, config, split=_HUB_SPLITS[split], revision=source.revision)
    return [dict(r) for r in ds], ds.features


def hub_fallback(missing: DataError, source: HubDataset, config: str | None,
                 split: str) -> tuple[list[dict[str, Any]], Any, str]:
    """A split from the hub after the local files were not found: ``(records, features, where)``.

    ``missing`` is the "not found" error of the local search; when the hub may not be tried, or the look-up fails,
    it is raised again as a :class:`DataError` that names both the local search and the hub's failure. ``where``
    names the source for the examples' ``source`` field, e.g. ``hub:aps/super_glue/cb[dev]``.
    """
    path = source.path
    call = f"load_dataset({path!r}" + (f", {config!r}" if config else "") + f", revision={source.revision!r})"
    if not hub_allowed():
        raise DataError(f"{missing} Hub fallback skipped: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set") from None
    try:
        records, features = load_hub_split(source, config, split)
    except Exception as exc:  # any network/hub failure: report it with the local search
        raise DataError(f"{missing} The hub fallback {call} failed too: {type(exc).__name__}: {exc}") from None
    return records, features, f"hub:{path}" + (f"/{config}" if config else "") + f"[{split}]"
