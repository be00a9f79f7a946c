"""The two gates and the pooling the token gate reads, against values worked out by hand."""

import math

import pytest
import torch

from adaprefix import AdaptivePrefixConfig, attach, last_token_gates
from adaprefix.gates import LayerGate, TokenGate, masked_mean, padding_weights, pool_hidden
from tiny_models import tiny_batch, tiny_model


def test_token_gate_is_the_sigmoid_of_an_affine_map_of_the_pooled_state():
    gate = TokenGate(AdaptivePrefixConfig(prefix_length=2, token_gate_weight_std=0.0), num_layers=2, hidden_size=3)
    with torch.no_grad():
        gate.weight[1].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        gate.bias[1].copy_(torch.tensor([0.0, -math.log(3.0)]))
    pooled = torch.tensor([[math.log(3.0), 0.0, 7.0]])  # the third feature has weight 0
    # sigmoid(ln 3) = 3 / 4; sigmoid(0 - ln 3) = 1 / 4
    torch.testing.assert_close(gate(1, pooled), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(gate(0, pooled), torch.tensor([[0.5, 0.5]]))  # layer 0: zero weight and bias


def test_token_gate_starts_at_the_configured_bias_and_gives_one_gate_per_query_position():
    config = AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=0.0, token_gate_bias_init=2.0)
    gate = TokenGate(config, num_layers=3, hidden_size=5)
    per_example = gate(2, torch.randn(2, 5))
    per_query = gate(2, torch.randn(2, 7, 5))
    assert per_example.shape == (2, 4) and per_query.shape == (2, 7, 4)
    sigmoid_2 = 1 / (1 + math.exp(-2.0))  # 0.8808
    assert torch.allclose(per_example, torch.full((2, 4), sigmoid_2))
    assert torch.allclose(per_query, torch.full((2, 7, 4), sigmoid_2))


def test_token_gate_weights_start_with_the_configured_spread():
    gate = TokenGate(AdaptivePrefixConfig(prefix_length=64, token_gate_weight_std=0.5), num_layers=4, hidden_size=64)
    assert abs(gate.weight.std().item() - 0.5) < 0.02  # 16384 draws: the std is within a few percent


def test_per_layer_lengths_give_each_layer_its_own_number_of_gates():
    gate = TokenGate(AdaptivePrefixConfig(prefix_lengths=[1, 0, 3]), num_layers=3, hidden_size=4)
    pooled = torch.randn(2, 4)
    assert [gate(i, pooled).shape for i in range(3)] == [(2, 1), (2, 0), (2, 3)]


def test_layer_gate_is_one_learnable_scalar_per_layer():
    gate = LayerGate(AdaptivePrefixConfig(layer_gate_init=1.3), num_layers=3)
    assert [gate(i).item() for i in range(3)] == pytest.approx([1.3, 1.3, 1.3])
    with torch.no_grad():
        gate.scale[1] = -0.5  # unconstrained: negative values are allowed
    assert gate(1).item() == -0.5
    assert [n for n, p in gate.named_parameters() if p.requires_grad] == ["scale"]


def test_pooling_mean_cls_and_token():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # (1, 3, 2); position 2 is padding
    keep = torch.tensor([[[1.0], [1.0], [0.0]]])
    torch.testing.assert_close(pool_hidden(hidden, keep, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool_hidden(hidden, None, "mean"), torch.tensor([[104.0 / 3, -94.0 / 3]]))
    torch.testing.assert_close(pool_hidden(hidden, keep, "cls"), torch.tensor([[1.0, 2.0]]))
    assert pool_hidden(hidden, keep, "token") is hidden


def test_masked_mean_ignores_whatever_padding_holds_and_an_all_padding_row_gives_zero():
    x = torch.tensor([[[2.0], [4.0], [0.0]], [[5.0], [0.0], [0.0]]])  # (2, 3, 1)
    keep = torch.tensor([[[1.0], [1.0], [0.0]], [[0.0], [0.0], [0.0]]])
    torch.testing.assert_close(masked_mean(x, keep), torch.tensor([[3.0], [0.0]]))
    noisy = x.clone()
    noisy[0, 2] = 1e6  # a padded position's value never reaches the mean
    torch.testing.assert_close(masked_mean(noisy, keep), torch.tensor([[3.0], [0.0]]))


def test_padding_weights_are_the_last_columns_of_the_mask_in_the_hidden_dtype():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])  # (B, S): S counts earlier (cached) positions too
    hidden = torch.zeros(2, 2, 3, dtype=torch.float64)  # T = 2 current positions
    weights = padding_weights(mask, hidden)
    assert weights.dtype == torch.float64 and weights.shape == (2, 2, 1)
    assert weights.squeeze(-1).tolist() == [[1.0, 0.0], [1.0, 1.0]]


def test_an_encoder_s_gate_for_a_padded_example_equals_its_gate_without_the_padding():
    model = attach(tiny_model("bert", "eager"), AdaptivePrefixConfig(prefix_length=4, token_gate_weight_std=1.0,
                                                                     prefix_dropout=0.0))
    ids, mask = tiny_batch()  # the second example's last 3 positions are padding
    model(input_ids=ids, attention_mask=mask)
    padded = last_token_gates(model)[1]
    real = int(mask[1].sum())
    model(input_ids=ids[1:, :real], attention_mask=mask[1:, :real])
    alone = last_token_gates(model)[0]
    torch.testing.assert_close(padded, alone)
