"""DeBERTa's patched attention: prefix columns get content scores and zero relative bias; real columns keep theirs."""

import math

import torch

from adaprefix import AdaptivePrefixConfig, attach
from tiny_models import tiny_batch, tiny_model


def test_prefix_columns_have_zero_relative_bias_and_real_columns_keep_theirs():
    model = tiny_model("deberta-v2")
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=4, prefix_dropout=0.0))
    ids, mask = tiny_batch(pad_last=0)
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    with model.disable_adapter():
        plain = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    ours, original = out.attentions[0], plain.attentions[0]  # layer 1 sees the same h_0 in both runs
    assert ours.shape[-1] == original.shape[-1] + 4

    # Real columns: the host's scores (content + relative bias), renormalised by the prefix's share only.
    real = ours[..., 4:]
    torch.testing.assert_close(real, original * real.sum(-1, keepdim=True), rtol=1e-4, atol=1e-6)

    # Prefix columns: softmax of pure content scores q . k_prefix / sqrt(d * 3) (c2p and p2c scale by 3).
    attention = model.deberta.encoder.layer[0].attention.self
    batch, length = ids.shape
    heads, head_dim = attention.num_attention_heads, attention.attention_head_size
    query = attention.query_proj(out.hidden_states[0]).view(batch, length, heads, head_dim).transpose(1, 2)
    prefix_keys = model.adaprefix.prefix()[0, 0]  # (heads, l, head_dim)
    content = query @ prefix_keys.transpose(-1, -2) / math.sqrt(head_dim * 3)  # (B, H, T, l)
    prefix = ours[..., :4]
    torch.testing.assert_close(prefix / prefix.sum(-1, keepdim=True), content.softmax(-1), rtol=1e-4, atol=1e-6)
