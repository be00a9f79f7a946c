"""Bring-your-own data: jsonl/json/csv/tsv sequence classification and CoNLL token classification."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from adaprefix.tasks import CustomSequenceTask, CustomTokenTask, DataError


@pytest.fixture
def jsonl_task(tmp_path, write_jsonl):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"q": "good movie", "ctx": "a", "y": "pos"},
            {"q": "bad movie", "ctx": "b", "y": "neg"},
            {"q": "ok movie", "ctx": "c", "y": "neutral"},
        ],
    )
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"q": "great", "ctx": "d", "y": "pos"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"q": "fine", "ctx": "e"}])
    return CustomSequenceTask(train=train, dev=dev, test=test, text_column="q", text_pair_column="ctx", label_column="y")


def test_jsonl_pairs_and_sorted_labels(jsonl_task, tokenizer):
    assert jsonl_task.labels == ["neg", "neutral", "pos"]
    train = jsonl_task.load("train")
    assert [ex["label"] for ex in train] == [2, 0, 1]
    assert jsonl_task.format(train[0]) == ("good movie", "a")
    enc = jsonl_task.encode(train, tokenizer, max_length=16)
    assert tokenizer.decode(enc.dataset[0]["input_ids"]) == "[CLS] good movie [SEP] a [SEP]"
    test = jsonl_task.load("test")
    assert test[0]["label"] is None
    assert jsonl_task.encode(test, tokenizer, max_length=16).dataset[0]["labels"] == -100
    assert jsonl_task.test_split == "test" and jsonl_task.kind == "sequence-classification"


def test_csv_single_text(tmp_path, write_text, tokenizer):
    train = write_text(tmp_path / "train.csv", 'text,label\n"hello, world",1\nbye,0\n\n"multi\nline",10\n')
    task = CustomSequenceTask(train=train, dev=train)
    assert task.labels == ["0", "1", "10"]  # numeric order
    examples = task.load("train")
    assert [ex["text"] for ex in examples] == ["hello, world", "bye", "multi\nline"]
    assert examples[2]["source"].endswith("train.csv:5")
    enc = task.encode(examples, tokenizer, max_length=8)
    assert enc.dataset[0]["labels"] == 1 and "token_type_ids" in enc.dataset.column_names


def test_tsv_and_given_labels(tmp_path, write_text):
    train = write_text(tmp_path / "train.tsv", "sentence\tlabel\nyes\ttrue\nno\tfalse\n")
    task = CustomSequenceTask(train=train, text_column="sentence", labels=["true", "false"])
    assert [ex["label"] for ex in task.load("train")] == [0, 1]


def test_json_bool_labels_and_array_file(tmp_path, write_text):
    train = write_text(tmp_path / "train.json", '[{"text": "a", "label": true}, {"text": "b", "label": false}]')
    task = CustomSequenceTask(train=train)
    assert task.labels == ["false", "true"]
    assert [ex["label"] for ex in task.load("train")] == [1, 0]


def test_custom_metrics(jsonl_task):
    logits = np.eye(3)[[0, 1, 2, 2]]
    out = jsonl_task.compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 2, 1])))
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_malformed_jsonl(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}], raw_lines=["{oops}"])
    with pytest.raises(DataError, match="malformed JSON") as err:
        CustomSequenceTask(train=path).load("train")
    assert f"{path}:2" in str(err.value)


def test_missing_field_lists_present(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"sentence": "b", "label": "x"}])
    with pytest.raises(DataError) as err:
        CustomSequenceTask(train=path).load("train")
    msg = str(err.value)
    assert f"{path}:2" in msg and "'text'" in msg and "['label', 'sentence']" in msg


def test_missing_csv_column(tmp_path, write_text):
    path = write_text(tmp_path / "train.csv", "sentence,label\na,x\n")
    with pytest.raises(DataError) as err:
        CustomSequenceTask(train=path).load("train")
    assert f"{path}:2" in str(err.value) and "'text'" in str(err.value) and "sentence" in str(err.value)


def test_csv_wrong_cell_count(tmp_path, write_text):
    path = write_text(tmp_path / "train.csv", "text,label\na,x\nb,c,x\n")
    with pytest.raises(DataError) as err:
        CustomSequenceTask(train=path).load("train")
    assert f"{path}:3" in str(err.value) and "2 cells" in str(err.value)


def test_unknown_label_in_dev(tmp_path, write_jsonl):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "a", "label": "x"}, {"text": "c", "label": "z"}])
    with pytest.raises(DataError) as err:
        CustomSequenceTask(train=train, dev=dev).load("dev")
    msg = str(err.value)
    assert f"{dev}:2" in msg and "'z'" in msg and "['x', 'y']" in msg


def test_empty_label_in_train(tmp_path, write_text):
    path = write_text(tmp_path / "train.csv", "text,label\na,x\nb,\n")
    with pytest.raises(DataError, match="empty label") as err:
        CustomSequenceTask(train=path).load("train")
    assert f"{path}:3" in str(err.value)


def test_empty_split(tmp_path, write_text, write_jsonl):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}])
    dev = write_text(tmp_path / "dev.jsonl", "")
    with pytest.raises(DataError, match="no examples") as err:
        CustomSequenceTask(train=train, dev=dev).load("dev")
    assert str(dev) in str(err.value)


def test_unknown_extension_and_missing_files(tmp_path, write_text):
    path = write_text(tmp_path / "train.txt", "x")
    with pytest.raises(DataError, match="cannot tell whether this is tagging or classification data") as err:
        CustomSequenceTask(train=path).load("train")
    assert f"{path}:1:" in str(err.value) and "--format conll" in str(err.value)
    with pytest.raises(DataError, match="file not found") as err:
        CustomSequenceTask(train=tmp_path / "nope.jsonl").load("train")
    assert "nope.jsonl" in str(err.value)
    with pytest.raises(DataError, match="no dev file"):
        CustomSequenceTask(train=path).load("dev")


def test_file_format_override(tmp_path, write_text):
    path = write_text(tmp_path / "train.txt", "text\tlabel\na\tx\n")
    assert len(CustomSequenceTask(train=path, file_format="tsv").load("train")) == 1


def test_custom_token_task(tmp_path, write_text, tokenizer):
    train = write_text(tmp_path / "train.conll", "1\tParis\tNNP\tB-LOC\n2\tis\tVBZ\tO\n\n1\tBob\tNNP\tS-PER\n")
    task = CustomTokenTask(train=train, dev=train, token_column=1, tag_column=3, delimiter="\t")
    assert task.labels == ["O", "B-LOC", "S-PER"]
    examples = task.load("dev")
    assert examples[0]["tokens"] == ["Paris", "is"] and examples[1]["tags"] == ["S-PER"]
    enc = task.encode(examples, tokenizer, max_length=16)
    assert enc.dataset[0]["labels"] == [-100, 1, 0, -100]


def test_custom_token_bad_line(tmp_path, write_text):
    path = write_text(tmp_path / "train.conll", "Paris B-LOC\nis\n")
    with pytest.raises(DataError) as err:
        CustomTokenTask(train=path).load("train")
    assert f"{path}:2" in str(err.value) and "got 1 columns" in str(err.value)
