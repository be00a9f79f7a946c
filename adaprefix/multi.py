"""Several named adapters on one backbone, and batches whose rows each name their adapter.

The first adapter of a model (``attach`` or ``load_adapter``) is named ``"default"`` unless named otherwise.
``load_adapter(model, path, adapter_name=...)`` adds more, for inference (as PEFT's ``is_trainable=False``): same
backbone, any method, prefix length and head. One adapter is *active*: it sits where a single adapter always sits
(``model.adaprefix`` and the model's own head modules), so everything written for one adapter (saving, gates,
``disable_adapter``) works on it unchanged; the others wait in ``model.adaprefix_bank`` until ``set_adapter``
swaps them in.

A forward (or ``generate``) with ``adapter_names=[...]``, one name per example, sends each row through its own
adapter. Where that happens:

- prefix and gates: in each layer's pre-hook (:func:`routed_layer_prefix`): every adapter's gates read its own
  rows of h_{i-1}; their prefixes are stacked into one (B, kv_heads, L, head_dim) tensor, L the longest of them.
  Usually the adapters' prefixes and gate weights are stacked once per forward and each layer gathers every row's
  own in a few whole-batch ops (:func:`_stacked_layer_prefix`); per-layer lengths (PT-2*) and models split across
  devices take a loop over the adapters instead, which gives the same rows.
  A shorter prefix is padded with zero columns that a per-row keep-mask (``LayerPrefix.keep``) hides from
  attention, so they get exactly zero weight (the mask holds the dtype's minimum or -inf there; its exp is 0).
- head: while the forward runs, each head module is replaced by a :class:`RoutedHead` that runs each adapter's
  copy of it on that adapter's rows. Heads of different widths (numbers of labels) are padded to the widest with
  ``-inf``: ``logits[i, ..., :C_i]`` is row i's adapter's output and the columns after it are ``-inf``, so
  ``softmax`` gives them 0 and ``argmax`` never picks them (:func:`adapter_width` gives C_i).

Refused (:class:`AdapterRoutingError`): a number of names other than the examples' (the prompts' for ``generate``),
``labels`` with adapters of different widths (the model's loss reads one, the active adapter's), and
``adapter_names`` inside ``disable_adapter()``, where no prefix runs.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn

from . import attention as seam
from .adapter import PARAM_PREFIX, AdapterRuntime, AdapterStateError, PrefixAdapter, adapter_runtime, layer_device
from .config import AdaptivePrefixConfig
from .errors import AdaprefixError
from .gates import padding_weights, pool_hidden
from .persistence import AdapterLoadError, check_adapter_tensors

DEFAULT_ADAPTER = "default"  # PEFT's name for an adapter nobody named
BANK_ATTR = "adaprefix_bank"  # nn.ModuleDict of the inactive adapters' modules (so .to() and .eval() reach them)


class AdapterRoutingError(AdaprefixError, ValueError):
    """``adapter_names`` does not fit the batch, names an adapter the model does not have, or is given where rows
    cannot be routed (inside ``disable_adapter()``); or what was asked needs a forward without it."""


class _Slot(nn.Module):
    """An inactive adapter's modules: its prefix and gates, and its copy of each head module."""

    def __init__(self, adapter: PrefixAdapter, heads: dict[str, nn.Module]):
        super().__init__()
        self.adapter = adapter
        self.heads = nn.ModuleDict(heads)


@dataclass
class AdapterEntry:
    """One named adapter: its resolved config, its modules, and what a saved copy of it holds."""

    name: str
    config: AdaptivePrefixConfig
    adapter: PrefixAdapter
    heads: dict[str, nn.Module]  # top-level head module name -> this adapter's module
    saved_names: list[str]  # parameter names (as when active) that save_adapter writes
    labels: tuple[dict, dict] | None = None  # the model config's id2label, label2id when it was last active


@dataclass
class AdapterBank:
    """Every adapter of a model by name, in load order; ``head_paths`` are the model's head modules they each own."""

    entries: dict[str, AdapterEntry]
    head_paths: list[str]


def _head_paths(saved_names: Sequence[str]) -> list[str]:
    return sorted({name.split(".")[0] for name in saved_names if not name.startswith(PARAM_PREFIX)})


