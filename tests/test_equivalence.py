"""APT against references: plain prefix tuning fed through the model's cache argument, and attention by hand."""

import math

import pytest
import torch
from transformers import DynamicCache

from adaprefix import AdaptivePrefixConfig, attach
from adaprefix.attention import LayerPrefix, per_query_gated_attention
from tiny_models import DECODERS, tiny_batch, tiny_model

CACHE_CAPABLE = ["bert", "roberta", "xlm-roberta", "electra", "gpt2", "llama", "qwen2", "mistral", "gemma3_text"]
# Fed as past keys, a prefix falls out of a sliding window once queries are more than the window past it, while
# adaprefix keeps it visible to every query (tests/test_gemma3.py). Against the cache reference the window is
# therefore widened beyond prefix + sequence, where both agree by construction.
WIDE_WINDOW = {"gemma3_text": {"sliding_window": 64}}


def _force_gates_to_one(model):
    adapter = model.adaprefix
    with torch.no_grad():
        if adapter.token_gate is not None:
            adapter.token_gate.weight.zero_()
            adapter.token_gate.bias.fill_(50.0)  # sigmoid(50) == 1.0 exactly in float32
        if adapter.layer_gate is not None:
            adapter.layer_gate.scale.fill_(1.0)


def _p_tuning_v2_past_key_values(flat, model):
    """P-tuning v2's (and PEFT's) layout, written out independently of adaprefix's PrefixEncoder.

    Both produce (batch, l, N * 2 * kv_dim) and turn it into per-layer (key, value) with
    ``view(B, l, 2N, H, hd).permute([2, 0, 3, 1, 4]).split(2)``: layer i's key is row 2i, its value row 2i + 1.
    """
    config = model.config
    layers, heads = config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    length = flat.shape[0]
    past = flat.unsqueeze(0).view(1, length, 2 * layers, heads, -1).permute([2, 0, 3, 1, 4]).split(2)
    return [(kv[0], kv[1]) for kv in past]  # N x (key, value), each (1, heads, l, head_dim)


def _cache_reference(model, ids, mask, flat, shift_positions=False):
    """Run the model without adaprefix, the prefix passed as a pre-filled cache (how PEFT / P-tuning v2 feed it).

    ``flat`` is the prefix as P-tuning v2 and PEFT hold it, (l, N * 2 * kv_dim); it is laid out here by their
    convention, not by the code under test.
    """
    batch, length = ids.shape
    cache = DynamicCache(config=model.config)
    for i, (key, value) in enumerate(_p_tuning_v2_past_key_values(flat, model)):
        cache.update(key.expand(batch, -1, -1, -1).contiguous(), value.expand(batch, -1, -1, -1).contiguous(), i)
    wide_mask = torch.cat([torch.ones(batch, flat.shape[0], dtype=mask.dtype), mask], dim=1)
    kwargs = {}
    if not shift_positions:
        embeddings = getattr(model.base_model, "embeddings", None)
        if hasattr(embeddings, "padding_idx"):  # RoBERTa-style positions count from the padding index
            kwargs["position_ids"] = embeddings.create_position_ids_from_input_ids(ids, embeddings.padding_idx)
        else:
            kwargs["position_ids"] = torch.arange(length).unsqueeze(0).expand(batch, -1)
    with model.disable_adapter():
        return model(input_ids=ids, attention_mask=wide_mask, cache=cache, use_cache=False, **kwargs).logits


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", CACHE_CAPABLE)
def test_gates_at_one_equal_plain_prefix_tuning_bit_for_bit(name, impl):
    model = tiny_model(name, impl, **WIDE_WINDOW.get(name, {}))
    # Decoders gate per query position (a different kernel); their folded path is the layer gate.
    method = "layer-gate" if name in DECODERS else "apt"
    attach(model, AdaptivePrefixConfig(method=method, prefix_length=4, prefix_dropout=0.0))
    _force_gates_to_one(model)
    ids, mask = tiny_batch(pad_last=0 if name in DECODERS else 3)
    ours = model(input_ids=ids, attention_mask=mask).logits
    reference = _cache_reference(model, ids, mask, model.adaprefix.prefix.embedding.detach())
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_per_query_gates_at_one_equal_plain_prefix_tuning(name):
    model = tiny_model(name, "eager", **WIDE_WINDOW.get(name, {}))
    attach(model, AdaptivePrefixConfig(method="apt", prefix_length=4))
    _force_gates_to_one(model)
    ids, mask = tiny_batch(pad_last=0)
    reference = _cache_reference(model, ids, mask, model.adaprefix.prefix.embedding.detach())
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["bert", "roberta", "electra"])
def test_shift_positions_reproduces_p_tuning_v2_bit_for_bit(name, impl):
    model = tiny_model(name, impl)
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=4, shift_positions=True, prefix_dropout=0.0))
    ids, mask = tiny_batch()
    ours = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ours, _cache_reference(model, ids, mask, model.adaprefix.prefix.embedding.detach(), True))


