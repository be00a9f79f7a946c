"""Reader for CoNLL-style column files (one token per line, sentences separated by blank lines)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, Verbatim
from .readers import numbered_lines, read_text

#: A tag the readers accept: ``O``, IOB2/IOBES with a type (``B-PER``, ``I-PER``, ``E-PER``, ``S-PER``), or
#: BIO without a type (``B``, ``I``), as in keyphrase and chunk-free span data.
TAG_RE = re.compile(r"^(?:O|[BIES]-\S+|[BI])$")


@dataclass(frozen=True)
class ConllFormat:
    """How to read one flavour of CoNLL column file.

    ``num_columns`` fixes the column count; None means "whatever the first token line has", and every
    other token line of that file must have the same count. ``delimiter`` None splits on any
    whitespace. A line starting with one of ``boundary_prefixes`` (e.g. ``-DOCSTART-`` or ``#doc``)
    ends the current sentence and is otherwise skipped, as is a blank line.
    """

    token_column: int = 0
    tag_column: int = -1
    num_columns: int | None = None
    delimiter: str | None = None
    boundary_prefixes: tuple[str, ...] = ("-DOCSTART-",)
    columns_doc: str = ""  # human description used in error messages, e.g. "token POS chunk NER"

    def min_columns(self) -> int:
        need = [c + 1 if c >= 0 else -c for c in (self.token_column, self.tag_column)]
        return max(need)


@dataclass
class Sentence:
    """One sentence: its tokens, tags and the 1-based line of its first token."""

    tokens: list[str]
    tags: list[str]
    line: int
    tag_lines: list[int] = field(default_factory=list)


def read_conll(path: str | Path, fmt: ConllFormat) -> list[Sentence]:
    """Read ``path`` into sentences, checking column counts and tag syntax (see :data:`TAG_RE`).

    A UTF-8 byte-order mark is dropped and CRLF line ends are read as LF (see :func:`~.readers.read_text`).
    """
    path = Path(path)
    sentences: list[Sentence] = []
    cur: Sentence | None = None
    expected = fmt.num_columns
    expected_from: int | None = None
    for lineno, line in numbered_lines(read_text(path)):
        if not line.strip() or line.startswith(fmt.boundary_prefixes):
            if cur is not None:
                sentences.append(cur)
                cur = None
            continue
        cols = line.split(fmt.delimiter) if fmt.delimiter else line.split()
        if expected is None:
            if len(cols) < fmt.min_columns():
                raise _column_error(path, lineno, fmt, f"at least {fmt.min_columns()} columns", cols)
            expected, expected_from = len(cols), lineno
        elif len(cols) != expected:
            want = f"{expected} columns"
            if fmt.columns_doc:
                want += f" ({fmt.columns_doc})"
            elif expected_from is not None:
                want += f" (as on line {expected_from})"
            raise _column_error(path, lineno, fmt, want, cols)
        token, tag = cols[fmt.token_column].strip(), cols[fmt.tag_column].strip()
        if not token:
            raise DataError("empty token", path=path, line=lineno, hint="Check the column delimiter.")
        if not TAG_RE.match(tag):
            raise DataError(
                path=path,
                line=lineno,
                field=f"tag (column {_colno(fmt.tag_column, len(cols))})",
                expected="'O' or a BIO/IOBES tag such as 'B-PER', 'I-PER' (or 'B', 'I' without a type)",
                got=tag,
                hint="Convert bracketed OntoNotes/CoNLL-2012 tags like '(PERSON*' to BIO first, "
                "or point the tag column at the NER column.",
            )
        if cur is None:
            cur = Sentence([], [], lineno)
        cur.tokens.append(token)
        cur.tags.append(tag)
        cur.tag_lines.append(lineno)
    if cur is not None:
        sentences.append(cur)
    return sentences


def _colno(index: int, n: int) -> int:
    return (index if index >= 0 else n + index) + 1


def _column_error(path: Path, lineno: int, fmt: ConllFormat, want: str, cols: list[str]) -> DataError:
    sep = "tab" if fmt.delimiter == "\t" else "whitespace" if fmt.delimiter is None else repr(fmt.delimiter)
    return DataError(
        f"wrong number of columns ({sep}-separated)",
        path=path,
        line=lineno,
        expected=want,
        got=Verbatim(f"{len(cols)} columns {cols!r}"),
        hint="Each token line needs the same columns; sentences are separated by blank lines.",
    )
