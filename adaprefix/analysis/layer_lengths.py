"""PT-2*: per-layer prefix lengths derived from what a trained APT adapter's gates learned.

The rule (documented in docs/guides/gates.md and used by the reproduction grid):

1. Take the effective gate G, shape (N layers, l pseudo tokens): the mean over a dev set of lambda_i * alpha_ij
   (``adaprefix gates`` writes it to gates.json as ``effective_gate``).
2. A layer's importance is the prefix mass its gates let through, w_i = sum_j |G_ij| (absolute, because the layer
   scalar lambda_i is unconstrained and may turn negative).
3. A budget of B = round(budget_ratio * N * l) pseudo tokens, fewer than P-tuning v2's N * l, is shared out in
   proportion to w_i by largest remainders (Hamilton's method), so the lengths sum to B exactly; ties go to the
   lower layer. A layer may get 0: it then has no prefix at all.

Each pseudo token costs the same number of parameters in every layer (2 x key/value width), so the budget ratio is
also the ratio of PT-2*'s prefix parameters to P-tuning v2's.
"""

from __future__ import annotations

import math
from typing import Sequence


def lengths_from_gates(effective_gate: Sequence[Sequence[float]], budget_ratio: float = 0.5,
                       max_length: int | None = None) -> list[int]:
    """Per-layer prefix lengths from an (N, l) effective-gate matrix; see the module docstring for the rule.

    ``max_length`` caps any one layer (default: 2 l); what a capped layer cannot take goes to the others.
    """
    gate = [list(map(float, row)) for row in effective_gate]
    if not gate or not gate[0] or any(len(row) != len(gate[0]) for row in gate):
        raise ValueError(f"effective_gate: expected a non-empty (layers, pseudo tokens) matrix, got row lengths "
                         f"{[len(row) for row in gate]}")
    if not 0 < budget_ratio <= 2:
        raise ValueError(f"budget_ratio: expected a value in (0, 2], got {budget_ratio}")
    layers, length = len(gate), len(gate[0])
    cap = max_length if max_length is not None else 2 * length
    budget = round(budget_ratio * layers * length)
    if budget > cap * layers:
        raise ValueError(f"budget of {budget} pseudo tokens exceeds {layers} layers x max_length {cap}")
    weights = [sum(abs(x) for x in row) for row in gate]
    lengths = [0] * layers
    open_layers = list(range(layers))
    remaining = budget
    while remaining > 0:
        total = sum(weights[i] for i in open_layers)
        shares = {i: (remaining * weights[i] / total if total > 0 else remaining / len(open_layers))
                  for i in open_layers}
        given = {i: min(math.floor(shares[i]), cap - lengths[i]) for i in open_layers}
        left = remaining - sum(given.values())
        # largest remainders first; ties to the lower layer
        order = sorted(open_layers, key=lambda i: (-(shares[i] - math.floor(shares[i])), i))
        for i in order:
            if left == 0:
                break
            if lengths[i] + given[i] < cap:
                given[i] += 1
                left -= 1
        for i, extra in given.items():
            lengths[i] += extra
        remaining = budget - sum(lengths)
        open_layers = [i for i in open_layers if lengths[i] < cap]
    return lengths
