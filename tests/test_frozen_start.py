"""What both gate modes that start at the frozen model promise (``gate_mode="exact"`` and ``"separate"``).

The reference is the frozen model itself, built before any adapter exists. Each mode's own semantics (gates at 1 are
pt2; the prefix in its own softmax equals PEFT's LLaMA-Adapter) are tested in test_exact_gates.py and
test_separate_gates.py.
"""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach, last_token_gates, layer_gates, load_adapter
from tiny_models import DECODERS, MATRIX, PATCHED, logits_of, tiny_batch, tiny_inputs, tiny_model

MODES = ["exact", "separate"]
#: How close to the frozen model each starts: the separate prefix leaves the host's attention untouched and adds
#: 0 * its own output (bit for bit); the exact gate puts every prefix column at weight 0 in a merged softmax.
START_TOLERANCE = {"exact": 1e-6, "separate": 0.0}


def _adapted(name, impl, gate_mode, **overrides):
    settings = dict(method="apt", gate_mode=gate_mode, prefix_length=4, prefix_dropout=0.0, prefix_init_std=1.0,
                    token_gate_weight_std=0.5)
    return attach(tiny_model(name, impl), AdaptivePrefixConfig(**{**settings, **overrides}))


@pytest.mark.parametrize("gate_mode", MODES)
@pytest.mark.parametrize("name,impl", MATRIX)
def test_at_init_the_model_equals_the_frozen_model(name, impl, gate_mode):
    inputs = tiny_inputs(name)
    frozen = logits_of(tiny_model(name, impl), inputs)  # before any adapter exists
    model = _adapted(name, impl, gate_mode)
    assert bool((layer_gates(model) == 0).all())
    tolerance = START_TOLERANCE[gate_mode]
    torch.testing.assert_close(logits_of(model, inputs), frozen, rtol=0, atol=tolerance)
    with torch.no_grad():
        model.adaprefix.layer_gate.scale.fill_(0.5)
    assert not torch.allclose(logits_of(model, inputs), frozen, rtol=0, atol=1e-4)  # an open gate does move it
    with pytest.raises(AssertionError):  # the same prefix with the paper's gates moves the model from the start
        scaled = attach(tiny_model(name, impl), AdaptivePrefixConfig(prefix_length=4, prefix_dropout=0.0))
        torch.testing.assert_close(logits_of(scaled, inputs), frozen, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gate_mode", MODES)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", DECODERS)
def test_at_init_generate_with_the_kv_cache_equals_the_frozen_model(name, impl, gate_mode):
    ids, _ = tiny_batch(length=6, pad_last=0)  # Gemma 3's window is 4: the sliding layers act while generating
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0)
    frozen = tiny_model(name, impl).generate(ids, **kwargs)
    assert torch.equal(_adapted(name, impl, gate_mode).generate(ids, **kwargs), frozen)


@pytest.mark.parametrize("gate_mode", MODES)
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_per_layer_lengths_start_at_the_frozen_model(name, gate_mode):
    inputs = tiny_inputs(name)
    frozen = logits_of(tiny_model(name, "sdpa"), inputs)
    model = attach(tiny_model(name, "sdpa"), AdaptivePrefixConfig(gate_mode=gate_mode, prefix_lengths=[2, 0, 3],
                                                                   prefix_dropout=0.0))
    torch.testing.assert_close(logits_of(model, inputs), frozen, rtol=0, atol=START_TOLERANCE[gate_mode])


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("gate_mode", MODES)
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_gradient_checkpointing_gives_the_plain_gradients(name, gate_mode):
    inputs = tiny_inputs(name)
    labels = inputs["input_ids"] if name in DECODERS else torch.tensor([0, 2])
    grads = []
    for checkpointing in (False, True):
        model = _adapted(name, "sdpa", gate_mode, layer_gate_init=0.5).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-6, atol=1e-7, msg=n)
        assert grads[0][n].abs().sum() > 0, n


@pytest.mark.parametrize("gate_mode", MODES)
@pytest.mark.parametrize("name", ["bert", "llama", "deberta-v2"])
def test_it_learns_from_the_first_step_and_its_gates_leave_their_start(name, gate_mode):
    """At lambda = 0 every layer's lambda has a gradient, so each leaves 0 at the first step (exact gates use |lambda|,
    whose gradient at 0 is +1; a clamp would have none); then everything moves, and the loss falls."""
    impl = "eager" if name in PATCHED else "sdpa"
    model = _adapted(name, impl, gate_mode, prefix_init_std=0.02, token_gate_weight_std=0.02).train()
    inputs = tiny_inputs(name)
    labels = inputs["input_ids"] if name in DECODERS else torch.tensor([0, 2])
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("adaprefix.")}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(4):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        if step == 0:
            assert (model.adaprefix.layer_gate.scale.grad != 0).all()
        optimizer.step()
        if step == 0:
            assert (layer_gates(model) != 0).all()  # every layer's gate left 0 at the first step
        losses.append(loss.item())
    for n, before in start.items():
        assert not torch.equal(dict(model.named_parameters())[n], before), f"{n} did not move"
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("gate_mode,lam", [("exact", 0.6), ("separate", -0.6)])  # exact gates use |lambda|
def test_a_saved_adapter_reloads_to_identical_outputs_and_gates(tmp_path, gate_mode, lam):
    model = _adapted("llama", "sdpa", gate_mode, layer_gate_init=-0.6)
    inputs = tiny_inputs("llama")
    model.save_adapter(tmp_path)
    again = load_adapter(tiny_model("llama", "sdpa"), tmp_path)
    assert again.adapter_config.gate_mode == gate_mode
    assert torch.equal(logits_of(again, inputs), logits_of(model, inputs))
    torch.testing.assert_close(layer_gates(again), torch.full((3,), lam))  # as the attention uses it
    assert last_token_gates(again) is not None
