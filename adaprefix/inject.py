"""attach / detach: put the adapter into a Transformers model through hooks and the attention seam.

Per forward: a pre-hook on the base model builds every layer's prefix once and records the padding mask; a pre-hook
on each layer reads h_{i-1}, computes that layer's gates and leaves the gated prefix on the layer's attention site.
Hooks run outside gradient checkpointing's recompute, so the site keeps its tensors alive until the next forward.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import replace
from typing import Iterator

import torch
import torch.nn as nn

from . import attention as seam
from .arch import BackboneShape, resolve_arch
from .arch.deberta import patch_deberta_attention, unpatch_deberta_attention
from .config import AdaptivePrefixConfig, ConfigError
from .gates import LayerGate, TokenGate, pool_hidden
from .prefix import PrefixEncoder

ADAPTER_ATTR = "adaprefix"  # the submodule name: every adapter parameter is named "adaprefix.*"


class PrefixAdapter(nn.Module):
    """Every trainable tensor of the method: the prefix and, depending on the method, the two gates."""

    def __init__(self, config: AdaptivePrefixConfig, shape: BackboneShape):
        super().__init__()
        self.prefix = PrefixEncoder(config, shape)
        self.token_gate = TokenGate(config, shape.num_layers, shape.hidden_size) if config.use_token_gate else None
        self.layer_gate = LayerGate(config, shape.num_layers) if config.use_layer_gate else None


class _Runtime:
    """Non-parameter state of an attached adapter, shared by its hooks."""

    def __init__(self, model: nn.Module, config: AdaptivePrefixConfig, shape: BackboneShape, original_impl: str,
                 sites: list[seam.LayerSite], handles: list, patched: list[nn.Module], requires_grad: dict[str, bool],
                 original_class: type):
        self.config = config
        self.shape = shape
        self.original_impl = original_impl
        self.sites = sites
        self.handles = handles
        self.patched = patched
        self.requires_grad = requires_grad
        self.original_class = original_class
        self.enabled = True
        self.saved_names: list[str] = []  # adapter + head parameters, the content of a saved adapter
        self.prefix: torch.Tensor | None = None  # (N, 2, kv_heads, l, head_dim) for the current forward
        self.padding_mask: torch.Tensor | None = None  # (B, T) 2D mask of the current forward, if given
        self.token_gates: list[torch.Tensor | None] = [None] * shape.num_layers  # last forward, detached
        self.signature = inspect.signature(model.base_model.forward)


def _bound_arguments(runtime: _Runtime, args, kwargs) -> dict:
    if not args:
        return kwargs
    return runtime.signature.bind_partial(*args, **kwargs).arguments


def _base_pre_hook(model: nn.Module, runtime: _Runtime):
    def hook(module, args, kwargs):
        if not runtime.enabled:
            return None
        inputs = _bound_arguments(runtime, args, kwargs)
        mask = inputs.get("attention_mask")
        runtime.padding_mask = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
        runtime.prefix = getattr(model, ADAPTER_ATTR).prefix()
        if runtime.config.shift_positions and inputs.get("position_ids") is None:
            kwargs = {**kwargs, "position_ids": _shifted_positions(module, inputs, runtime.config.prefix_length)}
            return args, kwargs
        return None

    return hook


def _shifted_positions(base: nn.Module, inputs: dict, length: int) -> torch.Tensor:
    """Positions as P-tuning v2 gave them by feeding the prefix as `length` cached tokens."""
    ids = inputs.get("input_ids")
    embeddings = getattr(base, "embeddings", None)
    if ids is not None and hasattr(embeddings, "create_position_ids_from_input_ids"):
        # RoBERTa-style: count from padding_idx + 1, padding keeps padding_idx
        return embeddings.create_position_ids_from_input_ids(ids, embeddings.padding_idx, length)
    reference = ids if ids is not None else inputs["inputs_embeds"]
    positions = torch.arange(length, length + reference.shape[1], device=reference.device)
    return positions.unsqueeze(0).expand(reference.shape[0], -1)


def _layer_pre_hook(model: nn.Module, runtime: _Runtime, site: seam.LayerSite):
    config = runtime.config
    i = site.layer_index
    pooling = config.gate_pooling

    def hook(module, args, kwargs):
        if not runtime.enabled:
            return None
        adapter: PrefixAdapter = getattr(model, ADAPTER_ATTR)
        hidden = args[0] if args else kwargs["hidden_states"]  # h_{i-1}: (B, T, d)
        keys, values = runtime.prefix[i, 0].unsqueeze(0), runtime.prefix[i, 1].unsqueeze(0)  # (1, kv_heads, l, hd)
        p = config.prefix_dropout or 0.0
        if module.training and p > 0:
            batch = hidden.shape[0]  # one dropout mask per example, as P-tuning v2
            keys = nn.functional.dropout(keys.expand(batch, -1, -1, -1), p, training=True)
            values = nn.functional.dropout(values.expand(batch, -1, -1, -1), p, training=True)
        scale = None
        if adapter.token_gate is not None:
            alpha = adapter.token_gate(i, pool_hidden(hidden, runtime.padding_mask, pooling))  # (B, l) | (B, T, l)
            runtime.token_gates[i] = alpha.detach()
            scale = alpha
        if adapter.layer_gate is not None:
            lam = adapter.layer_gate(i)
            scale = lam if scale is None else lam * scale
        query_gate = None
        if scale is not None and scale.ndim == 3:
            query_gate = scale  # (B, T, l): applied inside attention
        elif scale is not None:
            factor = scale if scale.ndim == 0 else scale[:, None, :, None]  # (B, 1, l, 1)
            keys, values = keys * factor, values * factor
        site.prefix = seam.LayerPrefix(keys=keys, values=values, query_gate=query_gate)
        return None

    return hook


def _resolve_config(config: AdaptivePrefixConfig, model: nn.Module, causal: bool, patched: bool):
    pooling = config.gate_pooling
    if pooling == "auto":
        pooling = "token" if causal else "mean"
    if causal and pooling in ("mean", "cls") and config.use_token_gate:
        raise ConfigError(
            f"gate_pooling={pooling!r} would let a causal model's gate see future tokens (or, for 'cls', a token "
            "absent from later generation steps); use 'token' (one gate per query position) for decoders"
        )
    if patched and pooling == "token" and config.use_token_gate:
        raise ConfigError(f"gate_pooling='token' is not available for {model.config.model_type}; use mean or cls")
    if config.shift_positions and causal:
        raise ConfigError("shift_positions is a P-tuning v2 parity option for encoders; decoders keep positions")
    dropout = config.prefix_dropout
    if dropout is None:  # the backbone's hidden dropout, under whichever name its config uses
        names = ("hidden_dropout_prob", "dropout", "resid_pdrop", "hidden_dropout")
        dropout = float(next((getattr(model.config, n) for n in names if getattr(model.config, n, None)), 0.0))
    return replace(config, gate_pooling=pooling, prefix_dropout=dropout)


def _head_parameters(model: nn.Module, config: AdaptivePrefixConfig) -> set[int]:
    backbone = {id(p) for p in model.base_model.parameters()}
    excluded = set(backbone)
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if config.train_head is None and output_embeddings is not None:
        excluded |= {id(p) for p in output_embeddings.parameters()}
    if config.train_head is False:
        return set()
    return {id(p) for p in model.parameters() if id(p) not in excluded}


class AdaptivePrefixMixin:
    """Methods added to a model by :func:`attach`. The model keeps its own class as a base, so it behaves as before."""

    @property
    def adapter_config(self) -> AdaptivePrefixConfig:
        return self._adaprefix_runtime.config

    def save_adapter(self, path) -> None:
        """Write adapter_config.json and adapter.safetensors (prefix, gates, task head) into ``path``."""
        from .persistence import save_adapter

        save_adapter(self, path)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model exactly as before :func:`attach` inside this block."""
        runtime = self._adaprefix_runtime
        runtime.enabled = False
        for site in runtime.sites:
            site.enabled = False
        self.config._attn_implementation = runtime.original_impl
        try:
            yield
        finally:
            runtime.enabled = True
            for site in runtime.sites:
                site.enabled = True
            self.config._attn_implementation = seam.IMPL_PREFIX + runtime.original_impl

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


