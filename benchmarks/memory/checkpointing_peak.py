"""Peak CPU memory of one APT training step with and without gradient checkpointing.

The step is the one issue 8 is about: two forwards before one backward (R-Drop style), on a MiniLM-shaped random BERT
(6 layers x 384, 12 heads), batch 8 x 128 tokens per forward, prefix 16. No timing: memory only.

Two measures, both from PyTorch itself (no RSS, which the allocator's caching blurs):
- peak: the highest sum of live CPU allocations during the step, above what was live before it, replayed from the
  allocation and free events of torch.profiler (profile_memory=True);
- saved: activation bytes the autograd graph holds for backward after both forwards (saved_tensors_hooks, each
  storage once, parameters left out), which is what checkpointing trades for recomputation.

Run: .venv/bin/python benchmarks/memory/checkpointing_peak.py  (writes results/checkpointing_peak.json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from adaprefix import AdaptivePrefixConfig, attach  # noqa: E402
from adaprefix.analysis.run_info import run_metadata  # noqa: E402

BATCH, LENGTH, PREFIX = 8, 128, 16


def build(checkpointing: bool):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "sdpa"
    model = BertForSequenceClassification(config)
    attach(model, AdaptivePrefixConfig(prefix_length=PREFIX, prefix_dropout=0.1))
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model.train()


def batches():
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        yield torch.randint(1000, 30000, (BATCH, LENGTH), generator=g), torch.randint(0, 2, (BATCH,), generator=g)


def step(model, saved: list[int]):
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = set()

    def pack(t):  # count each activation storage once; parameters saved for backward are not activations
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved[0] += storage.nbytes()
        return t

    loss = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for ids, labels in batches():
            loss = loss + model(input_ids=ids, labels=labels).loss
    loss.backward()


def peak_bytes(prof) -> int:
    # Every allocation (+) and free (-) as the profiler recorded it, in time order.
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live, peak = 0, 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measure(checkpointing: bool) -> dict:
    model = build(checkpointing)
    step(model, [0])  # warm-up: lazy initialisations stay out of the measurement
    model.zero_grad(set_to_none=False)
    saved = [0]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(model, saved)
    return {"gradient_checkpointing": checkpointing, "peak_mib": round(peak_bytes(prof) / 2**20, 1),
            "saved_for_backward_mib": round(saved[0] / 2**20, 1)}


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    rows = [measure(False), measure(True)]
    result = {
        "what": "one APT step, two forwards (8 x 128 each) then one backward, MiniLM-shaped random BERT, prefix 16",
        "rows": rows,
        "peak_ratio_checkpointed_over_plain": round(rows[1]["peak_mib"] / rows[0]["peak_mib"], 3),
        **run_metadata(),
    }
    out = Path(__file__).parent / "results" / "checkpointing_peak.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
