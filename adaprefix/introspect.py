"""What the gates learned: per-layer lambda and per-example token gates (layers x pseudo tokens)."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .adapter import adapter_runtime
from .config import ConfigError
from .gates import masked_mean, padding_weights
from .multi import AdapterRoutingError


def layer_gates(model: nn.Module) -> torch.Tensor | None:
    """lambda_i for every layer as the attention uses it (|lambda_i| for exact gates), shape (N,); None when the
    method has no layer gate."""
    gate = adapter_runtime(model).adapter.layer_gate
    return None if gate is None else gate.values().detach().clone()


def last_token_gates(model: nn.Module) -> torch.Tensor | None:
    """alpha from the last forward, shape (B, N, l); per-query gates are averaged over real tokens.

    With per-layer prefix lengths (PT-2*), l is the longest layer's and a layer's missing pseudo tokens are NaN.
    None when the method has no token gate or no forward has run yet. Raises
    :class:`~adaprefix.multi.AdapterRoutingError` after a forward with ``adapter_names``, which records no gates.
    """
    runtime = adapter_runtime(model)
    if runtime.gates_routed:
        raise AdapterRoutingError("last_token_gates: the last forward ran with adapter_names, which records no token "
                                  "gates (its rows may run adapters whose gates differ in shape); to read an "
                                  "adapter's gates, model.set_adapter(name) and run its rows without adapter_names")
    lengths = runtime.config.layer_lengths(runtime.shape.num_layers)
    if runtime.adapter.token_gate is None or any(g is None for g, n in zip(runtime.token_gates, lengths) if n):
        return None
    ref = next(g for g in runtime.token_gates if g is not None)
    longest = max(lengths)
    per_layer = []
    for alpha, n in zip(runtime.token_gates, lengths):
        if n == 0:
            per_layer.append(torch.full((ref.shape[0], longest), float("nan"), dtype=ref.dtype, device=ref.device))
            continue
        if alpha.ndim == 3:  # (B, T, l): average over the query positions that are real tokens
            mask = runtime.padding_mask
            alpha = masked_mean(alpha, None if mask is None else padding_weights(mask, alpha))
        if n < longest:
            alpha = nn.functional.pad(alpha, (0, longest - n), value=float("nan"))
        per_layer.append(alpha)
    return torch.stack(per_layer, dim=1)  # (B, N, l)


def collect_token_gates(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Run the model over ``batches`` (dicts of model inputs) in eval mode; stack the token gates: (examples, N, l)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gathered = []
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                model(**inputs)
            gates = last_token_gates(model)
            if gates is None:
                raise ConfigError(f"method: {model.adapter_config.method!r} has no token gate to collect; "
                                  "collect from an apt or token-gate adapter")
            gathered.append(gates.cpu())
    finally:
        model.train(was_training)
    return torch.cat(gathered)


def effective_gates(model: nn.Module, token_gates: torch.Tensor | None = None) -> torch.Tensor:
    """lambda_i * alpha_ij averaged over examples, shape (N, l): the factor each pseudo token's key/value received.

    Under ``gate_mode="exact"`` it is the factor on the token's attention weight; under ``"separate"`` lambda_i
    scales the prefix's added output and alpha weighs the tokens only against each other (their ratios count).

    With per-layer prefix lengths, pseudo tokens a layer does not have are NaN.
    """
    config = model.adapter_config
    shape = adapter_runtime(model).shape
    gate = torch.ones(shape.num_layers, config.prefix_length)
    for i, n in enumerate(config.layer_lengths(shape.num_layers)):
        gate[i, n:] = float("nan")
    if token_gates is not None:
        gate = gate * token_gates.float().mean(dim=0)
    lam = layer_gates(model)
    if lam is not None:
        gate = gate * lam.float().cpu().unsqueeze(1)
    return gate
