"""adaprefix.files: atomic writes (permissions, nothing left behind on failure) and the one JSON-lines reader."""

import json
import os

import pytest
import torch

from adaprefix.errors import AdaprefixError
from adaprefix.files import (JsonLinesError, append_jsonl, atomic_replace_dir, atomic_write, atomic_write_json,
                             atomic_write_text, parse_jsonl, read_jsonl)


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def test_a_torn_last_line_is_dropped_and_the_records_before_it_are_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: dropped a torn last line"):
        assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_a_bad_middle_line_raises_naming_the_file_and_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(JsonLinesError, match=r"metrics.jsonl:2: malformed JSON line") as err:
        read_jsonl(path)
    assert (err.value.path, err.value.line) == (str(path), 2)
    assert isinstance(err.value, AdaprefixError) and isinstance(err.value, ValueError)


def test_a_bad_last_line_that_was_written_whole_is_an_error_not_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2\n')  # the line end was written, so the line is not cut short
    with pytest.raises(JsonLinesError, match=":2: malformed"):
        read_jsonl(path)


def test_a_data_file_s_bad_last_line_is_an_error_under_the_error_policy():
    with pytest.raises(JsonLinesError, match=r"train.jsonl:2: malformed JSON line"):
        parse_jsonl('{"a": 1}\n{"a": ', "train.jsonl", torn_last_line="error")
    with pytest.raises(ValueError, match="torn_last_line: expected one of drop, error, got 'skip'"):
        parse_jsonl("", "x", torn_last_line="skip")


def test_blank_lines_are_skipped_but_counted_and_a_last_line_without_line_end_is_read():
    text = '{"a": 1}\n\n  \n[2]\r\n{"a": 3}'
    assert parse_jsonl(text, "x") == [(1, {"a": 1}), (4, [2]), (5, {"a": 3})]
    assert parse_jsonl("", "x") == [] and parse_jsonl("\n", "x") == []


def test_records_must_be_objects_and_a_missing_file_has_none(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(JsonLinesError, match=r"runs.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_append_after_a_kill_removes_the_torn_line_instead_of_gluing_the_next_record_to_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with open(path, "a") as handle:
        handle.write('{"epoch": 2, "dev_acc"')  # killed mid-append
    append_jsonl(path, {"epoch": 2, "dev_acc": 0.5})
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2, "dev_acc": 0.5}\n'


def test_append_keeps_a_whole_last_record_that_only_lacks_its_line_end(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"a": 1}')
    append_jsonl(path, {"a": 2})
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a" / "b.txt", "x")  # missing parents are made
    atomic_write_json(tmp_path / "c.json", {"loss": torch.tensor(0.5).item(), "n": 2})
    atomic_replace_dir(tmp_path / "d", lambda folder: (folder / "f").write_text("y"))
    assert (tmp_path / "a" / "b.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert json.loads((tmp_path / "c.json").read_text()) == {"loss": 0.5, "n": 2}
    assert (tmp_path / "d" / "f").read_text() == "y"


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "adapter.safetensors"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"]


def test_a_failing_folder_write_keeps_the_old_folder_and_leaves_no_temporary_one(tmp_path):
    atomic_replace_dir(tmp_path / "adapter", lambda folder: (folder / "w").write_text("old"))

    def fail(folder):
        (folder / "w").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_replace_dir(tmp_path / "adapter", fail)
    assert (tmp_path / "adapter" / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    atomic_replace_dir(tmp_path / "adapter", lambda folder: (folder / "w").write_text("new"))
    assert (tmp_path / "adapter" / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
