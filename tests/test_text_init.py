"""A prefix initialised from real tokens (adaprefix.init_prefix_from_text): each layer's prefix is the frozen model's
own keys and values of the text, computed here from the host's modules (hidden states, projections, norms, rotary
embedding), and on a rotary decoder pt2 so initialised equals the frozen model reading the text before the input."""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from adaprefix import AdaptivePrefixConfig, ConfigError, attach, init_prefix_from_text, load_adapter
from adaprefix.text_init import text_token_ids
from decoder_helpers import word_tokenizer
from tiny_models import tiny_model

WORDS = "read the premise and say whether it is true yes no or maybe a dog barks".split()
TEXT = "read the premise and say whether it is true"  # 9 words, 9 tokens
TOKENIZER = word_tokenizer(WORDS)


def _config(**overrides):
    return AdaptivePrefixConfig(**{"method": "pt2", "prefix_length": 9, "prefix_dropout": 0.0, **overrides})


def _prefix_of_layer(model, i):
    """Layer i's prefix keys and values as the attention receives them: (kv_heads, l, head_dim) each."""
    with torch.no_grad():
        kv = model.adaprefix.prefix()
    return kv[i][0], kv[i][1]


def _reference_encoder(model, ids):
    """Each layer's keys and values from the layer's own key / value projections of the hidden states entering it."""
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    out = []
    for i, layer in enumerate(model.base_model.encoder.layer):
        attention = layer.attention.attn if hasattr(layer.attention, "attn") else layer.attention.self  # MPNet's
        heads = model.config.num_attention_heads
        if hasattr(attention, "key_proj"):  # DeBERTa-v2
            k, v = attention.key_proj(hidden[i]), attention.value_proj(hidden[i])
        elif hasattr(attention, "k"):  # MPNet's attention.attn
            k, v = attention.k(hidden[i]), attention.v(hidden[i])
        else:
            k, v = attention.key(hidden[i]), attention.value(hidden[i])
        out.append(tuple(x.view(1, ids.shape[1], heads, -1).transpose(1, 2)[0] for x in (k, v)))
    return out


def _reference_decoder(model, ids):
    """Llama-style: input norm, k / v projections, k norm where the model has one, rotary at positions -n .. -1."""
    positions = torch.arange(-ids.shape[1], 0)[None]
    with torch.no_grad():
        hidden = model(input_ids=ids, position_ids=positions, output_hidden_states=True).hidden_states
        out = []
        for i, layer in enumerate(model.model.layers):
            h = layer.input_layernorm(hidden[i])
            attention = layer.self_attn
            shape = (1, ids.shape[1], -1, attention.head_dim)
            k = attention.k_proj(h).view(shape).transpose(1, 2)
            v = attention.v_proj(h).view(shape).transpose(1, 2)
            if hasattr(attention, "k_norm"):
                k = attention.k_norm(k)
            if model.config.model_type == "gemma3_text":  # a rotary embedding per layer type (local / global)
                cos, sin = model.model.rotary_emb(h, positions, model.config.layer_types[i])
            else:
                cos, sin = model.model.rotary_emb(h, positions)
            _, k = apply_rotary_pos_emb(k, k, cos, sin)
            out.append((k[0], v[0]))
    return out


def _check_layers(model, reference):
    for i, (keys, values) in enumerate(reference):
        got_k, got_v = _prefix_of_layer(model, i)
        torch.testing.assert_close(got_k, keys, rtol=1e-5, atol=1e-6, msg=f"layer {i} keys")
        torch.testing.assert_close(got_v, values, rtol=1e-5, atol=1e-6, msg=f"layer {i} values")


@pytest.mark.parametrize("name", ["bert", "deberta-v2", "mpnet"])
def test_each_layer_of_an_encoder_gets_the_text_s_keys_and_values(name):
    model = attach(tiny_model(name, "eager"), _config())
    ids = init_prefix_from_text(model, TOKENIZER, TEXT)
    assert len(ids) == 9
    _check_layers(model, _reference_encoder(tiny_model(name, "eager"), torch.tensor([ids])))


@pytest.mark.parametrize("gate_mode", ["scale", "exact", "separate"])
@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3_text"])
def test_each_layer_of_a_rotary_decoder_gets_the_text_s_keys_and_values_rotated_before_position_0(name, gate_mode):
    model = attach(tiny_model(name, "sdpa"), _config(method="apt", gate_mode=gate_mode))  # 2 kv heads for 4 queries
    ids = init_prefix_from_text(model, TOKENIZER, TEXT)
    _check_layers(model, _reference_decoder(tiny_model(name, "sdpa"), torch.tensor([ids])))


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_pt2_from_a_text_equals_the_frozen_model_reading_the_text_before_the_input(name):
    model = attach(tiny_model(name, "sdpa"), _config())
    ids = init_prefix_from_text(model, TOKENIZER, TEXT)
    inputs = torch.tensor([[40, 41, 42, 43, 44], [45, 46, 47, 48, 49]])
    frozen = tiny_model(name, "sdpa")
    with torch.no_grad():
        prompted = frozen(input_ids=torch.cat([torch.tensor([ids] * 2), inputs], dim=1)).logits[:, len(ids):]
        torch.testing.assert_close(model(input_ids=inputs).logits, prompted, rtol=1e-4, atol=1e-5)


