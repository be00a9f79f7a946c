"""attach / detach / load_adapter: put the adapter into a Transformers model through hooks and the attention seam.

Per forward: a pre-hook on the base model builds every layer's prefix once and records the padding mask; a pre-hook
on each layer reads h_{i-1}, computes that layer's gates and leaves the gated prefix on the layer's attention site,
and a post-hook clears it when the layer returns. transformers checkpoints a layer's forward, not its hooks, so a
checkpointed recompute gets its own forward's prefix back from a wrapper around the checkpointing function.

What an attached adapter is (its module and runtime state) lives in :mod:`adaprefix.adapter`; the adapter's files in
:mod:`adaprefix.persistence`, which this module uses to save and load (and which does not import this one).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from typing import Iterator

import torch
import torch.nn as nn

from . import attention as seam
from .adapter import (ADAPTER_ATTR, PARAM_PREFIX, RUNTIME_ATTR, AdapterRuntime, AdapterStateError, PrefixAdapter,
                      adapter_parameters, adapter_runtime, is_attached)
from .arch import UnsupportedModelError, hidden_dropout_name, resolve_arch
from .arch.table import SUPPORTED_ATTENTION, unpatch_attention
from .config import AdaptivePrefixConfig, ConfigError
from .gates import padding_weights, pool_hidden
from .persistence import AdapterLoadError, check_adapter_tensors, read_adapter, save_adapter


def _bound_arguments(runtime: AdapterRuntime, args, kwargs) -> dict:
    return {**dict(zip(runtime.arg_names, args)), **kwargs}


def padding_mask_from(mask) -> torch.Tensor | None:
    """The (B, S) keep-mask of real keys, from a 2D mask or reduced from a 4D one.

    A 4D mask (B, 1|H, T, S) keeps or drops (query, key) pairs. A key is padding when no query may see it, which is
    how DeBERTa reduces its own 4D masks; causal and block-diagonal masks leave every real key visible to some query.
    """
    if not isinstance(mask, torch.Tensor):
        return None
    if mask.ndim == 2:
        return mask
    if mask.ndim != 4:
        raise UnsupportedModelError(
            f"adaprefix: an attention_mask of shape {tuple(mask.shape)} cannot be reduced to the padding the token gate "
            "pools over; pass a 2D (batch, keys) mask or a 4D (batch, 1, queries, keys) mask"
        )
    if mask.dtype == torch.bool:
        keep = mask
    elif mask.is_floating_point():  # additive: 0 keeps, a large negative value (or -inf) drops
        keep = mask > torch.finfo(mask.dtype).min / 2
    else:  # integer 1 = keep, 0 = drop
        keep = mask != 0
    return keep.any(dim=-2).any(dim=1).to(torch.long)  # (B, S)


class _BasePreHook:
    """Runs before the base model: builds every layer's prefix once and records the padding of this forward."""

    def __init__(self, runtime: AdapterRuntime):
        self.runtime = runtime

    def __call__(self, module, args, kwargs):
        runtime = self.runtime
        if not runtime.enabled:
            return None
        expected = seam.IMPL_PREFIX + runtime.original_impl
        if module.config._attn_implementation != expected:
            raise UnsupportedModelError(
                f"adaprefix: the attention implementation was changed to {module.config._attn_implementation!r} "
                "after attach, which bypasses the prefix; switch it with model.set_attn_implementation('eager' or "
                "'sdpa') (adaprefix re-routes it), or adaprefix.detach(model) first to run another implementation"
            )
        inputs = _bound_arguments(runtime, args, kwargs)
        runtime.padding_mask = padding_mask_from(inputs.get("attention_mask"))
        runtime.prefix = runtime.adapter.prefix()
        want_weights = inputs.get("output_attentions")
        if want_weights is None:
            want_weights = getattr(module.config, "output_attentions", False)
        runtime.forward_state = seam.ForwardState(want_weights=bool(want_weights))
        if runtime.config.shift_positions and inputs.get("position_ids") is None:
            positions = _shifted_positions(module, inputs, runtime.config.prefix_length)
            return args, {**kwargs, "position_ids": positions}
        return None


class _BasePostHook:
    """Runs after the base model, also when it raised: the forward's prefix (and its graph) is released."""

    def __init__(self, runtime: AdapterRuntime):
        self.runtime = runtime

    def __call__(self, module, args, output):
        self.runtime.prefix = None
        self.runtime.forward_state = None