def adapter_bank(model: nn.Module) -> AdapterBank:
    """The model's adapters by name; made on first use from the one attached adapter."""
    runtime = adapter_runtime(model)
    if runtime.bank is None:
        paths = _head_paths(runtime.saved_names)
        active = AdapterEntry(runtime.adapter_name, runtime.config, runtime.adapter,
                              {path: model.get_submodule(path) for path in paths}, list(runtime.saved_names))
        runtime.bank = AdapterBank({active.name: active}, paths)
    return runtime.bank


def list_adapters(model: nn.Module) -> list[str]:
    """The names of the model's adapters, in the order they were loaded."""
    runtime = adapter_runtime(model)
    return list(runtime.bank.entries) if runtime.bank is not None else [runtime.adapter_name]


def adapter_configs(model: nn.Module) -> dict[str, AdaptivePrefixConfig]:
    """Every adapter's resolved config by name (PEFT's ``peft_config``)."""
    return {name: entry.config for name, entry in adapter_bank(model).entries.items()}


def _unknown(model: nn.Module, name) -> AdapterStateError:
    return AdapterStateError(f"no adapter named {name!r} on this model; loaded: {', '.join(list_adapters(model))}")


def _entry(model: nn.Module, name: str) -> AdapterEntry:
    entry = adapter_bank(model).entries.get(name) if isinstance(name, str) else None
    if entry is None:
        raise _unknown(model, name)
    return entry


def _bank_modules(model: nn.Module) -> nn.ModuleDict:
    if BANK_ATTR not in model._modules:
        model.add_module(BANK_ATTR, nn.ModuleDict())
    return model._modules[BANK_ATTR]


def check_adapter_name(name) -> None:
    """Refuse a name that cannot key a module dict (empty, with '.', or starting with '_')."""
    if not isinstance(name, str) or not name or name.startswith("_") or "." in name:
        raise AdapterStateError(f"adapter_name: expected a non-empty name without '.' that does not start with "
                                f"'_', got {name!r}")


