"""Per-layer prefix keys/values, optionally reparameterised by an MLP."""

from __future__ import annotations

import torch
import torch.nn as nn

from .arch import BackboneShape
from .config import AdaptivePrefixConfig


class PrefixEncoder(nn.Module):
    """Produces every layer's prefix keys and values in one call.

    The flat layout of the last dimension, (layer, key|value, head, head_dim), is the one P-tuning v2 and PEFT use,
    so their prefixes can be copied in directly.
    """

    def __init__(self, config: AdaptivePrefixConfig, shape: BackboneShape):
        super().__init__()
        self.shape = shape
        self.length = config.prefix_length
        self.layer_lengths = config.layer_lengths(shape.num_layers)
        out_dim = shape.num_layers * 2 * shape.kv_dim
        if config.prefix_lengths is not None:
            # PT-2*: each layer owns exactly its l_i pseudo tokens, so the parameter count is sum(l_i) * 2 * kv_dim.
            self.embedding = nn.ParameterList(
                [nn.Parameter(torch.empty(n, 2 * shape.kv_dim)) for n in self.layer_lengths])
            for weight in self.embedding:
                nn.init.normal_(weight, std=config.prefix_init_std)
            self.projection = None
            return
        if config.prefix_projection:
            self.embedding = nn.Parameter(torch.empty(self.length, shape.hidden_size))
            self.projection = nn.Sequential(
                nn.Linear(shape.hidden_size, config.projection_hidden_size),
                nn.Tanh(),
                nn.Linear(config.projection_hidden_size, out_dim),
            )
        else:
            self.embedding = nn.Parameter(torch.empty(self.length, out_dim))
            self.projection = None
        nn.init.normal_(self.embedding, std=config.prefix_init_std)
        if self.projection is not None and config.projection_init_std is not None:
            for linear in (self.projection[0], self.projection[2]):
                nn.init.normal_(linear.weight, std=config.projection_init_std)
                nn.init.zeros_(linear.bias)

    def forward(self) -> torch.Tensor | list[torch.Tensor]:
        """Every layer's keys and values: a tensor (N, 2, kv_heads, l, head_dim), or with per-layer lengths a list
        of N tensors (2, kv_heads, l_i, head_dim). Either way ``prefix[i][0]`` is layer i's keys."""
        s = self.shape
        if isinstance(self.embedding, nn.ParameterList):
            return [w.view(n, 2, s.num_kv_heads, s.head_dim).permute(1, 2, 0, 3)  # (2, kv_heads, l_i, head_dim)
                    for w, n in zip(self.embedding, self.layer_lengths)]
        flat = self.embedding if self.projection is None else self.projection(self.embedding)  # (l, N*2*kv_dim)
        kv = flat.view(self.length, s.num_layers, 2, s.num_kv_heads, s.head_dim)
        return kv.permute(1, 2, 3, 0, 4)  # (N, 2, kv_heads, l, head_dim)
