"""New inputs for prediction in each task's own example format (what `adaprefix predict` reads)."""

import pytest

from adaprefix.tasks import CustomSequenceTask, CustomTokenTask, DataError, get_task
from adaprefix.tasks.inputs import input_fields, input_view, parse_inputs


def test_texts_and_pairs_become_the_task_fields():
    assert parse_inputs(get_task("rte"), "A man plays.", "Someone plays.") == [
        {"premise": "A man plays.", "hypothesis": "Someone plays."}]
    assert parse_inputs(CustomSequenceTask(), "fine") == [{"text": "fine"}]
    assert input_fields(CustomSequenceTask(text_pair_column="b")) == ("text", "text_pair")
    assert parse_inputs(CustomTokenTask(), "John  lives in Boston") == [{"tokens": ["John", "lives", "in", "Boston"]}]


def test_a_text_file_holds_one_input_per_line(tmp_path):
    inputs = tmp_path / "inputs.txt"
    inputs.write_bytes(b"\xef\xbb\xbfone\ttwo\r\n\r\nthree\tfour\n")
    assert parse_inputs(get_task("cb"), file=inputs) == [{"premise": "one", "hypothesis": "two"},
                                                        {"premise": "three", "hypothesis": "four"}]


def test_jsonl_records_are_checked_for_the_fields_the_task_reads(tmp_path):
    records = tmp_path / "inputs.jsonl"
    records.write_text('{"sentence": "x", "label": 1}\n{"sentence": "y"}\n')
    task = CustomSequenceTask(text_column="sentence")
    assert parse_inputs(task, file=records) == [{"text": "x"}, {"text": "y"}]
    records.write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="inputs.jsonl:1: missing field\\(s\\) sentence; present: text"):
        parse_inputs(task, file=records)


@pytest.mark.parametrize("task,kwargs,message", [
    ("copa", {"text": "x"}, "takes fields premise, choice1, choice2, question: pass --file"),
    ("rte", {"text": "x"}, "takes a pair \\(premise, hypothesis\\); give both"),
    ("rte", {}, "give an input text"),
    ("rte", {"file": "missing.txt"}, "missing.txt: input file not found"),
])
def test_inputs_the_task_cannot_take_are_refused(task, kwargs, message):
    with pytest.raises(DataError, match=message):
        parse_inputs(get_task(task), **kwargs)


def test_the_view_drops_labels_and_bookkeeping():
    example = {"text": "x", "text_pair": None, "label": 1, "source": "f:1", "tags": ["O"], "tag_ids": [0]}
    assert input_view(example) == {"text": "x"}
