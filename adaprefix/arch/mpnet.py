"""MPNet's attention does not go through AttentionInterface: it adds a relative position bias of its own.

``MPNetEncoder`` computes one T5-style bucketed bias per (query, key) pair of real tokens and hands it to every
layer's ``MPNetSelfAttention``, which adds it to the scaled scores before the additive padding mask. The prefix is
no token of the sequence and has no position, so, as for DeBERTa (and as P-tuning v2 ports treat relative-position
models), prefix columns get their content score alone and zero relative bias; real columns keep exactly the host's
score (content + bias + mask). Projections, scaling, dropout and the output projection are the host module's own.
"""

from __future__ import annotations

import math
import functools

import torch
import torch.nn as nn

from ..attention import layer_site, prefix_softmax, widen_mask, widen_mask_rows


def _prefix_forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False,
                    **kwargs):
    site = layer_site(self)
    if site is not None and site.capture is not None:  # adaprefix.text_init reads the keys and values
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        site.capture.append(tuple(proj(hidden_states).view(shape).transpose(1, 2).detach()
                                  for proj in (self.k, self.v)))  # (B, H, T, hd)
    if site is None or site.prefix is None:
        return type(self).forward(self, hidden_states, attention_mask, position_bias, output_attentions, **kwargs)
    prefix = site.prefix
    batch, length = hidden_states.shape[0], prefix.keys.shape[2]
    hidden_shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q = self.q(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, T, hd)
    k = self.k(hidden_states).view(hidden_shape).transpose(1, 2)
    v = self.v(hidden_states).view(hidden_shape).transpose(1, 2)
    keys = torch.cat([prefix.keys.expand(batch, -1, -1, -1), k], dim=2)  # (B, H, l + T, hd)
    values = torch.cat([prefix.values.expand(batch, -1, -1, -1), v], dim=2)

    # The host's order of operations: scores / sqrt(hd), + relative bias, + additive mask.
    scores = torch.matmul(q, keys.transpose(-1, -2))  # (B, H, T, l + T)
    scores = scores / math.sqrt(self.attention_head_size)
    if position_bias is not None:  # (B, H, T, T), real keys only
        scores = scores + nn.functional.pad(position_bias, (length, 0))  # prefix columns: zero relative bias
    if prefix.keep is not None:  # a batch mixing adapters of different prefix lengths: padded columns hidden per row
        scores = scores + widen_mask_rows(attention_mask, prefix.keep, k.shape[2], scores.dtype)
    elif attention_mask is not None:  # (B, 1, T, T) additive; prefix columns always visible
        scores = scores + widen_mask(attention_mask, length)
    probs = self.dropout(prefix_softmax(scores, length, prefix))
    context = torch.matmul(probs, values).permute(0, 2, 1, 3).contiguous()  # (B, T, H, hd)
    context = context.view(*context.shape[:-2], self.all_head_size)  # (B, T, H*hd)
    out = self.o(context)
    return (out, probs) if output_attentions else (out,)


def patch_mpnet_attention(module: nn.Module) -> None:
    """Route one ``MPNetSelfAttention`` through the prefix-aware forward (the instance only, not the class)."""
    module.forward = functools.partial(_prefix_forward, module)  # a bound method would not unpickle
