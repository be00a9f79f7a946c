"""Code blocks of the README and the documentation pages, read and run as written (tests/test_readme.py,
tests/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """Every fenced block of ``language`` in a markdown file: (line number of its first code line, code)."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(2)) + 1, m.group(2)) for m in _FENCE.finditer(text)
            if m.group(1) == language]


def run_python_blocks(path: Path, tmp_path: Path, monkeypatch, replace: dict[str, str] | None = None,
                      first_only: bool = False) -> dict:
    """Run a page's Python blocks in order, in one namespace, in ``tmp_path`` (they write files) with the hub offline.

    ``replace`` swaps a text the page shows (a placeholder path such as ``"path/to/decoder"``) for one that exists
    here; each must occur in the page. Tracebacks name the page and its line numbers.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blocks = code_blocks(path, "python")[:1] if first_only else code_blocks(path, "python")
    assert blocks, f"{path}: no python block"
    text = "".join(code for _, code in blocks)
    for shown in replace or {}:
        assert shown in text, f"{path}: {shown!r} not shown any more; update the test's replacement"
    namespace: dict = {}
    for line, code in blocks:
        for shown, here in (replace or {}).items():
            code = code.replace(shown, here)
        exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
    return namespace
