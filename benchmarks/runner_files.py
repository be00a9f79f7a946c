"""What the grid runners (``reproduce/run.py``, ``decoder/grid.py``) share: a claim on a run so that two runners never
train the same one, a records file appended under a lock, and a git commit of one file.

Several runners (processes) share one grid and one records file; each takes a run by a kernel lock on a claim file
(a killed runner frees it), and appends its record under a lock on the records file itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def claim(claims: Path, name: str) -> Iterator[bool]:
    """Hold ``name`` (a run id, or another job's name) for this runner while the block runs: True if this runner got
    it, False if another holds it. A lock on a file in the folder ``claims``, kept only by runners."""
    path = claims / (name.replace("/", "__").replace(":", "--") + ".claim")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextmanager
def locked_records(target: Path) -> Iterator[IO[str]]:
    """``target`` open for reading and appending, locked against every other runner and against a tool that replaces
    the file under the same lock (the handle is always the current file's). A torn last line (a writer killed
    mid-line) is cut off first, so that the next line starts on a line of its own."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with target.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            if os.fstat(handle.fileno()).st_ino != target.stat().st_ino:
                continue  # replaced while we waited: lock the new one
            handle.seek(0)
            text = handle.read()
            if text and not text.endswith("\n"):
                print(f"warning: {target.name}: cut off a torn last line: {text[text.rfind(chr(10)) + 1:][:80]!r}",
                      file=sys.stderr)
                handle.truncate(text.rfind("\n") + 1)
            yield handle
            return


def append_once(target: Path, record: dict[str, Any], unique: bool = True) -> bool:
    """Append ``record`` to ``target`` as one JSON line; with ``unique``, False (and nothing written) when a record
    of its ``run_id`` is there already. The file is locked from that check to the appended line, so two runners
    cannot both append one run."""
    with locked_records(target) as f:
        if unique:
            f.seek(0)
            if any(json.loads(line).get("run_id") == record["run_id"] for line in f if line.strip()):
                return False
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def commit_file(repo: Path, target: Path, message: str) -> None:
    """git-commit ``target`` alone (whatever else is staged or changed stays as it is); a warning if it cannot."""
    path = str(target.relative_to(repo))

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    for _ in range(5):  # another git command may hold the index lock for a moment
        git("add", path)
        done = git("commit", "-q", "-m", message, "--", path)
        if done.returncode == 0 or "nothing" in done.stdout:
            return
        if git("diff", "--quiet", "HEAD", "--", path).returncode == 0:
            return  # committed meanwhile (another runner's commit took this file along)
        time.sleep(3)
    print(f"warning: could not commit {path}: {done.stderr.strip()}", file=sys.stderr)
