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
            self._cache = None
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
        self._cache: tuple[tuple, torch.Tensor] | None = None  # (key, projection output), see _projected

    def _projected(self) -> torch.Tensor:
        """The projection MLP's output; in eval mode, when no gradient is wanted, reused while nothing changed.

        Generation calls the model once per new token, each call needing the same (l, N*2*kv_dim) output, whose MLP
        reads r x N*2*kv_dim weights. The cache key holds, for every parameter, its storage address, dtype, device,
        shape and version counter (which every in-place update of a parameter bumps: optimizer steps,
        ``load_state_dict``, ``copy_`` or ``mul_`` under no_grad), plus the grad, inference and autocast modes;
        ``.to()``, ``.half()``, ``.float()`` and the like clear it. Training mode, or a forward that needs gradients,
        never reads or keeps it. Writes through ``param.data`` bypass version counters: call :meth:`clear_cache`
        after those.
        """
        need_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or need_grad:
            self._cache = None
            return self.projection(self.embedding)
        device = self.embedding.device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        key = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast,
               *((p.data_ptr(), p._version, p.dtype, p.device, tuple(p.shape)) for p in self.parameters()))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.projection(self.embedding))
        return self._cache[1]

    def clear_cache(self) -> None:
        """Drop the cached projection output (only needed after writing parameters through ``.data``)."""
        self._cache = None

    def _apply(self, fn, *args, **kwargs):
        self._cache = None  # .to() / .half() / ... swap parameter storage without bumping version counters
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {**state, "_cache": None}  # copies and pickles recompute on their own parameters

    def forward(self) -> torch.Tensor | list[torch.Tensor]:
        """Every layer's keys and values: a tensor (N, 2, kv_heads, l, head_dim), or with per-layer lengths a list
        of N tensors (2, kv_heads, l_i, head_dim). Either way ``prefix[i][0]`` is layer i's keys."""
        s = self.shape
        if isinstance(self.embedding, nn.ParameterList):
            return [w.view(n, 2, s.num_kv_heads, s.head_dim).permute(1, 2, 0, 3)  # (2, kv_heads, l_i, head_dim)
                    for w, n in zip(self.embedding, self.layer_lengths)]
        flat = self.embedding if self.projection is None else self._projected()  # (l, N*2*kv_dim)
        kv = flat.view(self.length, s.num_layers, 2, s.num_kv_heads, s.head_dim)
        return kv.permute(1, 2, 3, 0, 4)  # (N, 2, kv_heads, l, head_dim)
