"""What an attached adapter is: its parameters (:class:`PrefixAdapter`) and its runtime state on the model.

:func:`~adaprefix.inject.attach` puts both on a model, :mod:`adaprefix.persistence` reads them to save, and
:mod:`adaprefix.introspect` reads what the last forward left in the runtime. Each of them imports this module and
none of them imports another for it. Code outside the injection reaches the state through :func:`adapter_runtime`,
never through the attribute it is stored under.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn as nn

from . import attention as seam
from .arch import BackboneShape
from .config import AdaptivePrefixConfig
from .errors import AdaprefixError
from .gates import LayerGate, TokenGate, padding_weights, pool_hidden
from .prefix import PrefixEncoder

ADAPTER_ATTR = "adaprefix"  # the submodule the adapter is added under
#: Start of every adapter parameter's name (``adaprefix.prefix.embedding``, ...): freezing, counting, the
#: optimiser's groups and a clean base-model save are each one filter on it.
PARAM_PREFIX = ADAPTER_ATTR + "."
RUNTIME_ATTR = "_adaprefix_runtime"  # where attach keeps the AdapterRuntime on the model


class AdapterStateError(AdaprefixError, ValueError):
    """The model has no adapter where one is needed, or already has one; the message says which and what to do."""


class PrefixAdapter(nn.Module):
    """Every trainable tensor of the method: the prefix and, depending on the method, the two gates."""

    def __init__(self, config: AdaptivePrefixConfig, shape: BackboneShape):
        super().__init__()
        self.prefix = PrefixEncoder(config, shape)
        self.token_gate = TokenGate(config, shape.num_layers, shape.hidden_size) if config.use_token_gate else None
        self.layer_gate = LayerGate(config, shape.num_layers) if config.use_layer_gate else None

    def layer_prefix(self, config: AdaptivePrefixConfig, prefix, i: int, layer: nn.Module, hidden: torch.Tensor,
                     padding_mask: torch.Tensor | None, shared: seam.ForwardState,
                     record: list | None = None, memo: str = "") -> seam.LayerPrefix | None:
        """Layer i's gated prefix for the hidden states h_{i-1} (B, T, d) entering it; None where the layer has none.

        ``prefix``: this forward's output of ``self.prefix()``; ``padding_mask``: the (B, S) keep-mask of real keys
        (or None); ``record``: a per-layer list the token gate alpha is written to (detached), or None. ``memo`` keeps
        apart what several adapters of one mixed batch cache in the forward's ``shared`` state.
        """
        if config.prefix_lengths is not None and config.prefix_lengths[i] == 0:
            return None  # PT-2*: this layer has no prefix; its attention runs as the host's
        # A model split across devices (device_map): the layer's slice of the adapter goes to the layer's device.
        device = layer_device(layer, hidden)
        keys, values = prefix[i][0].unsqueeze(0).to(device), prefix[i][1].unsqueeze(0).to(device)  # (1, kvh, l, hd)
        p = config.prefix_dropout or 0.0
        if layer.training and p > 0:
            batch = hidden.shape[0]  # one dropout mask per example, as P-tuning v2
            keys = nn.functional.dropout(keys.expand(batch, -1, -1, -1), p, training=True)
            values = nn.functional.dropout(values.expand(batch, -1, -1, -1), p, training=True)
        scale = alpha = None
        if self.token_gate is not None:
            keep = None
            if padding_mask is not None and config.gate_pooling == "mean":  # sliced and cast once per forward
                key = ("pool", memo, hidden.device, hidden.dtype, hidden.shape[1])
                keep = shared.once(key, lambda: padding_weights(padding_mask, hidden), source=padding_mask)
            pooled = pool_hidden(hidden, keep, config.gate_pooling).to(device)  # pooled where h is, then moved
            alpha = self.token_gate(i, pooled)  # (B, l) | (B, T, l)
            if record is not None:
                record[i] = alpha.detach()
            scale = alpha
        if self.layer_gate is not None:
            lam = self.layer_gate(i).to(device)
            if config.gate_mode == "separate":  # alpha weighs within the prefix's own softmax, lambda its output
                weight = None if alpha is None else exact_gate(alpha, keys.shape[2])
                return seam.LayerPrefix(keys=keys, values=values, separate_gate=lam.reshape(1),
                                        separate_weight=weight, shared=shared)
            scale = lam if scale is None else lam * scale
        if config.gate_mode == "exact":  # g weighs each pseudo token's attention weight, inside attention
            return seam.LayerPrefix(keys=keys, values=values, weight_gate=exact_gate(scale, keys.shape[2]),
                                    shared=shared)
        query_gate = None
        if scale is not None and scale.ndim == 3:
            query_gate = scale  # (B, T, l): applied inside attention
        elif scale is not None:
            factor = scale if scale.ndim == 0 else scale[:, None, :, None]  # (B, 1, l, 1)
            keys, values = keys * factor, values * factor
        return seam.LayerPrefix(keys=keys, values=values, query_gate=query_gate, shared=shared)


def exact_gate(scale: torch.Tensor, length: int) -> torch.Tensor:
    """An exact gate as the attention takes it, (B|1, T|1, l): from lambda (a scalar), lambda * alpha (B, l) or
    (B, T, l)."""
    if scale.ndim == 0:
        return scale.reshape(1, 1, 1).expand(1, 1, length)
    return scale if scale.ndim == 3 else scale.unsqueeze(1)


def layer_device(layer: nn.Module, hidden: torch.Tensor) -> torch.device:
    """The device layer i computes on. h_{i-1} can still be on the previous layer's device: under device_map,
    accelerate's hook moves the inputs only after the pre-hooks have run."""
    hook = getattr(layer, "_hf_hook", None)
    for candidate in (hook, *getattr(hook, "hooks", ())):
        device = getattr(candidate, "execution_device", None)
        if device is not None:
            return torch.device(device)
    weight = next(layer.parameters(), None)
    return hidden.device if weight is None else weight.device


