"""Record readers (jsonl, JSON array, csv, tsv) that keep the line number of every record.

Every reader goes through :func:`read_text`: a UTF-8 byte-order mark is dropped and CRLF / CR line ends are
read as LF, so a file saved by Excel or Notepad reads the same as one written on Linux.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from ..files import JsonLinesError, parse_jsonl
from .errors import DataError, Verbatim

Record = dict[str, Any]

#: How quote characters in a .tsv file are read: ``auto`` (plain text when every line has the header's number of
#: tabs, else CSV quoting), ``none`` (always plain text, as in GLUE's TSVs) or ``csv`` (CSV quoting rules).
TSV_QUOTING = ("auto", "none", "csv")
QUOTING_FLAG = "--tsv-quoting"


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, without a leading byte-order mark and with every line end made ``\\n``.

    Raises :class:`DataError` naming the file and the line for text that is not UTF-8 (UTF-16 included).
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError("the file is UTF-16 text", path=path, line=1, expected="UTF-8 text", got=Verbatim("UTF-16"),
                        hint="Re-save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`).")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"not UTF-8 text (byte {data[exc.start:exc.start + 1]!r} at byte offset {exc.start})", path=path,
            line=line, hint="Re-save the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`).",
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """``(line_number, line)`` pairs of text from :func:`read_text` (1-based; no empty line after a final ``\\n``)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return list(enumerate(lines, start=1))


def read_jsonl(path: str | Path) -> list[tuple[int, Record]]:
    """Read one JSON object per line; returns ``(line_number, record)`` pairs (1-based lines).

    Blank lines are skipped (official SuperGLUE test files end without a newline, others with one).
    """
    path = Path(path)
    return _jsonl_records(read_text(path), path)


def _jsonl_records(text: str, path: Path) -> list[tuple[int, Record]]:
    try:  # a data file's bad last line is the user's data to fix, not a write cut short
        values = parse_jsonl(text, path, torn_last_line="error")
    except JsonLinesError as exc:
        raise DataError(exc.problem, path=path, line=exc.line,
                        hint="Each line of a .jsonl file must be one complete JSON object.") from None
    out: list[tuple[int, Record]] = []
    for lineno, rec in values:
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
    text = read_text(path)
    if not text.lstrip().startswith("["):
        return _jsonl_records(text, path)
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


def read_table(path: str | Path, delimiter: str, quoting: str = "csv") -> list[tuple[int, Record]]:
    """Read a csv/tsv file with a header row; returns ``(line_number, row)`` pairs.

    ``quoting`` is ``csv`` (cells may be quoted, and quoted cells may hold the delimiter or a line break),
    ``none`` (every line is split on the delimiter; quote characters are plain text, as in GLUE's TSVs) or
    ``auto`` (``none`` when every non-blank line has as many delimiters as the header, else ``csv``).
    Blank lines are skipped. A row with fewer or more cells than the header is an error (file:line, expected
    vs got, and how to change the quoting).
    """
    path = Path(path)
    if quoting not in TSV_QUOTING:
        raise DataError(field="quoting", expected=f"one of {', '.join(TSV_QUOTING)}", got=quoting,
                        hint=f"Pass {QUOTING_FLAG} with one of those values.")
    lines = [(n, line) for n, line in numbered_lines(read_text(path)) if line.strip()]
    if not lines:
        raise DataError("file is empty (no header row)", path=path)
    header_line, header_text = lines[0]
    header = [c.strip() for c in header_text.split(delimiter)] if quoting != "csv" else None
    if quoting == "auto":
        odd = next(((n, line) for n, line in lines if line.count(delimiter) != len(header) - 1), None)
        if odd is None:
            quoting = "none"
        else:
            try:
                return _read_quoted(path, delimiter, auto=True)
            except _CellCountError:
                n, line = odd
                raise _cell_count_error(path, n, header, line.split(delimiter), delimiter, "auto") from None
    if quoting == "csv":
        return _read_quoted(path, delimiter, auto=False)
    out: list[tuple[int, Record]] = []
    for lineno, line in lines[1:]:
        cells = line.split(delimiter)
        if len(cells) != len(header):
            raise _cell_count_error(path, lineno, header, cells, delimiter, "none")
        out.append((lineno, dict(zip(header, cells))))
    return out


class _CellCountError(DataError):
    """A row with the wrong number of cells under CSV quoting (auto mode reports the raw line instead)."""


def _read_quoted(path: Path, delimiter: str, auto: bool) -> list[tuple[int, Record]]:
    out: list[tuple[int, Record]] = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    header: list[str] | None = None
    for lineno, cells in _rows(reader):
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            continue
        if len(cells) != len(header):
            err = _cell_count_error(path, lineno, header, cells, delimiter, "csv")
            raise _CellCountError(str(err)) if auto else err
        out.append((lineno, dict(zip(header, cells))))
    return out


def _cell_count_error(path: Path, lineno: int, header: list[str], cells: list[str], delimiter: str,
                      quoting: str) -> DataError:
    sep = "tab" if delimiter == "\t" else repr(delimiter)
    if delimiter != "\t":
        hint = ("Quote cells that contain the delimiter, or check the file's delimiter "
                "(--format tsv for a tab-separated file).")
    elif quoting == "csv":
        hint = (f"Read with CSV quoting, a cell that starts with '\"' runs on to the next '\"', across tabs. "
                f"If quote characters in this file are plain text (as in GLUE's TSVs), pass {QUOTING_FLAG} none.")
    elif quoting == "none":
        hint = (f"Quote characters are read as plain text ({QUOTING_FLAG} none), so every line needs exactly "
                f"{len(header) - 1} tabs. If cells that hold tabs or line breaks are quoted, pass "
                f"{QUOTING_FLAG} csv; otherwise fix this line.")
    else:
        hint = (f"Not every line has the header's {len(header) - 1} tabs, so the file was read with CSV quoting, "
                f"and that failed too. Fix this line, or choose how quote characters are read with "
                f"{QUOTING_FLAG} none (plain text) or {QUOTING_FLAG} csv (quoted cells).")
    return DataError(
        f"wrong number of cells ({sep}-separated)",
        path=path,
        line=lineno,
        expected=f"{len(header)} cells (header: {header})",
        got=Verbatim(f"{len(cells)} cells {_clip(cells)}"),
        hint=hint,
    )


def _clip(cells: list[str], limit: int = 120) -> str:
    text = repr(cells)
    return text if len(text) <= limit else text[: limit - 4] + "...]"


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
