"""PT-2*'s rule: per-layer prefix lengths in proportion to the gate mass each layer lets through."""

import pytest

from adaprefix.analysis.layer_lengths import lengths_from_gates


def test_lengths_follow_the_gate_mass_and_sum_to_the_budget():
    # layer masses 3.0, 1.0, 0.0, 2.0 (sum 6); budget 0.5 * 4 * 3 = 6 tokens -> exactly 3, 1, 0, 2
    gate = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.5]]
    assert lengths_from_gates(gate, budget_ratio=0.5) == [3, 1, 0, 2]


def test_negative_layer_scalars_count_by_magnitude():
    assert lengths_from_gates([[-2.0, -2.0], [1.0, 1.0]], budget_ratio=0.75) == [2, 1]


def test_largest_remainders_and_ties_to_the_lower_layer():
    # equal masses, budget 4 over 3 layers: 1.33 each -> one extra token, to layer 1
    assert lengths_from_gates([[1.0, 1.0]] * 3, budget_ratio=4 / 6) == [2, 1, 1]


def test_a_capped_layer_passes_its_surplus_on():
    # all mass in layer 1, budget 2 * 1 * ... : 1.0 * 2 layers * 2 tokens = 4 with cap 3 -> 3 + 1
    assert lengths_from_gates([[5.0, 5.0], [0.0, 0.0]], budget_ratio=1.0, max_length=3) == [3, 1]


def test_all_zero_gates_share_the_budget_evenly():
    assert lengths_from_gates([[0.0, 0.0]] * 4, budget_ratio=0.5) == [1, 1, 1, 1]


@pytest.mark.parametrize("gate,ratio,message", [
    ([], 0.5, "non-empty"), ([[1.0, 2.0], [1.0]], 0.5, "row lengths"), ([[1.0]], 0.0, "budget_ratio"),
    ([[1.0, 1.0]], 2.0, "exceeds 1 layers x max_length 3"),
])
def test_bad_inputs_are_refused(gate, ratio, message):
    with pytest.raises(ValueError, match=message):
        lengths_from_gates(gate, budget_ratio=ratio, max_length=3 if message.startswith("exceeds") else None)
