"""The prefix encoder's projection MLP: its output is reused in eval, and never after its parameters changed."""

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach
from tiny_models import tiny_model


def _model():
    model = tiny_model("llama", "sdpa")
    return attach(model, AdaptivePrefixConfig(prefix_length=4, prefix_projection=True, projection_hidden_size=8))


def _fresh(encoder):
    """The prefix computed from the current parameters, independently of the cache."""
    with torch.no_grad():
        flat = encoder.projection(encoder.embedding)
    s = encoder.shape
    return flat.view(encoder.length, s.num_layers, 2, s.num_kv_heads, s.head_dim).permute(1, 2, 3, 0, 4)


class _MLPCalls:
    def __init__(self, encoder):
        self.n = 0
        encoder.projection.register_forward_hook(self._count)

    def _count(self, *_):
        self.n += 1


def test_eval_reuses_the_projection_output_across_forwards_and_generated_tokens():
    model = _model()
    encoder = model.adaprefix.prefix
    calls = _MLPCalls(encoder)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        model(input_ids=ids)
        model(input_ids=ids)
    assert calls.n == 1
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                   pad_token_id=0)
    assert calls.n == 1, "one MLP call serves the prompt and every generated token"
    with torch.inference_mode():
        model(input_ids=ids)
    assert calls.n == 2, "inference mode keeps its own entry (its tensors cannot serve no_grad code)"


def _optimizer_step(model, encoder):
    for p in encoder.parameters():  # gradients from some earlier backward; no forward since the cache was filled
        p.grad = torch.ones_like(p)
    torch.optim.SGD(encoder.parameters(), lr=0.1).step()


def _training_forward_and_step(model, encoder):
    model.train()
    model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    torch.optim.SGD(encoder.parameters(), lr=1.0).step()
    model.eval()


def _load_state_dict(model, encoder):
    state = {k: v + 1 for k, v in model.adaprefix.state_dict().items()}
    model.adaprefix.load_state_dict(state)


def _in_place_under_no_grad(model, encoder):
    with torch.no_grad():
        encoder.projection[2].bias.add_(1.0)


def _replaced_data(model, encoder):
    encoder.embedding.data = encoder.embedding.data + 1.0  # new storage


def _cast(model, encoder):
    model.to(torch.float64)


def _cast_back(model, encoder):  # float16 and back: same dtype, shape and versions, rounded values
    model.half()
    model.float()


CHANGES = {
    "optimizer step": _optimizer_step,
    "training forward, backward and step": _training_forward_and_step,
    "load_state_dict": _load_state_dict,
    "in-place update under no_grad": _in_place_under_no_grad,
    "parameter data replaced": _replaced_data,
    "cast to float64": _cast,
    "float16 and back": _cast_back,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_stale_projection_output_is_never_served(change):
    model = _model()
    encoder = model.adaprefix.prefix
    with torch.no_grad():
        cached = encoder().clone()
        assert encoder() is not None and encoder._cache is not None
    CHANGES[change](model, encoder)
    with torch.no_grad():
        now = encoder()
    expected = _fresh(encoder)
    # the change must change the prefix: its values, or (a cast) its dtype, which assert_close below also checks
    assert expected.dtype != cached.dtype or not torch.allclose(expected, cached), "the change must change the prefix"
    torch.testing.assert_close(now, expected, rtol=0, atol=0)


def test_training_and_gradient_forwards_neither_read_nor_keep_the_cache():
    model = _model()
    encoder = model.adaprefix.prefix
    with torch.no_grad():
        encoder()
    assert encoder._cache is not None
    out = encoder()  # eval, but gradients wanted: a fresh graph to the parameters
    assert out.requires_grad and encoder._cache is None
    out.sum().backward()
    assert encoder.embedding.grad is not None
    with torch.no_grad():
        encoder()
    model.train()
    with torch.no_grad():
        out = encoder()
    assert encoder._cache is None, "training mode never keeps it"


def test_writes_through_data_need_clear_cache():
    """``param.data`` bypasses autograd's version counter: the one change the key cannot see, hence clear_cache."""
    model = _model()
    encoder = model.adaprefix.prefix
    with torch.no_grad():
        encoder()
        encoder.projection[2].bias.data.add_(1.0)
        encoder.clear_cache()
        torch.testing.assert_close(encoder(), _fresh(encoder), rtol=0, atol=0)