class AdapterRuntime:
    """Non-parameter state of an attached adapter, shared by its hooks.

    Hooks are small objects holding this runtime and their layer's site (not closures over the model), so that
    ``copy.deepcopy(model)`` gives the copy hooks that point at the copy's own adapter, runtime and sites.
    """

    def __init__(self, model: nn.Module, adapter: PrefixAdapter, config: AdaptivePrefixConfig, shape: BackboneShape,
                 original_impl: str, sites: list[seam.LayerSite], handles: list, patched: list[nn.Module],
                 requires_grad: dict[str, bool], original_class: type):
        self.adapter = adapter
        self.model_config = model.config  # where transformers reads the attention implementation per call
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
        # Every layer's prefix (N, 2, kv_heads, l, head_dim), alive only while the base model's forward runs: a
        # later forward must neither read it nor keep its graph alive.
        self.prefix: torch.Tensor | None = None
        self.padding_mask: torch.Tensor | None = None  # (B, S) keep-mask of real keys of the last forward, if known
        self.forward_state: seam.ForwardState | None = None  # shared by the layers while the base model runs
        self.token_gates: list[torch.Tensor | None] = [None] * shape.num_layers  # last forward, detached
        self.gates_routed = False  # the last forward ran with adapter_names, which records no token gates
        self.arg_names = list(inspect.signature(model.base_model.forward).parameters)
        # Several adapters on one model (adaprefix.multi): this adapter's name, the others, and the adapter of
        # each row of the current forward (None: every row runs the active adapter, the code path of one adapter).
        self.adapter_name = "default"
        self.bank = None  # adaprefix.multi.AdapterBank once a second adapter is loaded
        self.routing = None  # adaprefix.multi.Routing while a forward with adapter_names runs


def is_attached(model: nn.Module) -> bool:
    """Whether :func:`~adaprefix.attach` has put an adapter on ``model`` (and it has not been detached)."""
    return hasattr(model, RUNTIME_ATTR)


def adapter_runtime(model: nn.Module) -> AdapterRuntime:
    """The :class:`AdapterRuntime` of an attached adapter: its config, backbone shape, last gates and hook state.

    Raises :class:`AdapterStateError` for a model without an adapter.
    """
    runtime = getattr(model, RUNTIME_ATTR, None)
    if runtime is None:
        raise AdapterStateError(
            f"this model ({type(model).__name__}) has no adaprefix adapter attached; call adaprefix.attach(model) "
            "or adaprefix.load_adapter(model, path) first"
        )
    return runtime


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters a saved adapter consists of (prefix, gates, task head), by name, as fixed at attach."""
    params = dict(model.named_parameters())
    return {name: params[name] for name in adapter_runtime(model).saved_names}
