"""Gate-pruned adapters: drop the pseudo tokens whose gate never opens, giving each layer its own prefix length.

With exact gates (``gate_mode="exact"``) a gate of 0 removes its token from the attention exactly, so a token whose
gate g = |lambda_i| * alpha_ij stays at or below a small threshold on every example and position contributes (almost)
nothing and can go. With separate gates (``gate_mode="separate"``) alpha only weighs a layer's pseudo tokens against
each other inside the prefix's own softmax, so a token's gate there is |lambda_i| times its alpha relative to the
layer's most open token (alpha_ij / max_k alpha_ik, per example and position): 0 where alpha_ij = 0, which takes the
token out exactly, or where lambda_i = 0, which takes the layer's whole prefix out. The result is an adapter with
per-layer lengths (``prefix_lengths``, as PT-2* has), fewer parameters and a shorter attention, which saves and loads
like any other.

With the paper's scaling gates a gate of 0 does not remove its token (a zero key still takes softmax mass), so pruning
changes the outputs even at threshold 0; it is allowed, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .adapter import adapter_runtime
from .config import ConfigError
from .gates import padding_weights
from .inject import attach, detach
from .multi import list_adapters


class PruningWarning(UserWarning):
    """Pruning scaling gates (the paper's) changes the model's outputs even for gates of 0."""


@dataclass
class PruneResult:
    """What :func:`prune_adapter` kept: per layer, the indices of the kept pseudo tokens (into the old prefix), and
    the largest gate each old token reached (N, l; NaN where a layer had no such token)."""

    kept: list[list[int]]
    max_gates: torch.Tensor
    threshold: float

    @property
    def lengths(self) -> list[int]:
        """The new per-layer prefix lengths."""
        return [len(k) for k in self.kept]


def max_gates(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The largest gate g_ij = |lambda_i| * alpha_ij (alpha relative to the layer's largest under separate gates: see
    the module's docstring) each pseudo token reached on
    ``batches`` (dicts of model inputs), over examples and, for per-query gates, the real query positions: (N, l).

    Methods without a token gate give lambda_i for every token of layer i, and pt2 gives 1. Layers shorter than the
    longest (per-layer lengths) have NaN beyond their length.
    """
    runtime = adapter_runtime(model)
    config, adapter = runtime.config, runtime.adapter
    lengths = config.layer_lengths(runtime.shape.num_layers)
    gates = torch.ones(len(lengths), config.prefix_length, dtype=torch.float32)
    for i, n in enumerate(lengths):
        gates[i, n:] = float("nan")
    if adapter.token_gate is not None:
        most = torch.full_like(gates, float("-inf"))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        seen = False
        try:
            for batch in batches:
                with torch.no_grad():
                    model(**{k: v.to(device) for k, v in batch.items() if k != "labels"})
                for i, alpha in enumerate(runtime.token_gates):
                    if alpha is None:
                        continue
                    alpha = alpha.float()
                    if config.gate_mode == "separate":  # only the ratios count: each relative to the most open
                        top = alpha.amax(dim=-1, keepdim=True)
                        alpha = alpha / torch.where(top > 0, top, torch.ones_like(top))
                    if alpha.ndim == 3:  # (B, T, l): only the real tokens' queries count
                        mask = runtime.padding_mask
                        if mask is not None:
                            alpha = alpha.masked_fill(padding_weights(mask, alpha).to(alpha.device) == 0, float("-inf"))
                        alpha = alpha.amax(dim=1)
                    most[i, : alpha.shape[-1]] = torch.maximum(most[i, : alpha.shape[-1]], alpha.amax(dim=0).cpu())
                    seen = True
        finally:
            model.train(was_training)
        if not seen:
            raise ConfigError("prune: no batch reached the token gates; pass at least one batch of model inputs")
        gates = torch.where(torch.isnan(gates), gates, most)
    if adapter.layer_gate is not None:
        gates = gates * adapter.layer_gate.values().detach().float().abs().cpu()[:, None]
    return gates


def prune_adapter(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], threshold: float) -> PruneResult:
    """Remove, in place, every pseudo token whose gate never exceeds ``threshold`` on ``batches``.

    The attached adapter is replaced by one with per-layer lengths (``prefix_lengths``) holding the kept tokens'
    keys and values and their gate weights; the layer gates and the task head are kept as they are. A projected
    prefix (``prefix_projection``) becomes its output. With exact or separate gates, removing tokens whose gates are
    exactly 0 changes no output. Refused when nothing would be left, and on a model with several adapters loaded (prune
    before loading the others).
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
        raise ConfigError(f"threshold: expected a number >= 0, got {threshold!r}")
    runtime = adapter_runtime(model)
    if len(list_adapters(model)) > 1:
        raise ConfigError(f"prune: this model has several adapters ({', '.join(list_adapters(model))}); prune one "
                          "adapter alone, then load the others")
    config, adapter = runtime.config, runtime.adapter
    if config.method == "pt2":
        raise ConfigError("prune: method 'pt2' has no gate to prune by; train an apt adapter (gate_mode 'exact')")
    if config.gate_mode == "scale":
        warnings.warn("prune: with gate_mode 'scale' (the paper's) a gate of 0 does not remove its token (a zero key "
                      "still takes attention mass): the pruned adapter's outputs will differ", PruningWarning,
                      stacklevel=2)
    gates = max_gates(model, batches)
    kept = [[j for j in range(gates.shape[1]) if not torch.isnan(gates[i, j]) and gates[i, j] > threshold]
            for i in range(gates.shape[0])]
    if not any(kept):
        raise ConfigError(f"prune: no pseudo token's gate exceeds threshold {threshold:g} (the largest is "
                          f"{float(gates.nan_to_num(-1).max()):.3g}); use a lower threshold")
    with torch.no_grad():
        prefix = [(layer[0].detach().clone(), layer[1].detach().clone()) for layer in adapter.prefix()]
        token_gate = adapter.token_gate
        weights = [(token_gate.weight[i].detach().clone(), token_gate.bias[i].detach().clone())
                   for i in range(len(kept))] if token_gate is not None else None
        layer_scale = adapter.layer_gate.scale.detach().clone() if adapter.layer_gate is not None else None
    new_config = replace(config, prefix_lengths=[len(k) for k in kept], prefix_projection=False)
    name, training = runtime.adapter_name, model.training
    detach(model)
    attach(model, new_config)
    new = adapter_runtime(model)
    new.adapter_name = name
    new.adapter.train(training)
    shape = new.shape
    with torch.no_grad():
        for i, keep in enumerate(kept):
            if not keep:
                continue
            index = torch.tensor(keep)
            keys, values = (x[:, index.to(x.device)] for x in prefix[i])  # (kv_heads, l_i, head_dim)
            rows = torch.stack([keys, values]).permute(2, 0, 1, 3).reshape(len(keep), 2 * shape.kv_dim)
            new.adapter.prefix.embedding[i].copy_(rows)
            if weights is not None:
                weight, bias = weights[i]
                new.adapter.token_gate.weight[i].copy_(weight[:, index.to(weight.device)])
                new.adapter.token_gate.bias[i].copy_(bias[index.to(bias.device)])
        if layer_scale is not None:
            new.adapter.layer_gate.scale.copy_(layer_scale)
    return PruneResult(kept, gates, float(threshold))
