"""benchmarks/decoder/prefix_mass.py: the share of attention a prefix takes, read from eager attention weights whose
prefix columns come first."""

from pathlib import Path

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from decoder_helpers import tiny_llama
from script_helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decoder" / "prefix_mass.py"


@pytest.fixture(scope="module")
def prefix_mass():
    return load_script(SCRIPT, "prefix_mass")


def test_shares_are_averaged_over_heads_and_real_queries_only(prefix_mass):
    # one layer, 1 row, 2 heads, 3 queries (the last one padding), 2 prefix columns + 3 key columns
    weights = torch.zeros(1, 2, 3, 5)
    weights[0, 0, :, 0], weights[0, 1, :, 1] = 0.5, 0.1   # head 0: 0.5 on the prefix, head 1: 0.1
    weights[0, :, 2, :2] = 1.0                             # the pad query: all on the prefix, not counted
    shares = prefix_mass.prefix_shares([weights, weights * 0], torch.tensor([[1, 1, 0]]), prefix_length=2)
    assert shares == pytest.approx([0.3, 0.0])
    with pytest.raises(ValueError, match="expected 3 prefix columns, got 2"):
        prefix_mass.prefix_shares([weights], torch.tensor([[1, 1, 0]]), prefix_length=3)


def test_the_prefix_columns_come_first_in_the_attention_weights():
    """What prefix_shares assumes of the injection: under a causal mask the first query sees the prefix and itself,
    so its weights after column prefix + 1 are zero, and the prefix's share equals 1 minus the real tokens'."""
    model = tiny_llama(20)
    model.config._attn_implementation = "eager"
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=3, prefix_init_std=1.0))
    with torch.no_grad():
        attentions = model(input_ids=torch.tensor([[1, 5, 6, 7]]), output_attentions=True).attentions
    for layer in attentions:
        assert layer.shape[-1] == 3 + 4
        assert torch.all(layer[0, :, 0, 4:] == 0) and torch.all(layer[0, :, 0, :3].sum(-1) > 0)
        assert torch.allclose(layer.sum(-1), torch.ones(layer.shape[:-1]))