def _shifted_positions(base: nn.Module, inputs: dict, length: int) -> torch.Tensor:
    """Positions as P-tuning v2 gave them by feeding the prefix as `length` cached tokens."""
    ids = inputs.get("input_ids")
    embeddings = getattr(base, "embeddings", None)
    if ids is not None and getattr(embeddings, "padding_idx", None) is not None:
        # RoBERTa-style (RoBERTa, XLM-R, MPNet): count from padding_idx + 1, padding keeps padding_idx; the formula
        # of RoBERTa's create_position_ids_from_input_ids, which MPNet's embeddings do not carry as a method.
        keep = ids.ne(embeddings.padding_idx).int()
        positions = ((torch.cumsum(keep, dim=1).type_as(keep) + length) * keep).long() + embeddings.padding_idx
    else:
        reference = ids if ids is not None else inputs["inputs_embeds"]
        positions = torch.arange(length, length + reference.shape[1], device=reference.device)
        positions = positions.unsqueeze(0).expand(reference.shape[0], -1)
    table = getattr(base.config, "max_position_embeddings", None)
    if table is not None and positions.numel() and int(positions.max()) >= table:
        tokens = positions.shape[1]
        raise ConfigError(
            f"adaprefix: shift_positions=True places {tokens} input tokens after the {length} prefix positions, up "
            f"to position id {int(positions.max())}, but the model has max_position_embeddings={table}; shorten "
            f"inputs to at most {tokens - (int(positions.max()) + 1 - table)} tokens or set shift_positions=False"
        )
    return positions


class _CheckpointReplay:
    """Wraps a layer's gradient-checkpointing function so that its recompute reads its own forward's prefix.

    transformers checkpoints a layer's ``forward``, not its hooks: during backward the layer is recomputed without
    the pre-hook, and by then later forwards (R-Drop, summed micro-batches) have put their own prefix on the site.
    The prefix of this call is bound here and put back on the site for the recompute.
    """

    def __init__(self, inner, runtime: AdapterRuntime, site: seam.LayerSite):
        self.inner = inner
        self.runtime = runtime
        self.site = site

    def __call__(self, function, *args, **kwargs):
        if getattr(self.inner, "keywords", {}).get("use_reentrant"):
            # The reentrant variant replays the layer in a nested backward that frees the gate's graph, which the
            # outer backward still needs ("backward through the graph a second time").
            raise UnsupportedModelError(
                "adaprefix: reentrant gradient checkpointing (use_reentrant=True) cannot carry the prefix and gates "
                "into the recompute; enable it with gradient_checkpointing_kwargs={'use_reentrant': False} "
                "(transformers' default)"
            )
        site, prefix = self.site, self.site.prefix
        # The implementation too: a backward run inside disable_adapter() must still recompute with the prefix.
        config = self.runtime.model_config
        impl = config._attn_implementation

        def run(*run_args, **run_kwargs):
            previous, previous_impl = site.prefix, config._attn_implementation
            site.prefix = prefix
            config._attn_implementation = impl
            try:
                return function(*run_args, **run_kwargs)
            finally:
                site.prefix = previous
                config._attn_implementation = previous_impl

        return self.inner(run, *args, **kwargs)


def _layer_device(layer: nn.Module, hidden: torch.Tensor) -> torch.device:
    """The device layer i computes on. h_{i-1} can still be on the previous layer's device: under device_map,
    accelerate's hook moves the inputs only after the pre-hooks have run."""
    hook = getattr(layer, "_hf_hook", None)
    for candidate in (hook, *getattr(hook, "hooks", ())):
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device)
    weight = next(layer.parameters(), None)
    return hidden.device if weight is None else weight.device


