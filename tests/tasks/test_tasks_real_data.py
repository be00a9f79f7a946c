"""The official files in shared/data, when present: record counts (data/README.md), label sets, encoding."""

from __future__ import annotations

import pytest

from adaprefix.tasks import get_task, resolve_data_dir
from adaprefix.tasks.ner import sorted_label_set

# Resolved at collection, before the autouse fixture clears ADAPREFIX_DATA_DIR for the other tests.
REAL_DATA_DIR = resolve_data_dir(None)

pytestmark = pytest.mark.skipif(REAL_DATA_DIR is None, reason="no shared data dir (set ADAPREFIX_DATA_DIR)")


def _need(task, split):
    if not task.has_split(split, REAL_DATA_DIR):
        pytest.skip(f"{task.name} {split} not in {REAL_DATA_DIR}")


@pytest.mark.parametrize(
    "name, split, count",
    [
        ("cb", "train", 250), ("cb", "dev", 56), ("cb", "test", 250),
        ("copa", "train", 400), ("copa", "dev", 100), ("copa", "test", 500),
        ("rte", "train", 2490), ("rte", "dev", 277),
        ("wic", "train", 5428), ("wic", "dev", 638),
        ("wsc", "train", 554), ("wsc", "dev", 104),
        ("boolq", "dev", 3270), ("boolq", "test", 3245),
        ("conll03", "train", 14041), ("conll03", "dev", 3250), ("conll03", "test", 3453),
        ("conll04", "train", 910), ("conll04", "dev", 243), ("conll04", "test", 288),
    ],
)
def test_record_counts(name, split, count):
    task = get_task(name)
    _need(task, split)
    examples = task.load(split, REAL_DATA_DIR)
    assert len(examples) == count
    if task.kind != "token-classification":
        labelled = [ex["label"] is not None for ex in examples]
        assert all(labelled) if split != "test" else not any(labelled)


def test_cb_label_distribution():
    task = get_task("cb")
    _need(task, "train")
    labels = [task.labels[ex["label"]] for ex in task.load("train", REAL_DATA_DIR)]
    assert (labels.count("entailment"), labels.count("contradiction"), labels.count("neutral")) == (115, 119, 16)


@pytest.mark.parametrize("name, tokens", [("conll03", 203621), ("conll04", 26804)])
def test_ner_fixed_labels_match_train(name, tokens):
    task = get_task(name)
    _need(task, "train")
    examples = task.load("train", REAL_DATA_DIR)
    assert sum(len(ex["tokens"]) for ex in examples) == tokens
    assert sorted_label_set(t for ex in examples for t in ex["tags"]) == task.labels


def test_conll03_entity_counts():
    task = get_task("conll03")
    _need(task, "test")
    tags = [t for ex in task.load("test", REAL_DATA_DIR) for t in ex["tags"]]
    assert [tags.count(f"B-{t}") for t in ("PER", "LOC", "ORG", "MISC")] == [1617, 1668, 1661, 702]


@pytest.mark.parametrize("name", ["cb", "copa", "wsc", "conll04"])
def test_real_dev_encodes(name, tokenizer):
    task = get_task(name)
    _need(task, "dev")
    enc = task.encode(task.load("dev", REAL_DATA_DIR), tokenizer, max_length=128)
    assert enc.num_examples == len(enc.dataset) and enc.has_labels
    assert all(len(ids) <= 128 for row in enc.dataset for ids in _id_lists(row["input_ids"]))
    batch = task.collator(tokenizer)([enc.dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 4


def _id_lists(ids):
    return ids if ids and isinstance(ids[0], list) else [ids]
