"""Files that a kill cannot leave half-written, and the one reader of JSON-lines files.

Writes go to a temporary file (or folder) beside the target, are flushed to disk, and then replace the target with
``os.replace``: a reader sees the old content or the new one, never a mix. An append to a JSON-lines file writes one
whole line, so a kill mid-append can tear only the last line; :func:`read_jsonl` drops such a line and
:func:`append_jsonl` removes it before adding the next record, so it never ends up in the middle of the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

from .errors import AdaprefixError

#: What :func:`parse_jsonl` does with a last line that has no line end and is not valid JSON:
#: ``"drop"`` it (a record file: a kill mid-append tore it; the records before it are whole) or raise (``"error"``:
#: a data file, whose last line is as much the user's data as any other).
TORN_LAST_LINE = ("drop", "error")


class JsonLinesError(AdaprefixError, ValueError):
    """A line of a JSON-lines file that cannot be read; the message names the file and the line.

    ``path``, ``line`` (1-based) and ``problem`` (what is wrong with the line) are kept as attributes, so that a
    caller can re-raise it in its own terms.
    """

    def __init__(self, path: str | os.PathLike, line: int, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{path}:{line}: {problem}")


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Make ``path`` by calling ``write(temporary_path)``, then swap the flushed result in under the final name.

    Missing parent folders are made. The file gets the permissions a plain ``open`` would give (0666 less the
    umask). If ``write`` raises, the error propagates and neither the target nor a temporary file is changed or
    left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)  # on disk before the rename: a crash must not leave the new name on an empty file
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically; numbers JSON lacks (numpy, tensors' items) are written as floats."""
    atomic_write_text(path, json.dumps(data, indent=2, default=float) + "\n")


def atomic_replace_dir(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Fill a fresh temporary folder with ``write(folder)``, flush its files, and swap it in for ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync(file)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line, flushed to disk.

    A kill loses at most the line being written. A torn last line left by an earlier kill is removed first, so
    that it is not glued to this record into a bad line in the middle of the file.
    """
    path = Path(path)
    line = (json.dumps(record, default=float) + "\n").encode()
    with open(path, "ab") as handle:
        _drop_torn_tail(path, handle)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_tail(path: Path, handle) -> None:
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:  # torn: cut it off (what read_jsonl would drop)
        handle.truncate(start)
    else:  # a whole record that only lacks its line end
        handle.write(b"\n")


def parse_jsonl(text: str, source: str | os.PathLike, *, torn_last_line: str = "drop") -> list[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of JSON-lines ``text`` (1-based; lines end with ``\\n``).

    A line that is not valid JSON raises :class:`JsonLinesError` naming ``source`` and the line, except a last line
    without its line end under ``torn_last_line="drop"`` (see :data:`TORN_LAST_LINE`), which is left out with a
    warning.
    """
    if torn_last_line not in TORN_LAST_LINE:
        raise ValueError(f"torn_last_line: expected one of {', '.join(TORN_LAST_LINE)}, got {torn_last_line!r}")
    lines = text.split("\n")  # only \n ends a line: JSON text may hold other Unicode line separators
    ended = lines[-1] == ""
    if ended:
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            if number == len(lines) and not ended and torn_last_line == "drop":
                warnings.warn(f"{source}:{number}: dropped a torn last line (a write cut short)", stacklevel=3)
                continue
            raise JsonLinesError(source, number, f"malformed JSON line ({err.msg} at column {err.colno})") from None
    return out


def read_jsonl(path: str | os.PathLike, *, torn_last_line: str = "drop") -> list[dict]:
    """The records (JSON objects, one per line) of a JSON-lines file; ``[]`` when the file does not exist.

    A torn last line (a kill mid-append) is dropped by default; any other bad line, or a line that holds something
    other than an object, raises :class:`JsonLinesError` naming the file and the line (see :func:`parse_jsonl`).
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, value in parse_jsonl(path.read_text(), path, torn_last_line=torn_last_line):
        if not isinstance(value, dict):
            raise JsonLinesError(path, number, f"expected a JSON object, got {type(value).__name__}")
        records.append(value)
    return records
