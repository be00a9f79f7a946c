"""attach/detach across the architecture matrix: outputs, freezing, gradients, disabling, errors."""

import pytest
import torch
from transformers import BertConfig, BertForMultipleChoice, T5Config, T5Model

from adaprefix import AdaptivePrefixConfig, ConfigError, UnsupportedModelError, attach, detach
from tiny_models import DECODERS, MATRIX, tiny_batch, tiny_model

METHODS = ["apt", "pt2", "token-gate", "layer-gate"]


def _visible_config(method="apt", **kw):
    # Non-trivial gates so that a bug in any gate path shows in the outputs.
    return AdaptivePrefixConfig(method=method, prefix_length=4, token_gate_weight_std=0.5, token_gate_bias_init=0.3,
                                layer_gate_init=1.3, prefix_dropout=0.0, **kw)


@pytest.mark.parametrize("name,impl", MATRIX)
def test_attach_changes_outputs_and_disable_restores_them(name, impl):
    model = tiny_model(name, impl)
    ids, mask = tiny_batch()
    base = model(input_ids=ids, attention_mask=mask).logits
    returned = attach(model, _visible_config())
    assert returned is model and isinstance(model, type(tiny_model(name, impl)))
    out = model(input_ids=ids, attention_mask=mask)
    assert out.logits.shape == base.shape
    assert not torch.allclose(out.logits, base, atol=1e-6), "the prefix must change the outputs"
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, out.logits)
    detach(model)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    assert all(p.requires_grad for p in model.parameters())
    assert not any("adaprefix" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("name,impl", MATRIX)
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_exactly_the_trainable_parameters(name, impl, method):
    model = tiny_model(name, impl)
    attach(model, _visible_config(method))
    model.train()
    ids, mask = tiny_batch()
    labels = ids if name in DECODERS else torch.tensor([0, 2])
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"adaprefix.prefix.embedding"}
    if method in ("apt", "token-gate"):
        expected |= {"adaprefix.token_gate.weight", "adaprefix.token_gate.bias"}
    if method in ("apt", "layer-gate"):
        expected |= {"adaprefix.layer_gate.scale"}
    assert expected <= trainable
    head = trainable - expected
    assert all(not n.startswith(model.base_model_prefix + ".") for n in head)
    if name in DECODERS:
        assert head == set(), "a language-model head is tied to the frozen embeddings and stays frozen"
    else:
        assert head, "the classification head is trainable"
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} received no gradient"
        else:
            assert p.grad is None, f"frozen {n} received a gradient"


@pytest.mark.parametrize("method", METHODS)
def test_methods_have_the_documented_parameter_counts(method):
    model = tiny_model("bert")
    attach(model, AdaptivePrefixConfig(method=method, prefix_length=4))
    n, d, l = 3, 32, 4
    counts = {n: p.numel() for n, p in model.adaprefix.named_parameters()}
    assert counts["prefix.embedding"] == l * n * 2 * d
    gate_params = sum(v for k, v in counts.items() if "gate" in k)
    expected = {"apt": n * (d * l + l + 1), "pt2": 0, "token-gate": n * (d * l + l), "layer-gate": n}[method]
    assert gate_params == expected


def test_prefix_projection_reparameterises_and_trains():
    model = tiny_model("bert")
    attach(model, AdaptivePrefixConfig(prefix_projection=True, projection_hidden_size=8, prefix_length=4))
    assert model.adaprefix.prefix.projection is not None
    ids, mask = tiny_batch()
    model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    assert model.adaprefix.prefix.projection[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,field", [("bert", "hidden_dropout_prob"), ("gpt2", "resid_pdrop"),
                                        ("distilbert", "dropout")])
def test_prefix_dropout_defaults_to_the_backbone_hidden_dropout(name, field):
    model = tiny_model(name, **{field: 0.2})
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    assert model.adapter_config.prefix_dropout == 0.2


def test_prefix_dropout_acts_in_training_only():
    model = attach(tiny_model("bert"), AdaptivePrefixConfig(prefix_length=4, prefix_dropout=0.5))
    ids, mask = tiny_batch()
    run = lambda: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
    assert torch.equal(run(), run())
    model.train()  # the tiny backbone has no dropout of its own: any difference is the prefix dropout
    assert not torch.equal(run(), run())


def test_multiple_choice_flattened_choices():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    model = BertForMultipleChoice(config).eval()
    attach(model, AdaptivePrefixConfig(prefix_length=4))
    ids = torch.randint(3, 96, (2, 2, 7))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    assert out.logits.shape == (2, 2)
    out.loss.backward()
    assert model.adaprefix.token_gate.weight.grad.abs().sum() > 0


def test_decoder_gate_cannot_see_future_tokens():
    model = tiny_model("llama")
    attach(model, _visible_config())
    ids, _ = tiny_batch(pad_last=0)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 90 + 3
    a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_decoder_refuses_pooling_that_leaks_the_future():
    with pytest.raises(ConfigError, match="future tokens"):
        attach(tiny_model("gpt2"), AdaptivePrefixConfig(gate_pooling="mean"))


def test_unsupported_architecture_lists_supported_ones():
    model = T5Model(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(UnsupportedModelError, match=r"'t5'.*supported: bert, deberta-v2, distilbert"):
        attach(model)


def test_unsupported_attention_implementation_is_named():
    model = tiny_model("bert")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UnsupportedModelError, match=r"'flex_attention'.*eager, sdpa"):
        attach(model)


def test_double_attach_and_bad_detach_are_refused():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="no adaprefix adapter"):
        detach(model)
    attach(model)
    with pytest.raises(ValueError, match="already has"):
        attach(model)


@pytest.mark.parametrize("field,value,message", [
    ("method", "lora", "method: expected one of apt, pt2"),
    ("prefix_length", 0, "prefix_length"),
    ("gate_pooling", "max", "gate_pooling"),
    ("prefix_dropout", 1.5, "prefix_dropout"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AdaptivePrefixConfig(**{field: value})


def test_to_moves_adapter_and_train_eval_propagate():
    model = attach(tiny_model("bert"))
    model.to(torch.float64)
    assert model.adaprefix.prefix.embedding.dtype == torch.float64
    ids, mask = tiny_batch()
    assert model(input_ids=ids, attention_mask=mask).logits.dtype == torch.float64
    model.train()
    assert model.adaprefix.training


def test_config_flags_that_bypass_the_seam_are_refused():
    with pytest.raises(UnsupportedModelError, match="reorder_and_upcast_attn=True"):
        attach(tiny_model("gpt2", reorder_and_upcast_attn=True))
