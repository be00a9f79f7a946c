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
from .multi import (BANK_ATTR, RoutingPostHook, RoutingPreHook, add_adapter, adapter_configs, check_adapter_name,
                    begin_routed_forward, delete_adapter, list_adapters, position_shifts, routed, routed_layer_prefix,
                    set_adapter)
from .peft_format import is_peft_folder, read_peft_adapter
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
        runtime.gates_routed = runtime.routing is not None
        if runtime.routing is not None:  # rows name their adapters: each one's prefix once, and its rows' shift
            begin_routed_forward(runtime, runtime.padding_mask)
            shifts = position_shifts(runtime)
            if any(shifts.values()) and inputs.get("position_ids") is None:
                return args, {**kwargs, "position_ids": _routed_positions(module, inputs, runtime, shifts)}
            return None
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
    padding_idx = getattr(getattr(base, "embeddings", None), "padding_idx", None)
    if ids is not None and padding_idx is not None:
        # RoBERTa-style (RoBERTa, XLM-R, MPNet): count from padding_idx + 1, padding keeps padding_idx; the formula
        # of RoBERTa's create_position_ids_from_input_ids, which MPNet's embeddings do not carry as a method.
        keep = ids.ne(padding_idx).int()
        positions = ((torch.cumsum(keep, dim=1).type_as(keep) + length) * keep).long() + padding_idx
    else:
        reference = ids if ids is not None else inputs["inputs_embeds"]
        # From embeddings, RoBERTa-style models cannot see padding and number every token from padding_idx + 1
        # (their create_position_ids_from_inputs_embeds); the shift starts there too, as on the ids path.
        start = length + (padding_idx + 1 if padding_idx is not None else 0)
        positions = torch.arange(start, start + reference.shape[1], device=reference.device)
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


def _routed_positions(base: nn.Module, inputs: dict, runtime: AdapterRuntime, shifts: dict[str, int]) -> torch.Tensor:
    """Each row's positions shifted by its own adapter's prefix length, or not shifted (a shift of 0)."""
    by_shift = {shift: _shifted_positions(base, inputs, shift) for shift in set(shifts.values())}
    positions = by_shift[0].clone() if 0 in by_shift else next(iter(by_shift.values())).clone()
    for name, rows in runtime.routing.rows(positions.shape[0], positions.device).items():
        positions[rows] = by_shift[shifts[name]][rows]
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


class _LayerPreHook:
    """Reads h_{i-1}, computes layer i's gates and leaves the gated prefix on the layer's attention site."""

    def __init__(self, runtime: AdapterRuntime, site: seam.LayerSite):
        self.runtime = runtime
        self.site = site

    def __call__(self, module, args, kwargs):
        runtime, site = self.runtime, self.site
        if not runtime.enabled:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]  # h_{i-1}: (B, T, d)
        # A layer called outside the base model's forward shares nothing with other layers.
        shared = runtime.forward_state if runtime.forward_state is not None else seam.ForwardState()
        if runtime.routing is not None:  # a batch whose rows name their adapters (adapter_names=...)
            site.prefix = routed_layer_prefix(runtime, site.layer_index, module, hidden, shared)
        else:
            # A layer called outside the base model's forward builds the prefix for itself.
            prefix = runtime.prefix if runtime.prefix is not None else runtime.adapter.prefix()
            site.prefix = runtime.adapter.layer_prefix(runtime.config, prefix, site.layer_index, module, hidden,
                                                       runtime.padding_mask, shared, runtime.token_gates)
        checkpointing = module.__dict__.get("_gradient_checkpointing_func")
        if site.prefix is not None and checkpointing is not None and not isinstance(checkpointing,
                                                                                    _CheckpointReplay):
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

    def __reduce_ex__(self, protocol):
        # The attached class is made at attach time and cannot be found by name, which pickle needs: rebuild it from
        # the host class, which can (torch.save(model), multiprocessing). copy.deepcopy takes the same route.
        reduced = super().__reduce_ex__(protocol)
        if not isinstance(reduced, tuple) or len(reduced) < 2 or reduced[1][:1] != (type(self),):
            return reduced
        return (_new_attached, (type(self)._adaprefix_host,), *reduced[2:])

    @property
    def adapter_config(self) -> AdaptivePrefixConfig:
        """The active adapter's config (as saved in its ``adaprefix_config.json``)."""
        return adapter_runtime(self).config

    def save_adapter(self, path) -> None:
        """Write adaprefix_config.json and adapter.safetensors (prefix, gates, task head) into ``path``."""
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
        ``adaprefix_config.json`` and ``adapter.safetensors`` (as :meth:`save_adapter` writes them) keep the adapter:
        ``load_adapter(AutoModel...from_pretrained(path), path)`` restores both. Two callers get every tensor in
        the weights file instead: one that passes ``state_dict``, and transformers' Trainer, whose checkpoints must
        resume with the prefix and gates it trained (it reloads them from that file only).
        """
        if state_dict is not None or _called_by_trainer():
            return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        state_dict = {k: v for k, v in self.state_dict().items()
                      if not k.startswith((PARAM_PREFIX, BANK_ATTR + "."))}
        result = super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
        if kwargs.get("is_main_process", True):
            self.save_adapter(save_directory)
        return result

    def trainable_parameter_count(self) -> int:
        """The number of parameters that require grad: prefix, gates and task head (PEFT's
        ``print_trainable_parameters`` prints this)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # Several adapters on one model (adaprefix.multi), under PEFT's names.

    def load_adapter(self, path, adapter_name: str | None = None):
        """Add the adapter saved in ``path`` under ``adapter_name`` (see :func:`adaprefix.load_adapter`)."""
        return load_adapter(self, path, adapter_name=adapter_name)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the adapter a forward without ``adapter_names`` runs (and that is saved)."""
        set_adapter(self, adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name`` (not the last one: :func:`adaprefix.detach` removes that)."""
        delete_adapter(self, adapter_name)

    @property
    def active_adapter(self) -> str:
        """The name of the active adapter."""
        return adapter_runtime(self).adapter_name

    @property
    def active_adapters(self) -> list[str]:
        """``[active_adapter]``: one adapter is active at a time (rows of a batch may still name others)."""
        return [adapter_runtime(self).adapter_name]

    @property
    def peft_config(self) -> dict[str, AdaptivePrefixConfig]:
        """Every loaded adapter's config by name, in load order (PEFT's name; :func:`adaprefix.list_adapters`)."""
        return adapter_configs(self)

    def generate(self, *args, adapter_names=None, **kwargs):
        """``generate`` of the host model; ``adapter_names`` (one per prompt) sends each prompt through its adapter."""
        with routed(self, adapter_names, prompts=_prompt_count(args, kwargs)):
            return super().generate(*args, **kwargs)


