"""SuperGLUE tasks: input formats, labels, unlabelled test splits, validation, truncation, metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification, EvalPrediction

from adaprefix.tasks import DataError, get_task


def _decode(tokenizer, ids):
    return tokenizer.decode(ids)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("boolq", ("is water wet", "Water -- Water is a liquid.")),
        ("cb", ("It rained.", "The ground is wet.")),
        ("rte", ("A dog barks.", "An animal makes noise.")),
        ("wic", ("class: An emerging professional class.", "class: She has real class.")),
        ("wsc", ("himself: Mark told Pete many lies about himself.", "Pete")),
    ],
)
def test_pair_formats(superglue_dir, name, expected):
    task = get_task(name)
    ex = task.load("train", superglue_dir)[0]
    assert task.format(ex) == expected
    assert ex["source"].endswith("train.jsonl:1")


def test_copa_pairs_and_encoding(superglue_dir, tokenizer):
    task = get_task("copa")
    examples = task.load("dev", superglue_dir)
    assert task.format(examples[0]) == [
        ("The man turned on the faucet. so", "The toilet filled with water."),
        ("The man turned on the faucet. so", "Water flowed from the spout."),
    ]
    assert task.format(examples[1])[0] == ("My body cast a shadow. because", "The sun was rising.")
    enc = task.encode(examples, tokenizer, max_length=64)
    row = enc.dataset[0]
    assert len(row["input_ids"]) == 2 and row["labels"] == 1
    assert _decode(tokenizer, row["input_ids"][0]) == (
        "[CLS] the man turned on the faucet. so [SEP] the toilet filled with water. [SEP]"
    )
    assert _decode(tokenizer, row["input_ids"][1]) == (
        "[CLS] the man turned on the faucet. so [SEP] water flowed from the spout. [SEP]"
    )
    batch = task.collator(tokenizer)([enc.dataset[i] for i in range(2)])
    assert batch["input_ids"].dim() == 3 and batch["input_ids"].shape[:2] == (2, 2)
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["labels"].tolist() == [1, 0]
    assert task.auto_model_class() is AutoModelForMultipleChoice


def test_pair_encoding_and_collator(superglue_dir, tokenizer):
    task = get_task("wsc")
    enc = task.encode(task.load("dev", superglue_dir), tokenizer, max_length=64)
    assert enc.num_examples == 2 and enc.num_truncated == 0 and enc.has_labels
    assert _decode(tokenizer, enc.dataset[0]["input_ids"]) == (
        "[CLS] himself : mark told pete many lies about himself. [SEP] pete [SEP]"
    )
    batch = task.collator(tokenizer)([enc.dataset[i] for i in range(2)])
    assert batch["input_ids"].shape[0] == 2 and batch["labels"].tolist() == [0, 1]
    assert task.auto_model_class() is AutoModelForSequenceClassification


@pytest.mark.parametrize(
    "name, labels, ids",
    [
        ("boolq", ["False", "True"], [1, 0]),
        ("cb", ["entailment", "contradiction", "neutral"], [0, 1, 2]),
        ("rte", ["entailment", "not_entailment"], [0, 1]),
        ("wic", ["False", "True"], [0, 1]),
        ("wsc", ["False", "True"], [0, 1]),
        ("copa", ["choice1", "choice2"], [1, 0]),
    ],
)
def test_label_maps(superglue_dir, name, labels, ids):
    task = get_task(name)
    assert task.labels == labels
    assert task.label2id == {label: i for i, label in enumerate(labels)}
    assert [ex["label"] for ex in task.load("train", superglue_dir)] == ids
    assert task.eval_split == "dev" and task.test_split is None


def test_bool_labels_accept_strings(tmp_path, write_jsonl):
    write_jsonl(
        tmp_path / "superglue/BoolQ/val.jsonl",
        [{"question": "q", "passage": "p", "label": "true"}, {"question": "q", "passage": "p", "label": "False"}],
    )
    assert [ex["label"] for ex in get_task("boolq").load("val", tmp_path)] == [1, 0]


def test_flat_layout_is_accepted(tmp_path, write_jsonl):
    write_jsonl(tmp_path / "RTE/val.jsonl", [{"premise": "a", "hypothesis": "b", "label": "entailment"}])
    assert len(get_task("rte").load("validation", tmp_path)) == 1


@pytest.mark.parametrize("name", ["boolq", "cb", "copa", "rte", "wic", "wsc"])
def test_test_split_is_unlabelled(superglue_dir, tokenizer, name):
    task = get_task(name)
    examples = task.load("test", superglue_dir)
    assert all(ex["label"] is None for ex in examples)
    enc = task.encode(examples, tokenizer, max_length=64)
    assert not enc.has_labels
    assert all(row["labels"] == -100 for row in enc.dataset)


def test_malformed_json_line(tmp_path, write_jsonl):
    path = write_jsonl(
        tmp_path / "superglue/CB/train.jsonl",
        [{"premise": "a", "hypothesis": "b", "label": "neutral"}],
        raw_lines=['{"premise": "a", "hypothesis": '],
    )
    with pytest.raises(DataError) as err:
        get_task("cb").load("train", tmp_path)
    assert f"{path}:2" in str(err.value) and "malformed JSON" in str(err.value)


def test_non_object_line(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "superglue/CB/train.jsonl", [], raw_lines=["[1, 2]"])
    with pytest.raises(DataError, match="JSON object") as err:
        get_task("cb").load("train", tmp_path)
    assert f"{path}:1" in str(err.value)


def test_missing_field_names_field_and_fields_present(tmp_path, write_jsonl):
    path = write_jsonl(
        tmp_path / "superglue/RTE/train.jsonl",
        [{"premise": "a", "hypothesis": "b", "label": "entailment"}, {"premise": "a", "label": "entailment"}],
    )
    with pytest.raises(DataError) as err:
        get_task("rte").load("train", tmp_path)
    msg = str(err.value)
    assert f"{path}:2" in msg and "'hypothesis'" in msg and "['label', 'premise']" in msg


def test_missing_nested_field(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "superglue/WSC/val.jsonl", [{"text": "t", "label": True, "target": {"span2_text": "it"}}])
    with pytest.raises(DataError) as err:
        get_task("wsc").load("dev", tmp_path)
    assert f"{path}:1" in str(err.value) and "target.span1_text" in str(err.value)


def test_missing_label_outside_test(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "superglue/CB/val.jsonl", [{"premise": "a", "hypothesis": "b"}])
    with pytest.raises(DataError, match="'label'") as err:
        get_task("cb").load("dev", tmp_path)
    assert f"{path}:1" in str(err.value)


def test_wrong_type_field(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "superglue/CB/val.jsonl", [{"premise": 3, "hypothesis": "b", "label": "neutral"}])
    with pytest.raises(DataError, match="Expected a string, got 3") as err:
        get_task("cb").load("dev", tmp_path)
    assert f"{path}:1" in str(err.value)


def test_unknown_label_lists_known_ones(tmp_path, write_jsonl):
    path = write_jsonl(
        tmp_path / "superglue/CB/train.jsonl",
        [{"premise": "a", "hypothesis": "b", "label": "neutral"}, {"premise": "a", "hypothesis": "b", "label": "maybe"}],
    )
    with pytest.raises(DataError) as err:
        get_task("cb").load("train", tmp_path)
    msg = str(err.value)
    assert f"{path}:2" in msg and "'maybe'" in msg and "'entailment', 'contradiction', 'neutral'" in msg


def test_copa_bad_question(tmp_path, write_jsonl):
    rec = {"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 0}
    path = write_jsonl(tmp_path / "superglue/COPA/train.jsonl", [rec])
    with pytest.raises(DataError, match="'cause' or 'effect'") as err:
        get_task("copa").load("train", tmp_path)
    assert f"{path}:1" in str(err.value)


def test_empty_split(tmp_path, write_text):
    path = write_text(tmp_path / "superglue/RTE/train.jsonl", "\n\n")
    with pytest.raises(DataError, match="no examples") as err:
        get_task("rte").load("train", tmp_path)
    assert str(path) in str(err.value)


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        get_task("boolq").load("train", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "superglue/BoolQ/train.jsonl") in msg and str(tmp_path / "BoolQ/train.jsonl") in msg
    assert "--data-dir" in msg and "ADAPREFIX_DATA_DIR" in msg and "HF_HUB_OFFLINE" in msg


def test_truncation_is_counted_and_keeps_question(tmp_path, write_jsonl, tokenizer):
    long_passage = " ".join(["word"] * 200)
    write_jsonl(
        tmp_path / "superglue/BoolQ/val.jsonl",
        [
            {"question": "is it short", "passage": "yes", "label": True},
            {"question": "is it long", "passage": long_passage, "label": False},
        ],
    )
    task = get_task("boolq")
    enc = task.encode(task.load("dev", tmp_path), tokenizer, max_length=32)
    assert enc.num_truncated == 1
    lengths = [len(r["input_ids"]) for r in enc.dataset]
    assert lengths[0] < 32 and lengths[1] == 32
    assert _decode(tokenizer, enc.dataset[1]["input_ids"]).startswith("[CLS] is it long [SEP] word word")


def test_copa_truncation_counts_examples_not_choices(tmp_path, write_jsonl, tokenizer):
    long = " ".join(["long"] * 50)
    recs = [
        {"premise": "p.", "choice1": long, "choice2": long, "question": "cause", "label": 0},
        {"premise": "p.", "choice1": "a", "choice2": "b", "question": "effect", "label": 1},
    ]
    write_jsonl(tmp_path / "superglue/COPA/val.jsonl", recs)
    task = get_task("copa")
    enc = task.encode(task.load("dev", tmp_path), tokenizer, max_length=16)
    assert enc.num_truncated == 1
    assert all(len(ids) == 16 for ids in enc.dataset[0]["input_ids"])


def test_accuracy_metric():
    task = get_task("rte")
    logits = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [0.0, 5.0]])
    labels = np.array([0, 0, 0, -100])
    out = task.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert out == {"accuracy": pytest.approx(2 / 3)}


def test_cb_accuracy_and_macro_f1():
    task = get_task("cb")
    assert task.metric_names == ("accuracy", "macro_f1")
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    logits = np.eye(3)[preds]
    out = task.compute_metrics(EvalPrediction(predictions=(logits,), label_ids=labels))
    # per class F1 = 2tp / (2tp + fp + fn): class0 2/(2+1+1), class1 4/(4+1+0), class2 2/(2+0+1)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert out["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(labels, preds, average="macro"))


def test_copa_metric():
    task = get_task("copa")
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    out = task.compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([1, 1, 1])))
    assert out["accuracy"] == pytest.approx(2 / 3)


def test_hub_fallback_converts_records(tmp_path, monkeypatch):
    import adaprefix.tasks.hub as hub

    calls = []

    def fake(source, config, split):
        calls.append((source.path, config, split))
        return [
            {"text": "t", "span1_index": 0, "span2_index": 3, "span1_text": "Mark", "span2_text": "he", "idx": 0, "label": 1},
            {"text": "u", "span1_index": 0, "span2_index": 3, "span1_text": "Ann", "span2_text": "she", "idx": 1, "label": -1},
        ], None

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "load_hub_split", fake)
    examples = get_task("wsc").load("test", tmp_path)
    assert calls == [("aps/super_glue", "wsc.fixed", "test")]
    assert [ex["label"] for ex in examples] == [1, None]
    assert get_task("wsc").format(examples[0]) == ("he: t", "Mark")


def test_hub_failure_gives_clear_error(tmp_path, monkeypatch):
    import adaprefix.tasks.hub as hub

    def fail(source, config, split):
        raise ConnectionError("hub unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "load_hub_split", fail)
    with pytest.raises(DataError) as err:
        get_task("cb").load("train", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "superglue/CB/train.jsonl") in msg and "hub unreachable" in msg


def test_records_keep_raw_fields(superglue_dir):
    ex = get_task("wic").load("train", superglue_dir)[0]
    assert ex["start1"] == 25 and ex["word"] == "class"
    json.dumps({k: v for k, v in ex.items()})  # plain JSON-able data


def test_multiple_choice_rows_are_ordered_by_their_longest_choice(superglue_dir, tokenizer):
    task = get_task("copa")
    encoded = task.encode(task.load("train", superglue_dir), tokenizer, 128)
    longest = [max(len(choice) for choice in row["input_ids"]) for row in encoded.dataset_by_length]
    assert longest == sorted(longest) and len(encoded.dataset_by_length) == len(encoded.rows)
