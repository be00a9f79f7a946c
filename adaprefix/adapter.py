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
from .gates import LayerGate, TokenGate
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
        self.arg_names = list(inspect.signature(model.base_model.forward).parameters)


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