_CLASS_CACHE: dict[type, type] = {}


def _adapted_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        # Same name, so save_pretrained and reprs keep reporting the host architecture.
        _CLASS_CACHE[cls] = type(cls.__name__, (AdaptivePrefixMixin, cls), {"__qualname__": cls.__qualname__})
    return _CLASS_CACHE[cls]


def is_attached(model: nn.Module) -> bool:
    return hasattr(model, "_adaprefix_runtime")


def attach(model: nn.Module, config: AdaptivePrefixConfig | None = None) -> nn.Module:
    """Attach an adaptive prefix to ``model`` in place and return it.

    The backbone is frozen; only the prefix, the gates and the task head stay trainable. Inputs, outputs,
    ``generate``, gradient checkpointing and ``.to(...)`` behave as for the original model.
    """
    config = config or AdaptivePrefixConfig()
    if is_attached(model):
        raise ValueError("this model already has an adaprefix adapter; call adaprefix.detach(model) first")
    spec, shape, layers, causal = resolve_arch(model)
    config = _resolve_config(config, model, causal, spec.patched_attention)
    seam.register_attention()

    param = next(model.parameters())
    adapter = PrefixAdapter(config, shape).to(device=param.device, dtype=param.dtype)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    head = _head_parameters(model, config)
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    model.add_module(ADAPTER_ATTR, adapter)

    sites, handles, patched = [], [], []
    original_impl = model.config._attn_implementation
    runtime = _Runtime(model, config, shape, original_impl, sites, handles, patched, requires_grad, type(model))
    handles.append(model.base_model.register_forward_pre_hook(_base_pre_hook(model, runtime), with_kwargs=True))
    for i, layer in enumerate(layers):
        site = seam.LayerSite(i)
        attention_module = layer.get_submodule(spec.attention)
        attention_module._adaprefix_site = site
        if spec.patched_attention:
            patch_deberta_attention(attention_module)
            patched.append(attention_module)
        sites.append(site)
        handles.append(layer.register_forward_pre_hook(_layer_pre_hook(model, runtime, site), with_kwargs=True))
    model.config._attn_implementation = seam.IMPL_PREFIX + original_impl
    # What an adapter file holds, fixed now: a later requires_grad_(False) for inference must not empty it.
    runtime.saved_names = [name for name, p in model.named_parameters() if p.requires_grad]
    model._adaprefix_runtime = runtime
    model.__class__ = _adapted_class(type(model))
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove the adapter, its hooks and patches; restore the model's class, attention and requires_grad flags."""
    if not is_attached(model):
        raise ValueError("this model has no adaprefix adapter attached")
    runtime: _Runtime = model._adaprefix_runtime
    for handle in runtime.handles:
        handle.remove()
    for module in runtime.patched:
        unpatch_deberta_attention(module)
    for module in model.modules():
        if hasattr(module, "_adaprefix_site"):
            del module._adaprefix_site
    delattr(model, ADAPTER_ATTR)
    model.config._attn_implementation = runtime.original_impl
    for name, p in model.named_parameters():
        p.requires_grad_(runtime.requires_grad.get(name, True))
    del model._adaprefix_runtime
    model.__class__ = runtime.original_class
    return model