def _reference_bert_apt(model, ids, mask, past, weight, bias, lam):
    """BERT with APT, layer by layer, attention over [gated prefix; keys] written out by hand.

    ``past``: per layer (key, value), each (1, heads, l, head_dim), from :func:`_p_tuning_v2_past_key_values`.
    """
    bert = model.bert
    m = mask.float()
    h = bert.embeddings(input_ids=ids)
    batch, length, _ = h.shape
    for i, layer in enumerate(bert.encoder.layer):
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        gate = lam[i] * torch.sigmoid(pooled @ weight[i] + bias[i])  # (B, l)
        att = layer.attention.self
        heads, hd = att.num_attention_heads, att.attention_head_size
        split = lambda x: x.view(batch, length, heads, hd).transpose(1, 2)  # noqa: E731
        keys = torch.cat([past[i][0] * gate[:, None, :, None], split(att.key(h))], dim=2)
        values = torch.cat([past[i][1] * gate[:, None, :, None], split(att.value(h))], dim=2)
        visible = torch.cat([torch.ones(batch, gate.shape[1]), m], dim=1)  # (B, l + T)
        scores = split(att.query(h)) @ keys.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(visible[:, None, None, :] == 0, float("-inf"))
        context = (scores.softmax(-1) @ values).transpose(1, 2).reshape(batch, length, -1)
        attended = layer.attention.output(context, h)
        h = layer.output(layer.intermediate(attended), attended)
    return model.classifier(bert.pooler(h))


def _with_random_gates(model):
    """APT attached with gates far from their init (random bias, lambda in [0.3, 2]), so a wrong gate shows."""
    attach(model, AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=0.5, prefix_dropout=0.0))
    with torch.no_grad():
        model.adaprefix.token_gate.bias.normal_()
        model.adaprefix.layer_gate.scale.uniform_(0.3, 2.0)
    return model


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_apt_with_random_gates_matches_a_hand_written_reference(impl):
    model = _with_random_gates(tiny_model("bert", impl))
    ids, mask = tiny_batch()
    a = model.adaprefix
    past = _p_tuning_v2_past_key_values(a.prefix.embedding.detach(), model)
    reference = _reference_bert_apt(model, ids, mask, past, a.token_gate.weight.detach(),
                                    a.token_gate.bias.detach(), a.layer_gate.scale.detach())
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, reference, rtol=1e-5, atol=1e-6)


class _PTuningV2PrefixEncoder(torch.nn.Module):
    """P-tuning v2's PrefixEncoder (model/prefix_encoder.py), as its training scripts build it."""

    def __init__(self, config, length, projection, hidden=8):
        super().__init__()
        out = config.num_hidden_layers * 2 * config.hidden_size
        self.prefix_projection = projection
        if projection:
            self.embedding = torch.nn.Embedding(length, config.hidden_size)
            self.trans = torch.nn.Sequential(torch.nn.Linear(config.hidden_size, hidden), torch.nn.Tanh(),
                                             torch.nn.Linear(hidden, out))
        else:
            self.embedding = torch.nn.Embedding(length, out)

    def forward(self, prefix):
        return self.trans(self.embedding(prefix)) if self.prefix_projection else self.embedding(prefix)


@pytest.mark.parametrize("projection", [False, True])
def test_p_tuning_v2_and_peft_prefixes_can_be_copied_in_directly(projection):
    model = tiny_model("bert", "eager")
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=4, prefix_projection=projection,
                                       projection_hidden_size=8, prefix_dropout=0.0))
    torch.manual_seed(3)
    theirs = _PTuningV2PrefixEncoder(model.config, 4, projection)
    ours = model.adaprefix.prefix
    with torch.no_grad():  # copied tensor for tensor, no reshaping
        ours.embedding.copy_(theirs.embedding.weight)
        if projection:
            for index in (0, 2):
                ours.projection[index].weight.copy_(theirs.trans[index].weight)
                ours.projection[index].bias.copy_(theirs.trans[index].bias)
    ids, mask = tiny_batch()
    flat = theirs(torch.arange(4)).detach()  # (l, N * 2 * hidden), as their get_prompt() sees it for one example
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, _cache_reference(model, ids, mask, flat))