class _LayerPreHook:
    """Reads h_{i-1}, computes layer i's gates and leaves the gated prefix on the layer's attention site."""

    def __init__(self, runtime: AdapterRuntime, site: seam.LayerSite):
        self.runtime = runtime
        self.site = site

    def __call__(self, module, args, kwargs):
        runtime, site = self.runtime, self.site
        if not runtime.enabled:
            return None
        config, adapter, i = runtime.config, runtime.adapter, site.layer_index
        hidden = args[0] if args else kwargs["hidden_states"]  # h_{i-1}: (B, T, d)
        if config.prefix_lengths is not None and config.prefix_lengths[i] == 0:
            site.prefix = None  # PT-2*: this layer has no prefix; its attention runs as the host's
            return None
        # A layer called outside the base model's forward builds the prefix for itself.
        prefix = runtime.prefix if runtime.prefix is not None else adapter.prefix()
        # A model split across devices (device_map): the layer's slice of the adapter goes to the layer's device.
        device = _layer_device(module, hidden)
        keys, values = prefix[i][0].unsqueeze(0).to(device), prefix[i][1].unsqueeze(0).to(device)  # (1, kvh, l, hd)
        p = config.prefix_dropout or 0.0
        if module.training and p > 0:
            batch = hidden.shape[0]  # one dropout mask per example, as P-tuning v2
            keys = nn.functional.dropout(keys.expand(batch, -1, -1, -1), p, training=True)
            values = nn.functional.dropout(values.expand(batch, -1, -1, -1), p, training=True)
        # A layer called outside the base model's forward shares nothing with other layers.
        shared = runtime.forward_state if runtime.forward_state is not None else seam.ForwardState()
        scale = None
        if adapter.token_gate is not None:
            keep, mask = None, runtime.padding_mask
            if mask is not None and config.gate_pooling == "mean":  # sliced and cast once per forward
                key = ("pool", hidden.device, hidden.dtype, hidden.shape[1])
                keep = shared.once(key, lambda: padding_weights(mask, hidden), source=mask)
            pooled = pool_hidden(hidden, keep, config.gate_pooling).to(device)  # pooled where h is, then moved
            alpha = adapter.token_gate(i, pooled)  # (B, l) | (B, T, l)
            runtime.token_gates[i] = alpha.detach()
            scale = alpha
        if adapter.layer_gate is not None:
            lam = adapter.layer_gate(i).to(device)
            scale = lam if scale is None else lam * scale
        query_gate = None
        if scale is not None and scale.ndim == 3:
            query_gate = scale  # (B, T, l): applied inside attention
        elif scale is not None:
            factor = scale if scale.ndim == 0 else scale[:, None, :, None]  # (B, 1, l, 1)
            keys, values = keys * factor, values * factor
        site.prefix = seam.LayerPrefix(keys=keys, values=values, query_gate=query_gate, shared=shared)
        checkpointing = module.__dict__.get("_gradient_checkpointing_func")
        if checkpointing is not None and not isinstance(checkpointing, _CheckpointReplay):
            # Wrapped here, on every call, because gradient checkpointing may be enabled after attach.
            module._gradient_checkpointing_func = _CheckpointReplay(checkpointing, runtime, site)
        return None


