"""Which reader a bring-your-own data file needs: the one place that decides tagging vs classification.

``detect_format(path)`` returns one of :data:`FORMATS`:

- ``jsonl``: JSON lines, or a JSON array of objects (``.jsonl``, ``.json``, or content whose first line is a
  JSON object); classification.
- ``csv`` / ``tsv``: a table with a header row (``.csv``; ``.tsv``, ``.tab``); classification.
- ``conll``: token lines in columns with a blank line between sentences; tagging.

An explicit format (``--format``) wins. Otherwise the content decides, then the extension: a file whose token
lines have two or more columns, whose tag column (the last, by default) holds ``O`` / IOB / IOBES tags
(``B-X``, ``I-X``, ``E-X``, ``S-X``, or ``B``/``I`` without a type), and which has blank-line sentence breaks is
tagging data, whatever its extension (``train.tsv`` of a biomedical NER corpus, ``train.txt`` of CoNLL-2003).
A file that could be either is refused with an error that names ``--format``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from .conll import TAG_RE
from .errors import DataError, Verbatim

#: The formats ``--format`` takes (``auto``: decide from the content and the extension).
FORMATS = ("jsonl", "csv", "tsv", "conll")
FORMAT_CHOICES = ("auto", *FORMATS)
FORMAT_FLAG = "--format"
#: What a custom task's files hold (``--kind``): ``auto`` decides from the files (CoNLL columns: tagging; a first
#: record with the prompt and completion fields: generation; otherwise classification).
DATA_KINDS = ("auto", "classification", "tagging", "generation")
#: The extensions that name a format; any other (``.txt``, ``.iob``, none) is decided by the content.
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".conll": "conll"}
TABLE_FORMATS = ("csv", "tsv")
#: How many lines of a file are looked at to decide its format.
SNIFF_LINES = 2000


@dataclass(frozen=True)
class Sniff:
    """What the first :data:`SNIFF_LINES` lines of a file look like."""

    first_line: str  # the first non-blank line, as read
    first_lineno: int  # its 1-based line number
    json: bool  # the first non-blank line opens a JSON object or array of objects
    content: int  # non-blank lines that are not sentence-boundary lines (-DOCSTART- ...)
    tagged: int  # of those, lines with 2+ columns whose tag column is an O/IOB/IOBES tag
    first_tagged: bool  # whether the first content line is one of them
    breaks: bool  # a blank or boundary line sits between two content lines


def sniff(path: str | Path, *, tag_column: int = -1, delimiter: str | None = None,
          boundary_prefixes: tuple[str, ...] = ("-DOCSTART-",)) -> Sniff:
    """Look at the first :data:`SNIFF_LINES` lines of ``path`` (see :class:`Sniff`)."""
    with open(path, encoding="utf-8-sig", errors="replace") as fh:  # the readers report undecodable bytes
        lines = [line.rstrip("\r\n") for line in itertools.islice(fh, SNIFF_LINES)]
    first_lineno, first = next(((n, line) for n, line in enumerate(lines, 1) if line.strip()), (1, ""))
    content = tagged = 0
    first_tagged = breaks = pending_break = False
    for line in lines:
        if not line.strip() or line.startswith(boundary_prefixes):
            pending_break = content > 0
            continue
        breaks = breaks or pending_break
        cols = line.split(delimiter) if delimiter else line.split()
        ok = len(cols) >= 2 and -len(cols) <= tag_column < len(cols) and bool(TAG_RE.match(cols[tag_column].strip()))
        first_tagged = first_tagged or (ok and content == 0)
        content += 1
        tagged += ok
    return Sniff(first, first_lineno, _opens_json(first), content, tagged, first_tagged, breaks)


def _opens_json(line: str) -> bool:
    text = line.strip()
    if text == "[" or text.startswith("[{"):
        return True
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return text == "{"  # a pretty-printed object inside a JSON array starts that way too


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased if it is one of :data:`FORMAT_CHOICES`, else a DataError naming the choices."""
    value = str(fmt).lower().lstrip(".")
    if value not in FORMAT_CHOICES:
        raise DataError(field="format", expected=f"one of {', '.join(FORMAT_CHOICES)}", got=fmt,
                        hint=f"Pass {FORMAT_FLAG} jsonl, csv, tsv or conll (auto: decided from the file).")
    return value


def detect_format(path: str | Path, fmt: str = "auto", *, tag_column: int = -1, delimiter: str | None = None,
                  boundary_prefixes: tuple[str, ...] = ("-DOCSTART-",)) -> str:
    """The reader ``path`` needs, one of :data:`FORMATS` (the module docstring gives the rules).

    ``fmt`` other than ``auto`` is returned as it is. ``tag_column``, ``delimiter`` and ``boundary_prefixes`` say
    how a tagging file would be read (see :class:`~.conll.ConllFormat`), so that the guess matches the reader.
    Raises :class:`DataError` naming ``--format`` for a file that could be either tagging or classification.
    """
    fmt = check_format(fmt)
    if fmt != "auto":
        return fmt
    path = Path(path)
    by_ext = EXTENSIONS.get(path.suffix.lower())
    if by_ext == "jsonl":
        return "jsonl"
    if not path.is_file():
        raise DataError("file not found", path=path, hint="Check the path (relative paths are taken from the "
                                                          "current directory).")
    s = sniff(path, tag_column=tag_column, delimiter=delimiter, boundary_prefixes=boundary_prefixes)
    if s.json:
        return "jsonl"
    if s.content == 0:
        return by_ext or "conll"  # the reader says the file is empty
    if s.tagged == s.content:
        if s.breaks or by_ext not in TABLE_FORMATS:
            return "conll"
        raise _ambiguous(path, s, "every line looks like 'token tag' (tagging), but no blank line separates "
                                  "sentences (a table would need a header row)", by_ext)
    if s.tagged == s.content - 1 and not s.first_tagged and s.content > 1:
        raise _ambiguous(path, s, "the lines after the first look like 'token tag' (tagging), but the first does "
                                  "not: a header row? Tagging files have none, so remove it if this is tagging "
                                  "data", by_ext)
    if s.breaks and 2 * s.tagged > s.content:
        return "conll"  # mostly tagged, with sentence breaks: the reader names the lines that are not
    if by_ext is not None:
        return by_ext
    if s.breaks:
        return "conll"  # blank-line blocks: a column file; the reader names the first line it cannot read
    raise _ambiguous(path, s, f"the extension {path.suffix or '(none)'!r} does not name a format and the lines do "
                              "not look like 'token tag' columns with blank lines between sentences", by_ext)


def _ambiguous(path: Path, s: Sniff, why: str, by_ext: str | None) -> DataError:
    table = by_ext if by_ext in TABLE_FORMATS else "tsv"
    return DataError(
        f"cannot tell whether this is tagging or classification data: {why}",
        path=path,
        line=s.first_lineno,
        expected="tagging columns ('token<TAB>tag' lines, blank line between sentences) or a table with a header",
        got=Verbatim(f"first line {s.first_line[:80]!r}"),
        hint=f"Say which with {FORMAT_FLAG} conll (tagging) or {FORMAT_FLAG} {table} (classification); in Python, "
             f"custom_task(..., file_format='conll') or file_format='{table}'.",
    )
