"""Gemma 3: the prefix on sliding-window layers stays visible to every query (P-tuning v2 treats it as past keys
that no window ever drops), while real keys keep the host's window; global layers see everything before them."""

import pytest
import torch
from transformers import DynamicCache

from adaprefix import AdaptivePrefixConfig, attach
from tiny_models import tiny_batch, tiny_model

L = 4


def _hand_masks(batch, length, window, impl):
    """Masks over [prefix; real keys] written by hand: prefix columns always visible; real keys causal, and on the
    sliding layers only the last ``window`` positions (query t sees keys t - window + 1 .. t)."""
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    full = k <= q
    sliding = full & (q - k < window)
    masks = {}
    for kind, real in (("full_attention", full), ("sliding_attention", sliding)):
        keep = torch.cat([torch.ones(length, L, dtype=torch.bool), real], dim=1)  # (T, l + T)
        keep = keep[None, None].expand(batch, 1, -1, -1)
        # eager takes an additive mask (0 keeps, the dtype's minimum drops), sdpa a boolean one
        masks[kind] = keep if impl == "sdpa" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo().min)
    return masks


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_sliding_layers_keep_the_prefix_visible_to_queries_beyond_the_window(impl):
    model = tiny_model("gemma3_text", impl)  # window 4 on layers 0 and 2, sequences of 9
    assert model.config.sliding_window == 4 and "sliding_attention" in model.config.layer_types
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=L, prefix_dropout=0.0))
    ids, _ = tiny_batch(pad_last=0)
    batch, length = ids.shape
    ours = model(input_ids=ids).logits

    # Reference: the plain model, the prefix in a pre-filled cache and the masks given explicitly (Gemma 3 takes a
    # ready {layer type: mask} mapping), so the window applies to real keys only.
    prefix = model.adaprefix.prefix().detach()  # (N, 2, kv_heads, l, hd)
    cache = DynamicCache()  # plain full layers: the reference's masks, not a sliding cache, decide what is seen
    for i in range(model.config.num_hidden_layers):
        cache.update(prefix[i, 0][None].expand(batch, -1, -1, -1).contiguous(),
                     prefix[i, 1][None].expand(batch, -1, -1, -1).contiguous(), i)
    positions = torch.arange(length)[None].expand(batch, -1)
    with model.disable_adapter():
        reference = model(input_ids=ids, attention_mask=_hand_masks(batch, length, 4, impl), cache=cache,
                          position_ids=positions, use_cache=False).logits
        plain = model(input_ids=ids).logits
    assert torch.equal(ours, reference)
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_attention_weights_show_the_prefix_columns_and_the_window():
    model = tiny_model("gemma3_text", "eager")
    attach(model, AdaptivePrefixConfig(prefix_length=L, prefix_dropout=0.0, token_gate_weight_std=0.5))
    ids, _ = tiny_batch(pad_last=0)
    length = ids.shape[1]
    weights = model(input_ids=ids, output_attentions=True).attentions  # per layer (B, H, T, l + T)
    for layer_type, w in zip(model.config.layer_types, weights):
        assert w.shape[-1] == L + length
        assert torch.all(w[..., :L] > 0), "every query gives the prefix weight, on every layer"
        q = torch.arange(length)[:, None]
        k = torch.arange(length)[None, :]
        hidden = k > q if layer_type == "full_attention" else (k > q) | (q - k >= 4)
        assert torch.all(w[..., L:][..., hidden] == 0), f"{layer_type}: keys outside the mask got weight"
        assert torch.all(w[..., L:][..., ~hidden] > 0)