def test_a_text_is_cut_or_repeated_to_the_prefix_length():
    assert text_token_ids(TOKENIZER, "yes no maybe", 7) == [13, 14, 16, 13, 14, 16, 13]  # yes no maybe yes ...
    assert text_token_ids(TOKENIZER, TEXT, 4) == [4, 5, 6, 7]


def test_per_layer_lengths_take_the_tokens_nearest_the_input():
    model = attach(tiny_model("llama", "sdpa"), AdaptivePrefixConfig(method="pt2", prefix_lengths=[3, 0, 9],
                                                                     prefix_dropout=0.0))
    ids = init_prefix_from_text(model, TOKENIZER, TEXT)
    reference = _reference_decoder(tiny_model("llama", "sdpa"), torch.tensor([ids]))
    kv = model.adaprefix.prefix()
    torch.testing.assert_close(kv[0][0], reference[0][0][:, -3:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kv[2][1], reference[2][1], rtol=1e-5, atol=1e-6)
    assert kv[1].shape[2] == 0


def test_the_text_is_recorded_with_the_adapter_and_gates_are_left_alone(tmp_path):
    model = attach(tiny_model("bert", "sdpa"), _config(method="apt", token_gate_weight_std=0.5))
    gate = model.adaprefix.token_gate.weight.detach().clone()
    init_prefix_from_text(model, TOKENIZER, TEXT)
    assert torch.equal(model.adaprefix.token_gate.weight, gate)
    assert model.adapter_config.prefix_init_text == TEXT
    model.save_adapter(tmp_path)
    assert load_adapter(tiny_model("bert", "sdpa"), tmp_path).adapter_config.prefix_init_text == TEXT


def test_with_several_adapters_loaded_the_text_stays_with_its_adapter(tmp_path):
    for name in ("a", "b"):
        attach(tiny_model("bert", "sdpa"), _config()).save_adapter(tmp_path / name)
    model = load_adapter(tiny_model("bert", "sdpa"), tmp_path / "a", adapter_name="a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    init_prefix_from_text(model, TOKENIZER, TEXT)
    model.set_adapter("b")
    assert model.adapter_config.prefix_init_text is None
    model.set_adapter("a")  # its config comes back from the bank's entry
    assert model.adapter_config.prefix_init_text == TEXT and model.peft_config["a"].prefix_init_text == TEXT


def test_what_cannot_be_initialised_from_a_text_is_refused_by_name():
    model = attach(tiny_model("bert", "sdpa"), _config(prefix_projection=True))
    with pytest.raises(ConfigError, match="prefix_init_text: a reparameterised prefix .*prefix_projection"):
        init_prefix_from_text(model, TOKENIZER, TEXT)
    model = attach(tiny_model("bert", "sdpa"), _config())
    with pytest.raises(ConfigError, match="prefix_init_text: expected a non-empty text, got ' '"):
        init_prefix_from_text(model, TOKENIZER, " ")
    def drops_everything(text, add_special_tokens=True):  # a tokenizer whose normaliser removes the whole text
        return {"input_ids": []}

    with pytest.raises(ConfigError, match="prefix_init_text: .* gives no tokens with this tokenizer; use a text of words"):
        init_prefix_from_text(model, drops_everything, "\u200b")
    with pytest.raises(ConfigError, match="prefix_init_text: the adapter is disabled here .*disable_adapter"):
        with model.disable_adapter():
            init_prefix_from_text(model, TOKENIZER, TEXT)


@pytest.mark.parametrize("name,impl,positions,first", [("bert", "sdpa", 64, 0), ("gpt2", "sdpa", 128, 0),
                                                        ("roberta", "sdpa", 64, 2), ("mpnet", "eager", 64, 2)])
def test_a_prefix_longer_than_an_absolute_position_table_is_refused_by_name(name, impl, positions, first):
    """RoBERTa-style embeddings (RoBERTa, MPNet: pad_token_id 1) number real tokens from padding_idx + 1."""
    room = positions - first
    model = attach(tiny_model(name, impl), _config(prefix_length=room + 1))
    with pytest.raises(ConfigError, match=f"read at positions {first} .. {positions}, and this {name} model has "
                                          f"{positions} positions; use a prefix_length of at most {room}"):
        init_prefix_from_text(model, TOKENIZER, TEXT)
    init_prefix_from_text(attach(tiny_model(name, impl), _config(prefix_length=room)), TOKENIZER, TEXT)
