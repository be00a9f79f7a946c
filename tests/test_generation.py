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


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma3_text"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(name):
    model = tiny_model(name, "sdpa")
    attach(model, AdaptivePrefixConfig(prefix_length=4, prefix_init_std=3.0, token_gate_weight_std=0.5))
    short, long = torch.tensor([[5, 6, 7]]), torch.tensor([[8, 9, 10, 11, 12]])
    batch = torch.cat([torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    together = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=0)
    for row, prompt in enumerate((short, long)):
        alone = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                               do_sample=False, pad_token_id=0)
        assert torch.equal(together[row, -NEW_TOKENS:], alone[0, -NEW_TOKENS:])