def _prompt_count(args, kwargs) -> int | None:
    """The number of prompts given to ``generate`` (its first argument, or the ids, embeddings or mask by name)."""
    for value in (args[0] if args else None, *(kwargs.get(k) for k in ("inputs", "input_ids", "inputs_embeds",
                                                                       "attention_mask"))):
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    return None


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
        _CLASS_CACHE[cls] = type(cls.__name__, (AdaptivePrefixMixin, cls),
                                 {"__qualname__": cls.__qualname__, "_adaprefix_host": cls})
    return _CLASS_CACHE[cls]


def _new_attached(host: type) -> nn.Module:
    """An empty instance of the attached class of ``host``, for pickle to fill in (see ``__reduce_ex__``); in a new
    process this also registers the attention functions its config names."""
    seam.register_attention()
    cls = _adapted_class(host)
    return cls.__new__(cls)


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
    # adapter_names=[...] (one adapter per example) is taken out of the model's arguments before its forward runs.
    handles.append(model.register_forward_pre_hook(RoutingPreHook(runtime), with_kwargs=True))
    handles.append(model.register_forward_hook(RoutingPostHook(runtime), always_call=True))
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
    model._modules.pop(BANK_ATTR, None)  # the other loaded adapters; the active one's head stays, as with one
    model.config._attn_implementation = runtime.original_impl
    for name, p in model.named_parameters():
        p.requires_grad_(runtime.requires_grad.get(name, True))
    delattr(model, RUNTIME_ATTR)
    model.__class__ = runtime.original_class
    return model


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> nn.Module:
    """Attach the adapter saved in ``path`` to a fresh ``model`` and load its tensors; returns the model.

    ``adapter_name``: its name (default ``"default"``). On a model that already has an adapter, ``adapter_name`` is
    required and the adapter is added beside the others, frozen and inactive (see :mod:`adaprefix.multi`): its
    method, prefix length and head may differ, its backbone may not. ``model.set_adapter(name)`` activates it, and a
    forward or ``generate`` with ``adapter_names=[...]`` (one per example) routes each row to its adapter.

    Shapes must match exactly. A different base checkpoint of the same shape loads with a
    :class:`~adaprefix.persistence.BaseModelMismatchWarning`: the prefix was learned for other weights.
    Everything the files alone can tell is checked before attaching; a model the tensors do not fit is detached
    again before the :class:`~adaprefix.persistence.AdapterLoadError` is raised.

    A PEFT prefix-tuning folder (``adapter_config.json`` with ``peft_type: PREFIX_TUNING``) loads as a ``pt2``
    adapter, with a :class:`~adaprefix.peft_format.PeftConversionWarning` saying so (:mod:`adaprefix.peft_format`).
    """
    read_adapter_files = read_peft_adapter if is_peft_folder(path) else read_adapter
    if is_attached(model):
        if adapter_name is None:
            raise AdapterStateError(f"this model already has an adapter ({', '.join(list_adapters(model))}); pass "
                                    "adapter_name=... to load another one beside it, or adaprefix.detach(model) first")
        with model.disable_adapter():  # the backbone as it is without adapters, which is what the files describe
            config, tensors = read_adapter_files(path, model)
            spec, shape, _, causal = resolve_arch(model)
        config = _resolve_config(config, model, causal, spec.patched_attention)
        param = next(model.parameters())
        adapter = PrefixAdapter(config, shape).to(device=param.device, dtype=param.dtype)
        names = {id(p): n for n, p in model.named_parameters()}
        head_names = [names[i] for i in _head_parameters(model, config)
                      if not names[i].startswith((PARAM_PREFIX, BANK_ATTR + "."))]
        add_adapter(model, adapter_name, config, adapter, head_names, tensors, path)
        return model
    if adapter_name is not None:
        check_adapter_name(adapter_name)
    config, tensors = read_adapter_files(path, model)
    attach(model, config)
    if adapter_name is not None:
        adapter_runtime(model).adapter_name = adapter_name
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
