"""Gradient checkpointing gives the same loss and gradients as a plain backward, also with several forwards per
backward (R-Drop, contrastive losses, summed micro-batches) and with prefix dropout on."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, UnsupportedModelError, attach
from tiny_models import DECODERS, tiny_batch, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")


def _loss_and_grads(name, checkpointing, batch_sizes=(2,), prefix_dropout=0.0, backward_while_disabled=False):
    model = tiny_model(name)
    attach(model, AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=0.5, prefix_dropout=prefix_dropout))
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    torch.manual_seed(0)  # the same prefix-dropout masks in both runs
    loss = 0
    for seed, batch in enumerate(batch_sizes, start=1):
        ids, mask = tiny_batch(batch=batch, seed=seed, pad_last=0 if name in DECODERS else 3)
        labels = ids if name in DECODERS else torch.arange(batch) % 3
        loss = loss + model(input_ids=ids, attention_mask=mask, labels=labels).loss
    if backward_while_disabled:  # the recompute happens here, but belongs to forwards that ran with the adapter
        with model.disable_adapter():
            loss.backward()
    else:
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(expected, actual):
    loss, grads = expected
    loss_ckpt, grads_ckpt = actual
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for n in grads:
        torch.testing.assert_close(grads_ckpt[n], grads[n], rtol=1e-6, atol=1e-7, msg=n)
        assert grads[n].abs().sum() > 0


@pytest.mark.parametrize("name", ["bert", "distilbert", "deberta-v2", "gpt2", "llama", "gemma3_text"])
def test_gradient_checkpointing_matches_plain_backward(name):
    _assert_same(_loss_and_grads(name, checkpointing=False), _loss_and_grads(name, checkpointing=True))


# transformers has no gradient checkpointing for these; if it gains it, this fails and they join the test above.
WITHOUT_CHECKPOINTING = ["mpnet"]


@pytest.mark.parametrize("name", WITHOUT_CHECKPOINTING)
def test_architectures_without_checkpointing_are_refused_by_transformers_itself(name):
    model = attach(tiny_model(name), AdaptivePrefixConfig(prefix_length=4))
    with pytest.raises(ValueError, match="does not support"):
        model.gradient_checkpointing_enable()


@pytest.mark.parametrize("batch_sizes", [(2, 2), (2, 3)], ids=["same-batch", "other-batch"])
@pytest.mark.parametrize("name", ["bert", "deberta-v2", "llama"])
def test_two_forwards_before_one_backward_match_plain_backward(name, batch_sizes):
    # The recompute of the first forward must read its own prefix and gates, not those the second forward left.
    kwargs = dict(batch_sizes=batch_sizes, prefix_dropout=0.3)
    _assert_same(_loss_and_grads(name, False, **kwargs), _loss_and_grads(name, True, **kwargs))


def test_backward_inside_disable_adapter_recomputes_with_the_prefix():
    _assert_same(_loss_and_grads("bert", False), _loss_and_grads("bert", True, backward_while_disabled=True))


def test_reentrant_checkpointing_is_refused_by_name():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    ids, mask = tiny_batch()
    with pytest.raises(UnsupportedModelError, match=r"adaprefix: reentrant .*'use_reentrant': False"):
        model(input_ids=ids, attention_mask=mask)
