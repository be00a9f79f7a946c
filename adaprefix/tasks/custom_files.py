"""The files of a bring-your-own task: one path per split, and the records of a table file (jsonl / json / csv /
tsv). Classification (:mod:`.custom`) and generation (:mod:`.custom_generation`) read them alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DataError
from .formats import FORMAT_FLAG, detect_format
from .readers import read_json_or_jsonl, read_table


def split_paths(train: Any, dev: Any, test: Any) -> dict[str, Path | None]:
    """``{"train": ..., "dev": ..., "test": ...}`` as paths (None where a split has no file)."""
    return {s: Path(p) if p is not None else None for s, p in (("train", train), ("dev", dev), ("test", test))}


def given_path(paths: dict[str, Path | None], split: str, task_name: str) -> Path:
    """The file of ``split``; a DataError naming the flag to pass when none was given, or the path when it is not
    a file."""
    path = paths.get(split)
    if path is None:
        raise DataError(
            f"task {task_name!r} has no {split} file",
            hint=f"Pass --{split}-file PATH ({split}=PATH in Python).",
        )
    if not path.is_file():
        raise DataError(f"file not found for the {split} split of task {task_name!r}", path=path,
                        hint="Check the path (relative paths are taken from the current directory).")
    return path


def read_records(path: Path, file_format: str, tsv_quoting: str, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs of a jsonl / json / csv / tsv file read as ``file_format`` (``auto``: sniffed);
    a file that looks like tagging columns is refused, since ``kind`` (classification, generation) reads tables."""
    fmt = detect_format(path, file_format)
    if fmt == "conll":
        raise DataError(
            "this file looks like tagging data (token and tag columns, a blank line between sentences), but "
            f"the task reads {kind} data", path=path,
            hint=f"Pass {FORMAT_FLAG} tsv, csv or jsonl if it is a table, or train a tagging task on it.",
        )
    if fmt == "jsonl":
        return read_json_or_jsonl(path)
    return read_table(path, "," if fmt == "csv" else "\t", quoting="csv" if fmt == "csv" else tsv_quoting)
