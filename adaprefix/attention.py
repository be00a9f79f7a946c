"""The one seam: an attention function that prepends the (gated) prefix to already-projected keys and values.

It is registered in transformers' AttentionInterface under ``adaprefix_<impl>`` with a matching mask function, so
the host model keeps its own projections, rotary embeddings, cache and mask logic. Per layer, the state it needs
(the prefix tensors for this forward) hangs on the attention module as ``_adaprefix_site``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

IMPL_PREFIX = "adaprefix_"


@dataclass
class LayerPrefix:
    """What one layer's attention prepends during the current forward."""

    keys: torch.Tensor  # (B or 1, kv_heads, l, head_dim), already scaled when the gate is per example
    values: torch.Tensor  # (B or 1, kv_heads, l, head_dim)
    query_gate: torch.Tensor | None = None  # (B, T, l) when each query position has its own gate


class LayerSite:
    """Per-layer slot read by the attention function.

    It holds the prefix only while its layer runs: set by the layer's pre-hook, cleared by its post-hook, and put
    back for the duration of a gradient-checkpointing recompute (see ``inject._CheckpointReplay``).
    """

    def __init__(self, layer_index: int):
        self.layer_index = layer_index
        self.prefix: LayerPrefix | None = None


def explicit_mask(mask: torch.Tensor | None, query: torch.Tensor, key_len: int, causal: bool):
    """The mask over real keys, materialised when causality would otherwise rest on sdpa's is_causal flag."""
    q_len = query.shape[2]
    if mask is not None or not causal or q_len == 1:
        return mask
    rows = torch.arange(q_len, device=query.device).unsqueeze(1) + (key_len - q_len)  # bottom-right aligned
    return (torch.arange(key_len, device=query.device).unsqueeze(0) <= rows)[None, None]  # (1, 1, T, S)


def widen_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Add `length` always-visible columns in front of a mask (bool: True=keep; float: 0=keep). None stays None."""
    if mask is None:
        return None
    pad_shape = (*mask.shape[:-1], length)
    if mask.dtype == torch.bool:
        pad = torch.ones(pad_shape, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)  # (B, 1|H, T, l + S)


def _repeat_heads(x: torch.Tensor, times: int) -> torch.Tensor:
    return x if times == 1 else x.repeat_interleave(times, dim=1)


def per_query_gated_attention(module, query, key, value, mask, prefix: LayerPrefix, scaling=None, dropout=0.0,
                              **kwargs):
    """Attention over [gated prefix; keys] when the gate differs per query position, shape (B, T, l).

    Scaling pseudo token j's key and value by a_tj for query t equals scaling its logit and its attention weight by
    a_tj, which is what is computed here (a shared key tensor cannot carry a per-query factor).
    """
    unsupported = [k for k in ("softcap", "sinks", "s_aux") if kwargs.get(k) is not None]
    if unsupported:  # none of the supported architectures passes these; fail rather than compute something else
        raise NotImplementedError(f"per-query gated attention does not implement {', '.join(unsupported)}")
    length = prefix.keys.shape[2]
    batch, heads, q_len, head_dim = query.shape
    rep = heads // key.shape[1]
    scaling = head_dim**-0.5 if scaling is None else scaling
    gate = prefix.query_gate.unsqueeze(1).to(query.dtype)  # (B, 1, T, l)
    pk = _repeat_heads(prefix.keys.expand(batch, -1, -1, -1), rep)  # (B, H, l, hd)
    pv = _repeat_heads(prefix.values.expand(batch, -1, -1, -1), rep)
    k, v = _repeat_heads(key, rep), _repeat_heads(value, rep)  # (B, H, S, hd)
    prefix_scores = (query @ pk.transpose(-1, -2)) * scaling * gate  # (B, H, T, l)
    scores = (query @ k.transpose(-1, -2)) * scaling  # (B, H, T, S)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(torch.cat([prefix_scores, scores], dim=-1), dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    # The weights the values are really mixed with (gate on the prefix columns, after dropout): these are what
    # output_attentions reports, so that weights @ [values] reproduces the output.
    weights = torch.cat([probs[..., :length] * gate, probs[..., length:]], dim=-1)  # (B, H, T, l + S)
    out = weights[..., :length] @ pv + weights[..., length:] @ v  # (B, H, T, hd)
    return out.transpose(1, 2).contiguous(), weights


def _inner_function(module_class: type, impl: str) -> Callable:
    if impl == "sdpa":
        return sdpa_attention_forward
    # Every modeling file defines its own eager function (GPT-2's upcasts, Llama's repeats kv heads): use the host's.
    return sys.modules[module_class.__module__].eager_attention_forward


def prefix_attention(impl: str, module, query, key, value, attention_mask, **kwargs):
    """The host's ``impl`` attention ("eager" or "sdpa") over [gated prefix; keys] for modules with a prefix.

    A module function, not a closure per implementation, so that every call runs (and is measured as) this code.
    """
    site: LayerSite | None = getattr(module, "_adaprefix_site", None)
    inner = _inner_function(type(module), impl)
    if site is None or site.prefix is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    prefix = site.prefix
    mask = explicit_mask(attention_mask, query, key.shape[2], bool(getattr(module, "is_causal", False)))
    if prefix.query_gate is not None:
        return per_query_gated_attention(module, query, key, value, mask, prefix, **kwargs)
    mask = widen_mask(mask, prefix.keys.shape[2])
    batch = key.shape[0]
    key = torch.cat([prefix.keys.expand(batch, -1, -1, -1), key], dim=2)  # (B, kv_heads, l + S, hd)
    value = torch.cat([prefix.values.expand(batch, -1, -1, -1), value], dim=2)
    # Pass is_causal=False: the explicit mask already holds causality, and sdpa's own flag aligns it top-left.
    if impl == "sdpa":
        kwargs["is_causal"] = False
    return inner(module, query, key, value, mask, **kwargs)


def _make_attention(impl: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        return prefix_attention(impl, module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"adaprefix_{impl}_attention"
    return attention


def _materialised_sdpa_mask(*args, **kwargs):
    # sdpa may skip a causal mask and rely on is_causal, which is wrong once keys outnumber queries.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


_REGISTERED = False


def register_attention() -> None:
    """Register ``adaprefix_eager`` and ``adaprefix_sdpa`` once per process."""
    global _REGISTERED
    if _REGISTERED:
        return
    for impl, mask_fn in (("eager", eager_mask), ("sdpa", _materialised_sdpa_mask)):
        AttentionInterface.register(IMPL_PREFIX + impl, _make_attention(impl))
        AttentionMaskInterface.register(IMPL_PREFIX + impl, mask_fn)
    _REGISTERED = True
