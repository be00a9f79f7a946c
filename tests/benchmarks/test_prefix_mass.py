"""benchmarks/decoder/prefix_mass.py: the share of attention a prefix takes, read from eager attention weights whose
prefix columns come first."""

from pathlib import Path

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from decoder_helpers import tiny_llama
from tiny_models import tiny_model
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


@pytest.mark.parametrize("attention_mask", [[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]],
                         ids=["padded", "unpadded: transformers passes no mask"])
@pytest.mark.parametrize("build", [lambda: tiny_llama(20), lambda: tiny_model("gemma3_text", impl="eager")],
                         ids=["llama", "gemma3: scaling by query_pre_attn_scalar, not head_dim"])
def test_zero_key_share_of_the_bare_model_is_what_a_zero_prefix_takes_in_the_first_layer(prefix_mass, attention_mask,
                                                                                      build):
    """The probe's l / (l + Z), read from the model without a prefix, against the share the injected prefix takes
    when its keys and values are 0 (the injection's own attention weights): equal in layer 0, where the prefix has
    not yet changed the hidden states. Grouped heads, padding and the causal mask all enter both."""
    model = build()
    model.config._attn_implementation = "eager"
    batch = {"input_ids": torch.tensor([[1, 5, 6, 7, 8], [1, 9, 4, 0, 0]]),
             "attention_mask": torch.tensor(attention_mask)}
    stats = prefix_mass.real_logit_stats(model, batch, prefix_length=3)
    assert model.config._attn_implementation == "eager"  # the probe is switched off again
    assert len(stats["zero_key_share"]) == model.config.num_hidden_layers and all(0 < s < 1 for s in stats["zero_key_share"])
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=3))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.zero_()
        attentions = model(**batch, output_attentions=True).attentions
    taken = prefix_mass.prefix_shares(attentions, batch["attention_mask"], prefix_length=3)
    assert stats["zero_key_share"][0] == pytest.approx(taken[0], abs=1e-6)


def test_log_partition_sees_only_the_keys_a_query_may_see(prefix_mass):
    query = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])           # (1, 1, 2, 2)
    key = torch.tensor([[[[3.0, 0.0], [0.0, 1.0]]]])
    keep = torch.tensor([[True, False], [True, True]])
    lse, largest = prefix_mass.log_partition(query, key, scaling=0.5, keep=keep)
    expected = torch.tensor([1.5, float(torch.logsumexp(torch.tensor([0.0, 1.0]), 0))])
    assert torch.allclose(lse[0, 0], expected) and torch.allclose(largest[0, 0], torch.tensor([1.5, 1.0]))
    assert torch.allclose(prefix_mass.zero_key_share(torch.tensor([0.0, 1000.0]), 3),
                          torch.tensor([0.75, 0.0]))
