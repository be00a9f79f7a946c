"""APT's two gates: a token-level gate alpha_i computed from h_{i-1}, and a layer-level scalar lambda_i."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import AdaptivePrefixConfig


class TokenGate(nn.Module):
    """alpha_i = sigmoid(pool(h_{i-1}) W_i + b_i): one weight in (0, 1) per pseudo token, per layer, per input."""

    def __init__(self, config: AdaptivePrefixConfig, num_layers: int, hidden_size: int):
        super().__init__()
        bias = float(config.token_gate_bias_init)
        if config.prefix_lengths is None:
            # Stacked over layers so the whole gate is two tensors; layer i uses slice i.
            self.weight = nn.Parameter(torch.empty(num_layers, hidden_size, config.prefix_length))
            self.bias = nn.Parameter(torch.full((num_layers, config.prefix_length), bias))
            weights = [self.weight]
        else:  # per-layer lengths: layer i's gate has exactly l_i outputs; indexing [i] reads the same either way
            lengths = config.layer_lengths(num_layers)
            self.weight = nn.ParameterList([nn.Parameter(torch.empty(hidden_size, n)) for n in lengths])
            self.bias = nn.ParameterList([nn.Parameter(torch.full((n,), bias)) for n in lengths])
            weights = list(self.weight)
        for weight in weights:
            if config.token_gate_weight_std > 0:
                nn.init.normal_(weight, std=config.token_gate_weight_std)
            else:
                nn.init.zeros_(weight)

    def forward(self, layer: int, pooled: torch.Tensor) -> torch.Tensor:
        # pooled: (B, d) -> (B, l), or (B, T, d) -> (B, T, l) for per-query gates. The layer's slice goes to the
        # layer's device (a no-op unless the model is split across devices), not the activations to the adapter's.
        device = pooled.device
        return torch.sigmoid(pooled @ self.weight[layer].to(device) + self.bias[layer].to(device))


class LayerGate(nn.Module):
    """lambda_i: one learnable scalar per layer, unconstrained (the paper's, and separate gates': it scales an added
    output, which may be subtracted) or, for exact gates, used as |lambda_i| (a weight must not be negative)."""

    def __init__(self, config: AdaptivePrefixConfig, num_layers: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((num_layers,), float(config.layer_gate_init)))
        self.absolute = config.gate_mode == "exact"

    def forward(self, layer: int) -> torch.Tensor:
        return self.values()[layer]

    def values(self) -> torch.Tensor:
        """Every layer's lambda as the attention uses it, shape (N,)."""
        return nonnegative(self.scale) if self.absolute else self.scale


def nonnegative(x: torch.Tensor) -> torch.Tensor:
    """|x|, with gradient +1 at x = 0 instead of abs's 0.

    An exact gate weighs a pseudo token's attention weight, which must not be negative, and starts at exactly 0 so
    the adapter starts at the frozen model. abs has no dead region (a clamp at 0 has one: pushed below 0, it never
    returns), but torch gives abs a zero gradient at 0, where every exact gate starts: it would never move.
    """
    sign = torch.where(x < 0, -1.0, 1.0).to(x.dtype).detach()
    return x * sign


def pool_hidden(hidden: torch.Tensor, keep: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Summarise h_{i-1} (B, T, d) for the token gate: (B, d) for mean/cls, (B, T, d) for per-query 'token'.

    ``keep``: (B, T, 1) weights of the real tokens in hidden's dtype (see :func:`padding_weights`), or None.
    """
    if pooling == "token":
        return hidden
    if pooling == "cls":
        return hidden[:, 0]
    return masked_mean(hidden, keep)


def masked_mean(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean of x (B, T, ...) over the T positions that ``keep`` (B, T, 1) weights with 1: (B, ...).

    ``keep`` None: every position counts. A row without any kept position gives 0 rather than NaN.
    """
    if keep is None:
        return x.mean(dim=1)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def padding_weights(padding_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The (B, S) keep-mask's last T columns as (B, T, 1) weights in hidden's dtype, on hidden's device."""
    return padding_mask[:, -hidden.shape[1]:].to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
