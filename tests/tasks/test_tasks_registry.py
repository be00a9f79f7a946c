"""Task registry, data-dir resolution and the "data not found" error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import adaprefix.tasks.data_dir as data_dir_mod
from adaprefix.tasks import (
    KINDS,
    TASKS,
    DataError,
    UnknownTaskError,
    canonical_split,
    describe_tasks,
    get_task,
    resolve_data_dir,
)

SUPERGLUE = ["boolq", "cb", "copa", "rte", "wic", "wsc"]
NAMES = [*SUPERGLUE, "conll03", "conll04", "ontonotes", *(f"{name}-t2t" for name in SUPERGLUE)]


def test_registry_names_and_kinds():
    assert sorted(TASKS) == sorted(NAMES)
    for name in NAMES:
        task = get_task(name)
        assert task.name == name and task.kind in KINDS
        assert task.main_metric in task.metric_names
    assert get_task("CoNLL2003").name == "conll03"
    assert get_task("copa").kind == "multiple-choice"
    assert get_task("copa-t2t").kind == "generation"


def test_unknown_task_lists_known():
    with pytest.raises(UnknownTaskError) as err:
        get_task("mnli")
    msg = str(err.value)
    assert "'mnli'" in msg and all(name in msg for name in NAMES)


def test_split_aliases():
    assert [canonical_split(s) for s in ("train", "val", "valid", "validation", "dev", "test")] == [
        "train", "dev", "dev", "dev", "dev", "test",
    ]
    with pytest.raises(DataError, match="unknown split 'eval'"):
        canonical_split("eval")


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    env.mkdir()
    monkeypatch.setenv("ADAPREFIX_DATA_DIR", str(env))
    assert resolve_data_dir(explicit) == explicit
    assert resolve_data_dir(None) == env
    monkeypatch.delenv("ADAPREFIX_DATA_DIR")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_data_dir(None) == (tmp_path / "shared" / "data").resolve()


def test_resolve_data_dir_falls_back_to_repo_sibling_or_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo_sibling = Path(data_dir_mod.__file__).resolve().parents[3] / "shared" / "data"
    assert resolve_data_dir(None) == (repo_sibling if repo_sibling.is_dir() else None)


def test_explicit_missing_dir_is_kept_and_named(tmp_path):
    missing = tmp_path / "no-such-dir"
    assert resolve_data_dir(missing) == missing
    with pytest.raises(DataError) as err:
        get_task("rte").load("train", missing)
    msg = str(err.value)
    assert str(missing / "superglue/RTE/train.jsonl") in msg
    assert f"--data-dir argument ({missing}: missing)" in msg
    assert "environment variable ADAPREFIX_DATA_DIR (not given)" in msg
    assert "../shared/data from the current directory" in msg and "shared/data beside the repository" in msg
    assert "put the official files" in msg


def test_no_data_dir_at_all(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_dir_mod, "resolve_data_dir", lambda data_dir=None: None)
    with pytest.raises(DataError, match="no data dir found"):
        get_task("conll04").load("train")


def test_describe_tasks(tmp_path):
    (tmp_path / "superglue/CB").mkdir(parents=True)
    (tmp_path / "superglue/CB/val.jsonl").write_text(json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral"}))
    rows = {r.name: r for r in describe_tasks(tmp_path)}
    assert list(rows) == list(TASKS)
    assert rows["cb"].found and rows["cb"].splits == {"train": False, "dev": True, "test": False}
    assert rows["cb"].where == str(tmp_path / "superglue/CB") and rows["cb"].num_labels == 3
    assert not rows["rte"].found and rows["rte"].where == str(tmp_path / "superglue/RTE")
    assert rows["conll03"].num_labels == 9 and rows["conll03"].kind == "token-classification"
    assert rows["ontonotes"].num_labels is None and not rows["ontonotes"].found