def add_adapter(model: nn.Module, name: str, config: AdaptivePrefixConfig, adapter: PrefixAdapter,
                head_names: Sequence[str], tensors: dict[str, torch.Tensor], path) -> None:
    """Add a loaded adapter under ``name`` (inactive, frozen). Called by ``load_adapter``, which has read and checked
    the files against the backbone, resolved ``config`` and built ``adapter`` (the prefix and gates) for it.

    ``head_names``: the model's head parameters this config trains (names as in the model). The file's head tensors
    may differ from the model's in their first dimension only (another number of labels).
    """
    check_adapter_name(name)
    bank = adapter_bank(model)
    if name in bank.entries:
        raise AdapterStateError(f"this model already has an adapter named {name!r}; delete_adapter({name!r}) first "
                                "or choose another adapter_name")
    paths = _head_paths(head_names)
    if paths != bank.head_paths:
        raise AdapterLoadError(f"{path}: its task head lives in {paths or 'no module'}, the model's adapters' in "
                               f"{bank.head_paths or 'no module'}; adapters on one model need heads in the same "
                               "modules (same model class and train_head setting)")
    params = dict(model.named_parameters())
    expected = {PARAM_PREFIX + n: p for n, p in adapter.named_parameters()}
    for n in head_names:
        have, got = params[n], tensors.get(n)
        # Another number of labels is fine (its own rows get its own head); any other difference is not.
        fits = got is not None and got.ndim == have.ndim and got.shape[1:] == have.shape[1:]
        expected[n] = got if fits else have
    check_adapter_tensors(path, expected, tensors)

    reference = next(model.parameters())
    with torch.no_grad():
        for n, p in adapter.named_parameters():
            p.copy_(tensors[PARAM_PREFIX + n])
    adapter.requires_grad_(False).train(model.training)
    heads = {}
    for head_path in paths:
        module = model.get_submodule(head_path)
        own = {n for n in head_names if n.split(".")[0] == head_path}
        # Parameters of the module that are not head parameters (a tied decoder, say) stay shared, not copied.
        shared = {id(p): p for n, p in module.named_parameters(prefix=head_path) if n not in own}
        clone = copy.deepcopy(module, memo=dict(shared))
        for n in own:
            owner, _, leaf = n[len(head_path) + 1:].rpartition(".")
            target = clone.get_submodule(owner) if owner else clone
            value = tensors[n].to(device=reference.device, dtype=params[n].dtype)
            setattr(target, leaf, nn.Parameter(value, requires_grad=False))
        heads[head_path] = clone.requires_grad_(False).train(model.training)
    saved = list(expected)
    bank.entries[name] = AdapterEntry(name, config, adapter, heads, saved)
    _bank_modules(model)[name] = _Slot(adapter, heads)


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` the active adapter: the one a forward without ``adapter_names`` runs, and that is saved.

    An adapter with another number of labels also sets the model's (``config.num_labels``, with generic label names,
    and the model's ``num_labels``), which its loss and ``save_pretrained``'s config read; switching back restores
    the label names the model had while the earlier adapter was active.
    """
    runtime = adapter_runtime(model)
    entry = _entry(model, name)
    if name == runtime.adapter_name:
        return
    current = adapter_bank(model).entries[runtime.adapter_name]
    _switch_labels(model, current, entry)
    slots = _bank_modules(model)
    del slots[name]
    model.add_module("adaprefix", entry.adapter)
    for head_path, module in entry.heads.items():
        model.add_module(head_path, module)
    slots[current.name] = _Slot(current.adapter, current.heads)
    runtime.adapter, runtime.config, runtime.saved_names = entry.adapter, entry.config, list(entry.saved_names)
    runtime.adapter_name = name
    runtime.token_gates = [None] * runtime.shape.num_layers  # the last forward's gates were another adapter's


def _switch_labels(model: nn.Module, leaving: AdapterEntry, entering: AdapterEntry) -> None:
    config = model.config
    leaving.labels = (copy.copy(config.id2label), copy.copy(config.label2id))
    width = adapter_width(model, entering.name)
    if entering.labels is not None:
        config.id2label, config.label2id = (copy.copy(m) for m in entering.labels)
    # Only a change of width is a change of labels: a multiple-choice head is 1 wide whatever num_labels says.
    elif width is not None and width != adapter_width(model, leaving.name):
        config.num_labels = width  # transformers names them LABEL_0 ... for a new count
    if isinstance(getattr(model, "num_labels", None), int) and isinstance(config.num_labels, int):
        model.num_labels = config.num_labels  # what the classification heads' losses read


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; deleting the active one activates the first remaining. The last one stays:
    ``adaprefix.detach(model)`` removes it."""
    runtime = adapter_runtime(model)
    _entry(model, name)
    bank = adapter_bank(model)
    if len(bank.entries) == 1:
        raise AdapterStateError(f"{name!r} is the model's only adapter; adaprefix.detach(model) removes it")
    if name == runtime.adapter_name:
        set_adapter(model, next(n for n in bank.entries if n != name))
    del _bank_modules(model)[name]
    del bank.entries[name]


def adapter_width(model: nn.Module, name: str) -> int | None:
    """The size of the last dimension of adapter ``name``'s head output (its number of labels); None for an adapter
    without a head of its own.

    Read from the first dimension of the last parameter of the head's output module. A head may span several of the
    model's modules (DistilBERT's ``pre_classifier`` and ``classifier``, DeBERTa's ``pooler`` and ``classifier``);
    the output module is the one the model registers last, as models register their head in the order it runs.
    """
    entry = _entry(model, name)
    order = list(model._modules)
    for path in sorted(entry.heads, key=order.index, reverse=True):
        params = list(entry.heads[path].parameters())
        if params:
            return int(params[-1].shape[0])
    return None


# ---------------------------------------------------------------------------------------------------------------
# Routing: one forward, each row through its own adapter.


@dataclass
class Routing:
    """The adapter of each example of a forward, and what the forward computes once per adapter."""

    names: list[str]  # one per example
    groups: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> example indices
    prefixes: dict[str, object] = field(default_factory=dict)  # name -> its prefix() output for this forward
    masks: dict[str, torch.Tensor | None] = field(default_factory=dict)  # name -> its rows of the padding mask
    padding_mask: torch.Tensor | None = None  # the whole batch's (B, S) keep-mask of real keys
    stack: "_Stack | None | bool" = False  # every adapter stacked for this forward; None: they cannot be; False: not yet
    owner: str = "forward"  # who ends it: the forward's post-hook, or the routed() block around generate()
    _rows: dict[tuple, Any] = field(default_factory=dict)  # rows() and inverse() per (batch, device)

    def rows(self, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Row indices per adapter for a tensor of ``batch`` rows: batch may be a multiple k of the examples
        (multiple choice flattens each example's choices; generate() repeats each prompt per beam or sequence),
        each example's k rows being consecutive."""
        key = (batch, device)
        if key not in self._rows:
            k, rest = divmod(batch, len(self.names))
            if rest or k == 0:
                raise AdapterRoutingError(f"adapter_names has {len(self.names)} names but the batch has {batch} rows; "
                                          "give one name per example")
            self._rows[key] = {name: (idx.to(device)[:, None] * k + torch.arange(k, device=device)).flatten()
                               for name, idx in self.groups.items()}
        return self._rows[key]

    def inverse(self, batch: int, device: torch.device) -> torch.Tensor:
        """Indices that put a tensor whose rows are concatenated group by group (in ``rows()`` order) back in batch
        order."""
        key = ("inverse", batch, device)
        if key not in self._rows:
            self._rows[key] = torch.argsort(torch.cat(list(self.rows(batch, device).values())))
        return self._rows[key]


def make_routing(model: nn.Module, names) -> Routing:
    """Check ``adapter_names`` against the model's adapters and group the examples by adapter."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise AdapterRoutingError(f"adapter_names: expected a non-empty list of adapter names, one per example, got "
                                  f"{names!r}")
    known = list_adapters(model)
    unknown = sorted({repr(n) for n in names if n not in known})
    if unknown:
        raise AdapterRoutingError(f"adapter_names: no adapter named {', '.join(unknown)} on this model; loaded: "
                                  f"{', '.join(known)}")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    return Routing(list(names), {name: torch.tensor(idx) for name, idx in groups.items()})


def begin_routed_forward(runtime: AdapterRuntime, padding_mask: torch.Tensor | None) -> None:
    """Per forward, once per adapter: its prefix tensors, and its rows of the padding mask the gate pools over."""
    routing = runtime.routing
    entries = runtime.bank.entries if runtime.bank is not None else {runtime.adapter_name: None}
    routing.prefixes, routing.masks, routing.padding_mask, routing.stack = {}, {}, padding_mask, False
    for name in routing.groups:
        adapter = runtime.adapter if entries[name] is None else entries[name].adapter
        routing.prefixes[name] = adapter.prefix()
    if padding_mask is not None and len(routing.groups) > 1:
        for name, rows in routing.rows(padding_mask.shape[0], padding_mask.device).items():
            routing.masks[name] = padding_mask[rows]
    else:
        routing.masks = {name: padding_mask for name in routing.groups}


def position_shifts(runtime: AdapterRuntime) -> dict[str, int]:
    """The positions each adapter shifts real tokens by (P-tuning v2 parity, ``shift_positions``), by name."""
    entries = runtime.bank.entries if runtime.bank is not None else {}
    shifts = {}
    for name in runtime.routing.groups:
        config = entries[name].config if name in entries else runtime.config
        shifts[name] = config.prefix_length if config.shift_positions else 0
    return shifts


def _entry_of(runtime: AdapterRuntime, name: str) -> tuple[AdaptivePrefixConfig, PrefixAdapter]:
    if runtime.bank is None:
        return runtime.config, runtime.adapter
    entry = runtime.bank.entries[name]
    return entry.config, entry.adapter


def routed_layer_prefix(runtime: AdapterRuntime, i: int, layer: nn.Module, hidden: torch.Tensor,
                        shared: seam.ForwardState) -> seam.LayerPrefix | None:
    """Layer i's prefix for a batch whose rows name their adapters: each adapter's gated prefix on its own rows,
    stacked to (B, kv_heads, L, head_dim), shorter ones padded with columns ``keep`` hides (zero attention weight)."""
    routing = runtime.routing
    if not routing.prefixes:  # a layer called outside the base model's forward
        begin_routed_forward(runtime, runtime.padding_mask)
    groups = routing.rows(hidden.shape[0], hidden.device)
    if len(groups) == 1:  # the whole batch on one adapter: its own code path, nothing to pad
        name = next(iter(groups))
        config, adapter = _entry_of(runtime, name)
        return adapter.layer_prefix(config, routing.prefixes[name], i, layer, hidden, routing.masks[name], shared,
                                    memo=name)
    if routing.stack is False:
        routing.stack = _build_stack(runtime, layer, hidden)
    # Checked per layer: under a device map, a later layer may run on another device than the stack is on.
    if routing.stack is not None and hidden.device == routing.stack.kv.device == layer_device(layer, hidden):
        return _stacked_layer_prefix(routing.stack, i, hidden, routing.padding_mask, shared)
    parts = []
    for name, rows in groups.items():
        config, adapter = _entry_of(runtime, name)
        parts.append((rows, adapter.layer_prefix(config, routing.prefixes[name], i, layer, hidden[rows],
                                                 routing.masks[name], shared, memo=name)))
    real = [part for _, part in parts if part is not None]
    if not real:
        return None
    # Each adapter's prefix, padded to the longest and expanded to its rows, concatenated in group order and put
    # back in batch order by one gather: a few whole-batch ops per layer rather than a scatter per adapter.
    batch, q_len = hidden.shape[:2]
    ref = real[0].keys
    length = max(part.keys.shape[2] for part in real)
    per_query = any(part.query_gate is not None for part in real)
    exact = any(part.weight_gate is not None for part in real)
    separate = any(part.separate_gate is not None for part in real)
    keys, values, gates, weight_gates, lengths, exact_rows = [], [], [], [], [], []
    lambdas, alphas, separate_rows = [], [], []
    for rows, part in parts:
        n = len(rows)
        l = part.keys.shape[2] if part is not None else 0  # None: PT-2*'s layer without a prefix for this adapter
        pk = part.keys if part is not None else ref.new_zeros(1, ref.shape[1], 0, ref.shape[3])
        pv = part.values if part is not None else pk
        keys.append(nn.functional.pad(pk, (0, 0, 0, length - l)).expand(n, -1, -1, -1))  # (n, kv_heads, L, hd)
        values.append(nn.functional.pad(pv, (0, 0, 0, length - l)).expand(n, -1, -1, -1))
        if per_query:  # rows of an adapter without a per-query gate get gate 1: their keys are already scaled
            gate = part.query_gate if part is not None and part.query_gate is not None else ref.new_ones(n, q_len, l)
            gates.append(nn.functional.pad(gate.to(ref.dtype), (0, length - l), value=1.0))  # (n, T, L)
        if exact:  # rows of an adapter without exact gates get weight 1: what they have is in their keys or gate
            gate = part.weight_gate if part is not None and part.weight_gate is not None else ref.new_ones(n, 1, l)
            gate = gate.to(ref.dtype).expand(n, q_len, -1)
            weight_gates.append(nn.functional.pad(gate, (0, length - l), value=1.0))  # (n, T, L)
            exact_rows += [part is not None and part.weight_gate is not None] * n
        if separate:  # rows of other adapters get lambda 0 (their prefix is in the joint softmax) and alpha 1
            apart = part is not None and part.separate_gate is not None
            lambdas.append(part.separate_gate.to(ref.dtype).expand(n) if apart else ref.new_zeros(n))
            alpha = part.separate_weight if apart and part.separate_weight is not None else ref.new_ones(n, 1, l)
            alphas.append(nn.functional.pad(alpha.to(ref.dtype).expand(n, q_len, -1), (0, length - l), value=1.0))
            separate_rows += [apart] * n
        lengths += [l] * n
    inverse = routing.inverse(batch, ref.device)
    keep = None
    if min(lengths) < length:  # (B, L): real prefix columns, in batch order
        keep = torch.arange(length, device=ref.device) < torch.tensor(lengths, device=ref.device)[inverse, None]
    return seam.LayerPrefix(keys=torch.cat(keys)[inverse], values=torch.cat(values)[inverse],
                            query_gate=torch.cat(gates)[inverse] if per_query else None,
                            weight_gate=torch.cat(weight_gates)[inverse] if exact else None, shared=shared, keep=keep,
                            exact_rows=torch.tensor(exact_rows, device=ref.device)[inverse] if exact else None,
                            separate_gate=torch.cat(lambdas)[inverse] if separate else None,
                            separate_weight=torch.cat(alphas)[inverse] if separate else None,
                            separate_rows=(torch.tensor(separate_rows, device=ref.device)[inverse]
                                           if separate and not all(separate_rows) else None))


@dataclass
class _Stack:
    """Every adapter of a mixed batch as a few stacked tensors, built once per forward, so that each layer computes
    all rows' gated prefixes in a handful of whole-batch ops instead of a Python call per adapter (the per-adapter
    loop cost a mixed batch of 8 adapters about 8% of a MiniLM forward)."""

    index: torch.Tensor  # (B,) each row's adapter, an index into the stacks
    kv: torch.Tensor  # (A, N, 2, kv_heads, L, head_dim): prefixes padded to the longest, L
    keep: torch.Tensor | None  # (B, L) real prefix columns; None when every adapter has length L
    weight: torch.Tensor | None  # (A, N, d, L) token-gate weights, zero for adapters without a token gate
    bias: torch.Tensor | None  # (A, N, L)
    gated: torch.Tensor | None  # (B, 1) whether the row's adapter has a token gate
    poolings: tuple[str, ...]  # the token-gated adapters' poolings: mean and/or cls, or token alone
    pooling: torch.Tensor | None  # (B,) each row's pooling, an index into ``poolings``
    scale: torch.Tensor | None  # (B, N) the row's adapter's lambda per layer, 1 for adapters without a layer gate


def _build_stack(runtime: AdapterRuntime, layer: nn.Module, hidden: torch.Tensor) -> _Stack | None:
    """The stacks of this forward's adapters; None where one of them needs its own code path: per-layer lengths
    (PT-2*), exact or separate gates, per-query gates beside pooled ones, prefix dropout while training, or prefixes
    on several devices (a layer on another device than the stack takes the loop on its own: routed_layer_prefix checks
    every layer)."""
    routing = runtime.routing
    entries = [(name, *_entry_of(runtime, name)) for name in routing.groups]
    gated = [config.use_token_gate for _, config, _ in entries]
    poolings = tuple(sorted({config.gate_pooling for _, config, _ in entries if config.use_token_gate}))
    if (any(config.prefix_lengths is not None or config.gate_mode != "scale" for _, config, _ in entries)
            or ("token" in poolings and len(poolings) > 1)
            or (layer.training and any(config.prefix_dropout for _, config, _ in entries))):
        return None
    kvs = [routing.prefixes[name] for name, _, _ in entries]  # (N, 2, kv_heads, l, head_dim) each
    if len({kv.device for kv in kvs}) > 1:
        return None
    length = max(kv.shape[3] for kv in kvs)
    kv = torch.stack([nn.functional.pad(kv, (0, 0, 0, length - kv.shape[3])) for kv in kvs])
    index = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
    for a, rows in enumerate(routing.rows(hidden.shape[0], hidden.device).values()):
        index[rows] = a
    lengths = torch.tensor([k.shape[3] for k in kvs], device=hidden.device)
    keep = None if bool((lengths == length).all()) else torch.arange(length, device=hidden.device) < lengths[index, None]
    weight = bias = flags = pooling = None
    if any(gated):
        which = torch.tensor([poolings.index(c.gate_pooling) if c.use_token_gate else 0 for _, c, _ in entries],
                             device=hidden.device)
        pooling = which[index]
        layers, d = kv.shape[1], entries[gated.index(True)][2].token_gate.weight.shape[1]
        weight = torch.stack([nn.functional.pad(adapter.token_gate.weight, (0, length - kvs[a].shape[3]))
                              if adapter.token_gate is not None else kv.new_zeros(layers, d, length)
                              for a, (_, _, adapter) in enumerate(entries)])
        bias = torch.stack([nn.functional.pad(adapter.token_gate.bias, (0, length - kvs[a].shape[3]))
                            if adapter.token_gate is not None else kv.new_zeros(layers, length)
                            for a, (_, _, adapter) in enumerate(entries)])
        flags = torch.tensor(gated, device=hidden.device)[index, None]
    scale = None
    if any(adapter.layer_gate is not None for _, _, adapter in entries):
        scale = torch.stack([adapter.layer_gate.scale if adapter.layer_gate is not None
                             else kv.new_ones(kv.shape[1]) for _, _, adapter in entries])[index]
    return _Stack(index, kv, keep, weight, bias, flags, poolings, pooling, scale)


def _stacked_layer_prefix(stack: _Stack, i: int, hidden: torch.Tensor, padding_mask: torch.Tensor | None,
                          shared: seam.ForwardState) -> seam.LayerPrefix:
    """Layer i's prefix for every row at once, from the stacks: what each adapter's ``layer_prefix`` gives its rows
    (alpha = sigmoid(pool(h) W_i + b_i), times lambda_i; an adapter without a gate gets 1)."""
    kv = stack.kv[:, i][stack.index]  # (B, 2, kv_heads, L, head_dim)
    keys, values = kv[:, 0], kv[:, 1]
    lam = stack.scale[:, i, None] if stack.scale is not None else None  # (B, 1)
    if stack.weight is not None and stack.poolings == ("token",):  # per-query gates, applied inside attention
        weight, bias = stack.weight[:, i][stack.index], stack.bias[:, i][stack.index]  # (B, d, L), (B, L)
        alpha = torch.sigmoid(torch.bmm(hidden, weight) + bias[:, None, :])  # (B, T, L)
        gated = stack.gated  # (B, 1)
        gate = alpha if lam is None else lam[:, :, None] * alpha
        gate = torch.where(gated[:, :, None], gate, torch.ones_like(gate)).to(keys.dtype)
        if lam is not None:  # an adapter without a token gate scales its keys and values by lambda; its gate is 1
            factor = torch.where(gated, torch.ones_like(lam), lam)[:, :, None, None]  # (B, 1, 1, 1)
            keys, values = keys * factor, values * factor
        return seam.LayerPrefix(keys=keys, values=values, query_gate=gate, shared=shared, keep=stack.keep)
    scale = None
    if stack.weight is not None:
        keep = None
        if padding_mask is not None and "mean" in stack.poolings:
            key = ("pool", "stacked", hidden.device, hidden.dtype, hidden.shape[1])
            keep = shared.once(key, lambda: padding_weights(padding_mask, hidden), source=padding_mask)
        pooled = pool_hidden(hidden, keep, stack.poolings[0])  # (B, d)
        if len(stack.poolings) > 1:  # each row pooled as its adapter pools
            pooled = torch.stack([pooled] + [pool_hidden(hidden, keep, p) for p in stack.poolings[1:]])
            pooled = pooled[stack.pooling, torch.arange(hidden.shape[0], device=hidden.device)]
        logits = torch.bmm(pooled.unsqueeze(1), stack.weight[:, i][stack.index]).squeeze(1)  # (B, L)
        alpha = torch.sigmoid(logits + stack.bias[:, i][stack.index])
        scale = torch.where(stack.gated, alpha, torch.ones_like(alpha))
    if lam is not None:
        scale = lam if scale is None else lam * scale
    if scale is not None:
        factor = scale[:, None, :, None]  # (B, 1, L or 1, 1)
        keys, values = keys * factor, values * factor
    return seam.LayerPrefix(keys=keys, values=values, query_gate=None, shared=shared, keep=stack.keep)


class RoutedHead(nn.Module):
    """Stands in for one head module during a routed forward: each adapter's copy runs on that adapter's rows.

    Outputs of different widths are padded to the widest with -inf (see the module docstring).
    """

    def __init__(self, runtime: AdapterRuntime, path: str):
        super().__init__()
        self._runtime, self._path = runtime, path

    def forward(self, x: torch.Tensor, *args, **kwargs):
        runtime = self._runtime
        groups = runtime.routing.rows(x.shape[0], x.device)
        heads = {name: runtime.bank.entries[name].heads[self._path] for name in groups}
        if len(groups) == 1:
            return next(iter(heads.values()))(x, *args, **kwargs)
        outs = {name: heads[name](x[rows], *args, **kwargs) for name, rows in groups.items()}
        ref = next(iter(outs.values()))
        width = max(out.shape[-1] for out in outs.values())
        result = ref.new_full((x.shape[0], *ref.shape[1:-1], width), float("-inf"))
        for name, rows in groups.items():
            result[rows, ..., :outs[name].shape[-1]] = outs[name]
        return result


def _refuse_when_disabled(runtime: AdapterRuntime) -> None:
    # No prefix runs inside disable_adapter(), so routed rows would get their adapter's head on the bare backbone:
    # neither the base model nor the adapter.
    if not runtime.enabled:
        raise AdapterRoutingError("adapter_names inside disable_adapter(): the adapters' prefixes are off there, so "
                                  "no row would run its adapter; drop adapter_names to run the base model, or run "
                                  "the routed forward outside the disable_adapter() block")


class RoutingPreHook:
    """Before the model's forward: takes ``adapter_names`` out of its arguments and routes the forward by it."""

    def __init__(self, runtime: AdapterRuntime):
        self.runtime = runtime

    def __call__(self, module, args, kwargs):
        if "adapter_names" not in kwargs:
            return None
        names = kwargs.pop("adapter_names")
        if names is None:
            return args, kwargs
        _refuse_when_disabled(self.runtime)
        routing = make_routing(module, names)
        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs.get("inputs_embeds")
        if isinstance(inputs, torch.Tensor) and inputs.shape[0] != len(routing.names):
            raise AdapterRoutingError(f"adapter_names has {len(routing.names)} names but the batch has "
                                      f"{inputs.shape[0]} examples; give one name per example")
        if kwargs.get("labels") is not None:
            # The model's loss reads one number of labels: the active adapter's, also for rows all on another one.
            active = self.runtime.adapter_name
            widths = {n: adapter_width(module, n) for n in [active, *routing.groups]}
            if len(set(widths.values())) > 1:
                listed = ", ".join(f"{n}: {w}" for n, w in widths.items())
                raise AdapterRoutingError(f"labels with adapters whose heads have different widths ({listed}; the "
                                          f"active adapter {active!r} sets the number of labels the model's loss "
                                          "reads); compute a loss per adapter, or set_adapter() to the rows' "
                                          "adapter first")
        _start(module, self.runtime, routing)
        return args, kwargs


class RoutingPostHook:
    """After the model's forward, also when it raised: the routing ends and the active heads are back."""

    def __init__(self, runtime: AdapterRuntime):
        self.runtime = runtime

    def __call__(self, module, args, output):
        if self.runtime.routing is not None and self.runtime.routing.owner == "forward":
            _end(module, self.runtime)


def _start(model: nn.Module, runtime: AdapterRuntime, routing: Routing, owner: str = "forward") -> None:
    if runtime.routing is not None:  # generate() set it: the forwards inside it keep that routing
        return
    routing.owner = owner
    runtime.routing = routing
    if runtime.bank is not None:
        for path in runtime.bank.head_paths:
            model._modules[path] = RoutedHead(runtime, path)


def _end(model: nn.Module, runtime: AdapterRuntime) -> None:
    runtime.routing = None
    if runtime.bank is not None:
        for path, module in runtime.bank.entries[runtime.adapter_name].heads.items():
            model._modules[path] = module


@contextlib.contextmanager
def routed(model: nn.Module, adapter_names, prompts: int | None = None) -> Iterator[None]:
    """Route every forward inside the block by ``adapter_names`` (what ``generate(adapter_names=...)`` uses).

    ``prompts``: the number of prompts, which must equal the number of names. Checked here because the forwards
    inside only see rows, and generate() repeats each prompt per beam or returned sequence: a batch of 4 rows fits
    2 names (2 beams each) as well as 4.
    """
    runtime = adapter_runtime(model)
    if adapter_names is None or runtime.routing is not None:
        yield
        return
    _refuse_when_disabled(runtime)
    routing = make_routing(model, adapter_names)
    if prompts is not None and prompts != len(routing.names):
        raise AdapterRoutingError(f"adapter_names has {len(routing.names)} names but there are {prompts} prompts; "
                                  "give one name per prompt (beams and returned sequences follow their prompt's)")
    _start(model, runtime, routing, owner="context")
    try:
        yield
    finally:
        _end(model, runtime)
