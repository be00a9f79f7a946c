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
        out_dim = shape.num_layers * 2 * shape.kv_dim
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

    def forward(self) -> torch.Tensor:
        flat = self.embedding if self.projection is None else self.projection(self.embedding)  # (l, N*2*kv_dim)
        s = self.shape
        kv = flat.view(self.length, s.num_layers, 2, s.num_kv_heads, s.head_dim)
        return kv.permute(1, 2, 3, 0, 4)  # (N, 2, kv_heads, l, head_dim)
