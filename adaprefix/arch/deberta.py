"""The one hand-written exception: DeBERTa-v2/v3 attention does not go through AttentionInterface.

Its scores add disentangled relative-position terms (c2p, p2c) that only exist between real tokens. As in P-tuning
v2's DeBERTa port, prefix columns get content scores and zero relative bias; everything else is the host's code
(projections, `disentangled_attention_bias`, scaling), called on the host module.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ..attention import layer_site, prefix_softmax


def _prefix_forward(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                    relative_pos=None, rel_embeddings=None):
    site = layer_site(self)
    if site is not None and site.capture is not None:  # adaprefix.text_init reads the keys and values
        batch, heads = hidden_states.shape[0], self.num_attention_heads
        kv = [self.transpose_for_scores(proj(hidden_states), heads) for proj in (self.key_proj, self.value_proj)]
        site.capture.append(tuple(x.view(batch, heads, *x.shape[1:]).detach() for x in kv))  # (B, H, T, hd)
    if site is None or site.prefix is None:
        return type(self).forward(self, hidden_states, attention_mask, output_attentions, query_states,
                                  relative_pos, rel_embeddings)
    heads = self.num_attention_heads
    batch = hidden_states.shape[0]
    query_states = hidden_states if query_states is None else query_states
    query = self.transpose_for_scores(self.query_proj(query_states), heads)  # (B*H, T, hd)
    key = self.transpose_for_scores(self.key_proj(hidden_states), heads)
    value = self.transpose_for_scores(self.value_proj(hidden_states), heads)
    prefix_keys = site.prefix.keys.expand(batch, -1, -1, -1).reshape(batch * heads, -1, key.shape[-1])  # (B*H, l, hd)
    prefix_values = site.prefix.values.expand(batch, -1, -1, -1).reshape(batch * heads, -1, value.shape[-1])
    length = prefix_keys.shape[1]

    scale_factor = 1 + ("c2p" in self.pos_att_type) + ("p2c" in self.pos_att_type)
    scale = torch.sqrt(torch.tensor(query.size(-1), dtype=torch.float) * scale_factor).to(query.dtype)
    all_keys = torch.cat([prefix_keys, key], dim=1)  # (B*H, l + T, hd)
    scores = torch.bmm(query, all_keys.transpose(-1, -2) / scale)  # (B*H, T, l + T)
    if self.relative_attention:
        rel = self.disentangled_attention_bias(query, key, relative_pos, self.pos_dropout(rel_embeddings),
                                               scale_factor)  # (B*H, T, T): real keys only
        scores = scores + nn.functional.pad(rel, (length, 0))  # prefix columns: zero relative bias
    scores = scores.view(-1, heads, scores.size(-2), scores.size(-1))  # (B, H, T, l + T)
    mask = attention_mask.bool()
    if site.prefix.keep is None:
        pad = mask.new_ones((*mask.shape[:-1], length))
    else:  # a batch mixing adapters of different prefix lengths: padded columns hidden per row
        pad = site.prefix.keep[:, None, None, :].expand(*mask.shape[:-1], length)
    mask = torch.cat([pad, mask], dim=-1)
    scores = scores.masked_fill(~mask, torch.finfo(query.dtype).min)
    probs = self.dropout(prefix_softmax(scores, length, site.prefix))
    context = torch.bmm(probs.view(-1, probs.size(-2), probs.size(-1)), torch.cat([prefix_values, value], dim=1))
    context = context.view(-1, heads, context.size(-2), context.size(-1)).permute(0, 2, 1, 3).contiguous()
    context = context.view(*context.shape[:-2], -1)  # (B, T, H*hd)
    return (context, probs if output_attentions else None)


def patch_deberta_attention(module: nn.Module) -> None:
    """Route one DeBERTa-v2 self-attention through the prefix-aware forward (the instance only, not the class)."""
    module.forward = functools.partial(_prefix_forward, module)  # a bound method would not unpickle
