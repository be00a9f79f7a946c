"""Gradient checkpointing gives the same loss and gradients as a plain backward."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from tiny_models import DECODERS, tiny_batch, tiny_model


def _loss_and_grads(name, checkpointing):
    model = tiny_model(name)
    attach(model, AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=0.5, prefix_dropout=0.0))
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    ids, mask = tiny_batch(pad_last=0 if name in DECODERS else 3)
    labels = ids if name in DECODERS else torch.tensor([1, 2])
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("name", ["bert", "distilbert", "deberta-v2", "gpt2", "llama"])
def test_gradient_checkpointing_matches_plain_backward(name):
    loss, grads = _loss_and_grads(name, checkpointing=False)
    loss_ckpt, grads_ckpt = _loss_and_grads(name, checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-6, atol=1e-7, msg=n)
        assert grads[n].abs().sum() > 0