def test_per_query_gated_attention_matches_a_loop_over_queries():
    torch.manual_seed(0)
    batch, heads, kv_heads, length, hd, l = 2, 4, 2, 6, 8, 3
    q = torch.randn(batch, heads, length, hd)
    k, v = torch.randn(batch, kv_heads, length, hd), torch.randn(batch, kv_heads, length, hd)
    pk, pv = torch.randn(1, kv_heads, l, hd), torch.randn(1, kv_heads, l, hd)
    gate = torch.rand(batch, length, l)
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    module = torch.nn.Module().eval()
    out, _ = per_query_gated_attention(module, q, k, v, causal, LayerPrefix(pk, pv, gate), scaling=hd**-0.5)

    expected = torch.empty(batch, length, heads, hd)
    for b in range(batch):
        for t in range(length):
            for h in range(heads):
                g = h // (heads // kv_heads)  # grouped-query: head h reads kv head g
                keys = torch.cat([pk[0, g] * gate[b, t, :, None], k[b, g, : t + 1]])
                values = torch.cat([pv[0, g] * gate[b, t, :, None], v[b, g, : t + 1]])
                weights = (keys @ q[b, h, t] * hd**-0.5).softmax(-1)
                expected[b, t, h] = weights @ values
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _reference_mpnet(model, ids, mask, past, gates):
    """MPNet with a prefix, layer by layer, its attention written out by hand: no cache path exists to compare with.

    Each layer attends over [gated prefix keys; keys] with scores (q . k) / sqrt(hd) + relative bias + mask, in the
    host's order. The relative bias (from the host's own bucketed table) is added on the real columns only: the
    prefix has no position, so its columns get the content score alone. Padded keys get the dtype's minimum, as
    the host's eager mask gives them. ``gates(i, h)``: layer i's factor (B, l) from h_{i-1}, or None for none.
    """
    mpnet = model.mpnet
    h = mpnet.embeddings(input_ids=ids)
    batch, length, _ = h.shape
    low = torch.finfo(h.dtype).min
    padding = torch.zeros(batch, length).masked_fill(mask == 0, low)[:, None, None, :]  # (B, 1, 1, T)
    bias = mpnet.encoder.compute_position_bias(h)  # (B, H, T, T): real keys only
    for i, layer in enumerate(mpnet.encoder.layer):
        att = layer.attention.attn
        heads, hd = att.num_attention_heads, att.attention_head_size
        split = lambda x: x.view(batch, length, heads, hd).transpose(1, 2)  # noqa: E731
        factor = gates(i, h)
        pk, pv = past[i]  # (1, H, l, hd)
        if factor is not None:
            pk, pv = pk * factor[:, None, :, None], pv * factor[:, None, :, None]
        l = pk.shape[2]
        keys = torch.cat([pk.expand(batch, -1, -1, -1), split(att.k(h))], dim=2)  # (B, H, l + T, hd)
        values = torch.cat([pv.expand(batch, -1, -1, -1), split(att.v(h))], dim=2)
        scores = split(att.q(h)) @ keys.transpose(-1, -2)
        scores = scores / math.sqrt(hd)
        scores = scores + torch.cat([torch.zeros(batch, heads, length, l), bias], dim=-1)
        scores = scores + torch.cat([torch.zeros(batch, 1, 1, l), padding], dim=-1)
        context = (scores.softmax(-1) @ values).permute(0, 2, 1, 3).contiguous().view(batch, length, -1)
        attended = layer.attention.LayerNorm(att.o(context) + h)
        h = layer.output(layer.intermediate(attended), attended)
    return model.classifier(h)


@pytest.mark.parametrize("method", ["pt2", "apt"])
def test_mpnet_with_gates_at_one_equals_a_hand_written_prefix_attention_bit_for_bit(method):
    model = tiny_model("mpnet")
    attach(model, AdaptivePrefixConfig(method=method, prefix_length=4, prefix_dropout=0.0))
    _force_gates_to_one(model)
    ids, mask = tiny_batch()  # the second example is right-padded
    past = _p_tuning_v2_past_key_values(model.adaprefix.prefix.embedding.detach(), model)
    reference = _reference_mpnet(model, ids, mask, past, lambda i, h: None)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)


def test_mpnet_apt_with_random_gates_matches_the_hand_written_reference():
    model = _with_random_gates(tiny_model("mpnet"))
    ids, mask = tiny_batch()
    a = model.adaprefix
    weight, bias, lam = a.token_gate.weight.detach(), a.token_gate.bias.detach(), a.layer_gate.scale.detach()
    m = mask.float()[..., None]

    def gates(i, h):  # masked mean over real tokens, as for every encoder
        pooled = (h * m).sum(1) / m.sum(1)
        return lam[i] * torch.sigmoid(pooled @ weight[i] + bias[i])

    past = _p_tuning_v2_past_key_values(a.prefix.embedding.detach(), model)
    reference = _reference_mpnet(model, ids, mask, past, gates)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, reference, rtol=1e-5, atol=1e-6)


def test_mpnet_shift_positions_counts_from_its_padding_index_as_roberta_does():
    # MPNet numbers positions like RoBERTa (from padding_idx + 1, padding at padding_idx) but has no cache path, so
    # the shifted positions are checked directly: the model with the shift equals the plain model given them.
    model = tiny_model("mpnet")
    attach(model, AdaptivePrefixConfig(method="pt2", prefix_length=4, shift_positions=True, prefix_dropout=0.0))
    ids, mask = tiny_batch()
    ids = ids.masked_fill(mask == 0, 1)  # MPNet's padding token id 1 where the mask is 0
    pad = 1
    expected = torch.tensor([[pad + 1 + 4 + t for t in range(9)], [pad + 1 + 4 + t for t in range(6)] + [pad] * 3])
    shifted = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(shifted, model(input_ids=ids, attention_mask=mask, position_ids=expected).logits)
    unshifted = torch.where(mask == 1, expected - 4, pad)  # what MPNet numbers them without the shift
    assert not torch.allclose(shifted, model(input_ids=ids, attention_mask=mask, position_ids=unshifted).logits)
