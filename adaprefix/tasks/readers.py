"""Record readers (jsonl, JSON array, csv, tsv) that keep the line number of every record."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError

Record = dict[str, Any]


def read_jsonl(path: str | Path) -> list[tuple[int, Record]]:
    """Read one JSON object per line; returns ``(line_number, record)`` pairs (1-based lines).

    Blank lines are skipped (official SuperGLUE test files end without a newline, others with one).
    """
    path = Path(path)
    out: list[tuple[int, Record]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"malformed JSON line ({exc.msg} at column {exc.colno})",
                    path=path,
                    line=lineno,
                    hint="Each line of a .jsonl file must be one complete JSON object.",
                ) from None
            if not isinstance(rec, dict):
                raise DataError(
                    path=path, line=lineno, expected="a JSON object per line", got=type(rec).__name__,
                    hint="Each line of a .jsonl file must be one JSON object such as {\"text\": ..., \"label\": ...}.",
                )
            out.append((lineno, rec))
    return out


def read_json_or_jsonl(path: str | Path) -> list[tuple[int, Record]]:
    """Read ``.jsonl`` or a ``.json`` file that is either a JSON array of objects or JSON lines."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", path=path, line=exc.lineno) from None
    out = []
    for i, rec in enumerate(items):
        if not isinstance(rec, dict):
            raise DataError(
                f"item {i} of the JSON array", path=path, expected="a JSON object", got=type(rec).__name__
            )
        out.append((i + 1, rec))  # "line" is the 1-based item number for arrays
    return out


def read_table(path: str | Path, delimiter: str) -> list[tuple[int, Record]]:
    """Read a csv/tsv file with a header row; returns ``(line_number, row)`` pairs.

    A row with fewer or more cells than the header is an error (file:line, expected vs got).
    """
    path = Path(path)
    out: list[tuple[int, Record]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header: list[str] | None = None
        for row in _rows(reader):
            lineno, cells = row
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(
                    "wrong number of cells",
                    path=path,
                    line=lineno,
                    expected=f"{len(header)} cells (header: {header})",
                    got=len(cells),
                    hint="Quote cells that contain the delimiter, or check the file's delimiter.",
                )
            out.append((lineno, dict(zip(header, cells))))
    if header is None:
        raise DataError("file is empty (no header row)", path=path)
    return out


def _rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    start = 1
    for cells in reader:
        yield start, cells  # line where the row starts (quoted cells may span lines)
        start = reader.line_num + 1


def get_field(rec: Record, field: str, *, path: Path | str, line: int, required: bool = True) -> Any:
    """Get ``field`` from ``rec`` (dotted names reach into nested objects, e.g. ``target.span1_text``).

    Returns None for an absent optional field; raises DataError naming the fields present otherwise.
    """
    cur: Any = rec
    parts = field.split(".")
    for i, part in enumerate(parts):
        if not isinstance(cur, dict) or part not in cur:
            if not required:
                return None
            present = sorted(cur) if isinstance(cur, dict) else []
            inner = ".".join(parts[:i]) or "record"
            raise DataError(
                "missing field",
                path=path,
                line=line,
                field=field,
                hint=f"Fields present in {inner}: {present}. Check the column/field names for this task.",
            )
        cur = cur[part]
    return cur


def get_str(rec: Record, field: str, *, path: Path | str, line: int) -> str:
    """Get a required string field (see :func:`get_field`)."""
    value = get_field(rec, field, path=path, line=line)
    if not isinstance(value, str):
        raise DataError(path=path, line=line, field=field, expected="a string", got=value)
    return value