class _LayerPostHook:
    """Clears the site after the layer, also when it raised, so no forward's graph outlives its outputs."""

    def __init__(self, site: seam.LayerSite):
        self.site = site

    def __call__(self, module, args, output):
        self.site.prefix = None


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
        name = hidden_dropout_name(model.config)
        dropout = float(getattr(model.config, name) or 0.0) if name else 0.0
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
        return adapter_runtime(self).config

    def save_adapter(self, path) -> None:
        """Write adapter_config.json and adapter.safetensors (prefix, gates, task head) into ``path``."""
        save_adapter(self, path)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model exactly as before :func:`attach` inside this block."""
        runtime = adapter_runtime(self)
        runtime.enabled = False
        self.config._attn_implementation = runtime.original_impl
        try:
            yield
        finally:
            runtime.enabled = True
            self.config._attn_implementation = seam.IMPL_PREFIX + runtime.original_impl

    def set_attn_implementation(self, attn_implementation, *args, **kwargs):
        """Switch between eager and sdpa while attached; the adapter's variant of the new one keeps the prefix.

        Any other implementation (flash attention, flex attention, kernels) would run without the prefix, so it is
        refused: detach the adapter first to use it.
        """
        requested = attn_implementation
        if isinstance(requested, dict):
            if set(requested) - {""}:
                raise UnsupportedModelError(
                    "adaprefix: per-sub-config attention implementations are not supported while an adapter is "
                    "attached; pass one implementation name ('eager' or 'sdpa')"
                )
            requested = requested.get("", adapter_runtime(self).original_impl)
        if isinstance(requested, str) and requested.startswith(seam.IMPL_PREFIX):
            requested = requested[len(seam.IMPL_PREFIX):]
        runtime = adapter_runtime(self)
        supported = ("eager",) if runtime.patched else SUPPORTED_ATTENTION  # DeBERTa, MPNet: their own patch
        if requested not in supported:
            raise UnsupportedModelError(
                f"adaprefix: attention implementation {requested!r} would bypass the prefix of the attached adapter; "
                f"with an adapter attached use one of: {', '.join(supported)}. To run {requested!r}, save the adapter "
                "(model.save_adapter) and adaprefix.detach(model) first"
            )
        if not runtime.patched:
            super().set_attn_implementation(seam.IMPL_PREFIX + requested, *args, **kwargs)
        runtime.original_impl = requested
        self.config._attn_implementation = (seam.IMPL_PREFIX if runtime.enabled else "") + requested

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """Save the base model as it would be without the adapter, and the adapter beside it.

        ``model.safetensors`` holds no ``adaprefix.*`` tensor, so ``from_pretrained`` reloads the base model cleanly;
        ``adapter_config.json`` and ``adapter.safetensors`` (as :meth:`save_adapter` writes them) keep the adapter:
        ``load_adapter(AutoModel...from_pretrained(path), path)`` restores both. Two callers get every tensor in
        the weights file instead: one that passes ``state_dict``, and transformers' Trainer, whose checkpoints must
        resume with the prefix and gates it trained (it reloads them from that file only).
        """
        if state_dict is not None or _called_by_trainer():
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        state_dict = {k: v for k, v in self.state_dict().items() if not k.startswith(PARAM_PREFIX)}
        result = super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        if kwargs.get("is_main_process", True):
            self.save_adapter(save_directory)
        return result

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _called_by_trainer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__") == "transformers.trainer":
            return True
        frame = frame.f_back
    return False


_CLASS_CACHE: dict[type, type] = {}


def _adapted_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        # Same name, so save_pretrained and reprs keep reporting the host architecture.
        _CLASS_CACHE[cls] = type(cls.__name__, (AdaptivePrefixMixin, cls), {"__qualname__": cls.__qualname__})
    return _CLASS_CACHE[cls]


def attach(model: nn.Module, config: AdaptivePrefixConfig | None = None) -> nn.Module:
    """Attach an adaptive prefix to ``model`` in place and return it.

    The backbone is frozen; only the prefix, the gates and the task head stay trainable. Inputs, outputs,
    ``generate``, gradient checkpointing and ``.to(...)`` behave as for the original model.
    """
    config = config or AdaptivePrefixConfig()
    if is_attached(model):
        raise AdapterStateError("this model already has an adaprefix adapter; call adaprefix.detach(model) first")
    spec, shape, layers, causal = resolve_arch(model)
    config = _resolve_config(config, model, causal, spec.patched_attention)
    seam.register_attention()

    param = next(model.parameters())
    adapter = PrefixAdapter(config, shape).to(device=param.device, dtype=param.dtype).train(model.training)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    head = _head_parameters(model, config)
    for p in model.parameters():
        p.requires_grad_(id(p) in head)
    model.add_module(ADAPTER_ATTR, adapter)

    sites, handles, patched = [], [], []
    original_impl = model.config._attn_implementation
    runtime = AdapterRuntime(model, adapter, config, shape, original_impl, sites, handles, patched, requires_grad,
                             type(model))
    base = model.base_model
    handles.append(base.register_forward_pre_hook(_BasePreHook(runtime), with_kwargs=True))
    handles.append(base.register_forward_hook(_BasePostHook(runtime), always_call=True))
    for i, layer in enumerate(layers):
        site = seam.LayerSite(i)
        attention_module = layer.get_submodule(spec.attention)
        setattr(attention_module, seam.SITE_ATTR, site)
        if spec.patched_attention:
            spec.attention_patch(attention_module)
            patched.append(attention_module)
        sites.append(site)
        handles.append(layer.register_forward_pre_hook(_LayerPreHook(runtime, site), with_kwargs=True))
        handles.append(layer.register_forward_hook(_LayerPostHook(site), always_call=True))
    model.config._attn_implementation = seam.IMPL_PREFIX + original_impl
    # What an adapter file holds, fixed now: a later requires_grad_(False) for inference must not empty it.
    runtime.saved_names = [name for name, p in model.named_parameters() if p.requires_grad]
    setattr(model, RUNTIME_ATTR, runtime)
    model.__class__ = _adapted_class(type(model))
    return model


def detach(model: nn.Module) -> nn.Module:
    """Remove the adapter, its hooks and patches; restore the model's class, attention and requires_grad flags."""
    runtime = adapter_runtime(model)
    for handle in runtime.handles:
        handle.remove()
    for module in runtime.patched:
        unpatch_attention(module)
    for module in model.modules():
        if hasattr(module, seam.SITE_ATTR):
            delattr(module, seam.SITE_ATTR)
        replay = module.__dict__.get("_gradient_checkpointing_func")
        if isinstance(replay, _CheckpointReplay):
            module._gradient_checkpointing_func = replay.inner
    delattr(model, ADAPTER_ATTR)
    model.config._attn_implementation = runtime.original_impl
    for name, p in model.named_parameters():
        p.requires_grad_(runtime.requires_grad.get(name, True))
    delattr(model, RUNTIME_ATTR)
    model.__class__ = runtime.original_class
    return model


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Attach the adapter saved in ``path`` to a fresh ``model`` and load its tensors; returns the model.

    Shapes must match exactly. A different base checkpoint of the same shape loads with a
    :class:`~adaprefix.persistence.BaseModelMismatchWarning`: the prefix was learned for other weights.
    Everything the files alone can tell is checked before attaching; a model the tensors do not fit is detached
    again before the :class:`~adaprefix.persistence.AdapterLoadError` is raised.
    """
    config, tensors = read_adapter(path, model)
    attach(model, config)
    expected = adapter_parameters(model)
    try:
        check_adapter_tensors(path, expected, tensors)
    except AdapterLoadError:
        detach(model)
        raise
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name])
    return model
