"""DeBERTa's patched attention: prefix columns get content scores and zero relative bias; real columns keep theirs."""

import math

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, adapter_runtime, attach, layer_gates
from tiny_models import tiny_batch, tiny_model

L = 4


@pytest.mark.parametrize("method", ["pt2", "apt"])
def test_prefix_columns_have_zero_relative_bias_and_real_columns_keep_theirs(method):
    model = tiny_model("deberta-v2")
    attach(model, AdaptivePrefixConfig(method=method, prefix_length=L, prefix_dropout=0.0, token_gate_weight_std=0.5,
                                       layer_gate_init=1.4))
    ids, mask = tiny_batch()  # the second example is right-padded: padded keys must stay invisible on every path
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    runtime = adapter_runtime(model)
    encoder = model.deberta.encoder
    batch, length = ids.shape
    real_rows = mask.bool()[:, None, :, None]  # (B, 1, T, 1): padded queries are not compared
    for i, layer in enumerate(encoder.layer):
        attention = layer.attention.self
        h = out.hidden_states[i]  # h_{i-1}, the input of layer i
        ours = out.attentions[i]  # (B, H, T, l + T)
        assert ours.shape[-1] == length + L
        with model.disable_adapter():  # the host's own attention on the same input
            _, original = attention(h, encoder.get_attention_mask(mask), True, relative_pos=encoder.get_rel_pos(h),
                                    rel_embeddings=encoder.get_rel_embedding())

        # Real columns: the host's scores (content + relative bias), renormalised by the prefix's share only.
        real = ours[..., L:]
        expected = original * real.sum(-1, keepdim=True)
        torch.testing.assert_close(real * real_rows, expected * real_rows, rtol=1e-4, atol=1e-6)
        assert torch.all(real[1, :, :, length - 3:] < 1e-6), "padded keys must get no attention"

        # Prefix columns: softmax of pure content scores q . k_prefix / sqrt(d * 3) (c2p and p2c scale by 3), the
        # prefix keys scaled by this example's gates.
        heads, head_dim = attention.num_attention_heads, attention.attention_head_size
        query = attention.query_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
        factor = torch.ones(batch, L)
        if method == "apt":
            factor = layer_gates(model)[i] * runtime.token_gates[i]  # (B, l)
        prefix_keys = model.adaprefix.prefix()[i, 0][None] * factor[:, None, :, None]  # (B, heads, l, head_dim)
        content = query @ prefix_keys.transpose(-1, -2) / math.sqrt(head_dim * 3)  # (B, H, T, l)
        prefix = ours[..., :L]
        torch.testing.assert_close((prefix / prefix.sum(-1, keepdim=True)) * real_rows,
                                   content.softmax(-1) * real_rows, rtol=1e-4, atol=1e-6)
