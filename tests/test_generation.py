"""Decoders: generate() with the KV cache equals recomputing the whole sequence each step, and the prefix acts."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from tiny_models import DECODERS, tiny_batch, tiny_model

NEW_TOKENS = 8


def _greedy_by_recomputation(model, ids):
    seq = ids
    for _ in range(NEW_TOKENS):
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("method", ["apt", "pt2"])
def test_generate_with_cache_equals_recomputation_and_prefix_changes_tokens(name, impl, method):
    model = tiny_model(name, impl)
    attach(model, AdaptivePrefixConfig(method=method, prefix_length=4, prefix_init_std=3.0, token_gate_weight_std=0.5))
    ids, _ = tiny_batch(length=5, pad_last=0)
    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                               do_sample=False, pad_token_id=0)
    assert torch.equal(generated, _greedy_by_recomputation(model, ids))
    with model.disable_adapter():
        plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                               do_sample=False, pad_token_id=0)
    assert not torch.equal(generated, plain), "the prefix must visibly change what is generated"
