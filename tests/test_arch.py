"""The architecture table: every listed model_type resolves to its layers, shape and causality; anything else is
refused by name with the list of supported ones."""

import pytest
from transformers import T5Config, T5Model

from adaprefix import AdaprefixError, UnsupportedModelError, attach
from adaprefix.arch import ARCHITECTURES, hidden_dropout_name, resolve_arch
from tiny_models import CONFIGS, DECODERS, tiny_model

SUPPORTED = ("bert, deberta-v2, distilbert, electra, gemma3_text, gpt2, llama, mistral, mpnet, qwen2, roberta, "
             "xlm-roberta")
KV_HEADS = {"llama": 2, "qwen2": 2, "mistral": 2, "gemma3_text": 2}  # grouped-query decoders of tiny_models; the others have 4


def test_the_tiny_model_matrix_covers_exactly_the_table():
    assert sorted(CONFIGS) == sorted(ARCHITECTURES) == SUPPORTED.split(", ")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_supported_model_type_resolves(name):
    model = tiny_model(name)
    spec, shape, layers, causal = resolve_arch(model)
    assert spec is ARCHITECTURES[name]
    # tiny_models: 3 layers of width 32 with 4 query heads, so head_dim 8
    assert (shape.model_type, shape.num_layers, shape.hidden_size, shape.head_dim) == (name, 3, 32, 8)
    assert shape.num_kv_heads == KV_HEADS.get(name, 4) and shape.kv_dim == shape.num_kv_heads * 8
    assert len(layers) == 3 and all(layer.get_submodule(spec.attention) is not None for layer in layers)
    assert causal == (name in DECODERS)


def test_an_encoder_configured_as_decoder_is_causal():
    _, _, _, causal = resolve_arch(tiny_model("bert", is_decoder=True))
    assert causal


def test_an_unsupported_model_type_is_named_with_the_supported_list():
    model = T5Model(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(UnsupportedModelError) as err:
        resolve_arch(model)
    assert str(err.value) == f"adaprefix does not support model_type 't5' (T5Model); supported: {SUPPORTED}"
    assert isinstance(err.value, AdaprefixError) and isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedModelError, match=r"'t5'.*supported: bert, deberta-v2, distilbert"):
        attach(model)


def test_unsupported_attention_implementation_is_named():
    model = tiny_model("bert")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UnsupportedModelError, match=r"'flex_attention'.*eager, sdpa"):
        attach(model)


def test_config_flags_that_bypass_the_seam_are_refused():
    with pytest.raises(UnsupportedModelError, match="reorder_and_upcast_attn=True"):
        attach(tiny_model("gpt2", reorder_and_upcast_attn=True))


@pytest.mark.parametrize("name,field", [("bert", "hidden_dropout_prob"), ("distilbert", "dropout"),
                                        ("gpt2", "resid_pdrop"), ("llama", None)])
def test_hidden_dropout_is_found_under_each_config_s_own_name(name, field):
    assert hidden_dropout_name(CONFIGS[name]()) == field
