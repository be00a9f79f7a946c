"""Where a committed result came from: the command, date, commit and versions, and for timings the machine.

Every script that writes a result kept in the repository (speed, memory, mutation, comparison, gate maps) puts
:func:`run_metadata` into it, so a number can be traced to the code and the environment that made it. Nothing here
records an absolute path: the command names the script relative to its repository.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# What "uncommitted changes" looks at: the code and settings a result depends on, not the results being written.
CODE_PATHSPECS = ("adaprefix", "tests", "benchmarks", "configs", "pyproject.toml",
                  ":(exclude,glob)benchmarks/**/results/**", ":(exclude,glob)**/*.md")


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def repo_root(start: str | Path | None = None) -> Path | None:
    """The git work tree holding ``start`` (default: the running script's folder); None outside one."""
    folder = Path(start if start is not None else (sys.argv[0] or ".")).resolve()
    folder = folder if folder.is_dir() else folder.parent
    top = _git(folder, "rev-parse", "--show-toplevel") if folder.is_dir() else ""
    return Path(top) if top else None


def git_commit(repo: Path | None) -> str:
    """The full commit hash, with ``+uncommitted-changes`` when the code differs from it; "unknown" outside git."""
    commit = _git(repo, "rev-parse", "HEAD") if repo else ""
    if not commit:
        return "unknown"
    dirty = _git(repo, "status", "--porcelain", "--", *CODE_PATHSPECS)
    return commit + ("+uncommitted-changes" if dirty else "")


def command_line(argv: list[str] | None = None, repo: Path | None = None) -> str:
    """``python <script> <args>``, with every argument that is a path inside ``repo`` written relative to it."""
    argv = list(sys.argv if argv is None else argv)

    def relative(arg: str) -> str:
        if repo is None or not os.path.isabs(arg):
            return arg
        try:
            return str(Path(arg).resolve().relative_to(repo.resolve()))
        except ValueError:
            return arg

    return shlex.join(["python", *map(relative, argv)])


def package_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run_metadata(packages: tuple[str, ...] = (), argv: list[str] | None = None,
                 repo: str | Path | None = None) -> dict[str, str | None]:
    """``command``, ``date`` (UTC), ``commit``, ``python``, ``torch``, ``transformers``, ``adaprefix`` and the
    versions of any further ``packages`` (None where one is not installed)."""
    from .. import __version__

    argv = list(sys.argv if argv is None else argv)
    root = Path(repo) if repo is not None else repo_root(argv[0] if argv and argv[0] else None)
    meta: dict[str, str | None] = {
        "command": command_line(argv, root),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(root),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "adaprefix": __version__,
    }
    meta.update({name: package_version(name) for name in packages})
    return meta


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_metadata() -> dict[str, object]:
    """What a timing ran on: torch's intra- and inter-op threads, the CPU model and the cores this process may use."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "cpu": cpu_model(), "cores_available": cores}


def describe(meta: dict) -> str:
    """One line for a Markdown result: date, commit and versions."""
    return " | ".join([str(meta["date"]), f"commit {meta['commit']}"] +
                      [f"{name} {meta[name]}" for name in ("python", "torch", "transformers", "adaprefix")])
