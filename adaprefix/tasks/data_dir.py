"""Where task data lives: the data-dir search order and file lookup with a helpful error."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import DataError

ENV_VAR = "ADAPREFIX_DATA_DIR"


@dataclass(frozen=True)
class DataDirCandidate:
    """One place that :func:`resolve_data_dir` considers, in order."""

    source: str  # how the place was named, e.g. "ADAPREFIX_DATA_DIR"
    path: Path | None  # None when that source gave nothing (argument not passed, variable not set)
    exists: bool

    def describe(self) -> str:
        if self.path is None:
            return f"{self.source} (not given)"
        return f"{self.source} ({self.path}: {'exists' if self.exists else 'missing'})"


def data_dir_candidates(data_dir: str | Path | None = None) -> list[DataDirCandidate]:
    """The places a data dir may come from, in priority order, each with whether it exists."""
    out: list[DataDirCandidate] = []
    explicit = Path(data_dir).expanduser().absolute() if data_dir not in (None, "") else None
    out.append(DataDirCandidate("--data-dir argument", explicit, bool(explicit and explicit.is_dir())))
    env = os.environ.get(ENV_VAR) or None
    env_path = Path(env).expanduser().absolute() if env else None
    out.append(DataDirCandidate(f"environment variable {ENV_VAR}", env_path, bool(env_path and env_path.is_dir())))
    cwd_path = Path.cwd() / ".." / "shared" / "data"
    out.append(DataDirCandidate("../shared/data from the current directory", cwd_path.resolve(), cwd_path.is_dir()))
    # adaprefix/tasks/data_dir.py -> parents[3] is the folder that holds the repository checkout.
    repo_path = Path(__file__).resolve().parents[3] / "shared" / "data"
    out.append(DataDirCandidate("shared/data beside the repository", repo_path, repo_path.is_dir()))
    return out


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """Pick the data dir: explicit argument, else ``$ADAPREFIX_DATA_DIR``, else ``../shared/data``
    relative to the current directory if it exists, else ``shared/data`` beside the repository if it
    exists, else None.

    An explicit argument or environment variable is returned even if it does not exist (a typo there
    should surface as a "not found" error naming it, not silently fall through to another folder).
    """
    for cand in data_dir_candidates(data_dir):
        if cand.path is None:
            continue
        if cand.exists or cand.source.startswith(("--data-dir", "environment")):
            return cand.path
    return None


def find_data_file(
    data_dir: str | Path | None,
    relpaths: Sequence[str | Path],
    *,
    what: str,
    extra_hint: str = "",
) -> Path:
    """Return the first of ``relpaths`` (relative to the resolved data dir) that exists.

    Raises :class:`DataError` naming every path checked, every data-dir candidate considered and how
    to get the data, when none exists.
    """
    base = resolve_data_dir(data_dir)
    checked: list[Path] = []
    if base is not None:
        for rel in relpaths:
            path = base / rel
            if path.is_file():
                return path
            checked.append(path)
    raise DataError(missing_data_message(data_dir, relpaths, what=what, checked=checked, extra_hint=extra_hint))


def missing_data_message(
    data_dir: str | Path | None,
    relpaths: Sequence[str | Path],
    *,
    what: str,
    checked: Sequence[Path] | None = None,
    extra_hint: str = "",
) -> str:
    """The text of the "data not found" error: what was looked for, where, and how to fix it."""
    base = resolve_data_dir(data_dir)
    if checked is None:
        checked = [base / rel for rel in relpaths] if base is not None else []
    looked = ", ".join(str(p) for p in checked) if checked else "nowhere (no data dir found)"
    cands = "; ".join(c.describe() for c in data_dir_candidates(data_dir))
    example = relpaths[0] if relpaths else ""
    msg = (
        f"{what} not found. Looked for: {looked}. Data dir candidates, in order: {cands}. "
        f"To fix: put the official files in a data dir (e.g. <data dir>/{example}) and pass --data-dir "
        f"or set {ENV_VAR} to that folder."
    )
    if extra_hint:
        msg += " " + extra_hint
    return msg


def locate_data_file(data_dir: str | Path | None, relpaths: Sequence[str]) -> str | None:
    """The first of ``relpaths`` present under the data dir, else where the first would be; None without a dir."""
    base = resolve_data_dir(data_dir)
    if base is None:
        return None
    paths = [base / rel for rel in relpaths]
    return str(next((p for p in paths if p.is_file()), paths[0]))
