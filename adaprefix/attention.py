"""The one seam: an attention function that prepends the (gated) prefix to already-projected keys and values.

It is registered in transformers' AttentionInterface under ``adaprefix_<impl>`` with a matching mask function, so
the host model keeps its own projections, rotary embeddings, cache and mask logic. Per layer, the state it needs
(the prefix tensors for this forward) hangs on the attention module as its :func:`layer_site`.

Decoders gate the prefix per query position (gate shape (B, T, l)), which a shared key tensor cannot carry, and exact
gates (``gate_mode="exact"``) weigh a pseudo token's attention weight, which no scaling of its key and value gives.
Two implementations compute that attention, with the same result:

- :func:`fused_per_query_gated_attention`, the fast path: the real keys go through a fused kernel that also returns
  its log-sum-exp (on CPU, ``aten._scaled_dot_product_flash_attention_for_cpu``), the l prefix columns are computed
  apart, and the two are merged in log space. Grouped-query heads read their key/value head directly (no copy of the
  cache), and nothing is concatenated onto the cache.
- :func:`per_query_gated_attention`, the eager reference: one (B, H, T, l + S) score matrix. It runs whenever the
  fast path cannot: attention weights requested (``output_attentions``), attention dropout while training (the fused
  CPU kernel has no dropout), a device other than CPU, or a non-floating dtype.

Separate gates (``gate_mode="separate"``) give the prefix a softmax of its own and add its output times lambda, as
LLaMA-Adapter does: :func:`separate_attention` runs the host's attention over the real keys untouched and adds
:func:`separate_branch`; the eager reference computes the same from its score matrix (:func:`separate_softmax`).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

IMPL_PREFIX = "adaprefix_"
SITE_ATTR = "_adaprefix_site"  # where attach hangs a layer's LayerSite on its attention module


class ForwardState:
    """What every layer of one forward shares: whether attention weights were requested, and tensors made once.

    The host model passes the same mask tensor to every layer: its additive form for the fused kernel, like the
    padding weights the gate pools with, is made on the first layer that needs it and reused by the others.
    """

    def __init__(self, want_weights: bool = False):
        self.want_weights = want_weights
        self._memo: dict[tuple, tuple] = {}

    def once(self, key: tuple, make: Callable[[], torch.Tensor], source: torch.Tensor | None = None) -> torch.Tensor:
        """``make()`` the first time ``key`` is asked for in this forward, the same tensor afterwards.

        ``source``, when given, is the tensor the result derives from: it is kept alive with the result, and a hit
        must be that very tensor, so a key built from ``id(source)`` cannot match a later tensor at a reused address.
        """
        hit = self._memo.get(key)
        if hit is None or hit[0] is not source:
            hit = (source, make())
            self._memo[key] = hit
        return hit[1]

    def additive_mask(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = ("additive", id(mask), _version(mask), dtype)
        return self.once(key, lambda: additive_mask(mask, dtype), source=mask)

    def rows_seeing_keys(self, mask: torch.Tensor) -> torch.Tensor:
        """:func:`rows_seeing_keys` of the mask every layer shares, computed on the first layer."""
        return self.once(("seeing", id(mask), _version(mask)), lambda: rows_seeing_keys(mask), source=mask)


def _version(mask: torch.Tensor) -> int | None:
    return None if mask.is_inference() else mask._version  # inference tensors keep no version counter


@dataclass
class LayerPrefix:
    """What one layer's attention prepends during the current forward."""

    keys: torch.Tensor  # (B or 1, kv_heads, l, head_dim), already scaled when the gate is per example
    values: torch.Tensor  # (B or 1, kv_heads, l, head_dim)
    query_gate: torch.Tensor | None = None  # (B, T, l) when each query position has its own gate
    # (B|1, T|1, l) exact gates g: pseudo token j's unnormalised attention weight is g_j * exp(s_j), its value is not
    # scaled. Kept apart from query_gate (whose a_j scales logit and value) so a mixed batch can carry both kinds.
    weight_gate: torch.Tensor | None = None
    shared: ForwardState = field(default_factory=ForwardState)  # per forward, shared by the layers
    # (B, l) bool, True for real prefix columns: a batch mixing adapters of different prefix lengths pads the shorter
    # ones, and padded columns must get exactly zero weight. None: every column is real.
    keep: torch.Tensor | None = None
    # (B,) bool, True for the rows whose adapter has exact gates, in a batch mixing them with others (whose rows
    # carry weight_gate 1). None: every row's, when weight_gate is set.
    exact_rows: torch.Tensor | None = None
    # gate_mode "separate": (B|1,) lambda. The prefix gets a softmax of its own, and its output times lambda is added
    # to the real keys' attention, which is theirs alone (the frozen model's, at lambda = 0 exactly).
    separate_gate: torch.Tensor | None = None
    # (B|1, T|1, l) alpha: pseudo token j's unnormalised weight in the prefix's own softmax is alpha_j exp(s_j).
    # None: 1 for every token.
    separate_weight: torch.Tensor | None = None
    # (B,) bool, True for the rows whose adapter attends to its prefix apart, in a batch mixing them with others
    # (whose separate_gate is 0). None: every row's, when separate_gate is set.
    separate_rows: torch.Tensor | None = None


class LayerSite:
    """Per-layer slot read by the attention function.

    It holds the prefix only while its layer runs: set by the layer's pre-hook, cleared by its post-hook, and put
    back for the duration of a gradient-checkpointing recompute (see ``inject._CheckpointReplay``).
    """

    def __init__(self, layer_index: int):
        self.layer_index = layer_index
        self.prefix: LayerPrefix | None = None
        # While adaprefix.text_init reads a text's keys and values: the list each attention call appends its
        # (key, value) to, (B, kv_heads, S, hd) each, as the attention receives them (projected, rotated).
        self.capture: list | None = None


def layer_site(module: nn.Module) -> LayerSite | None:
    """The :class:`LayerSite` attach gave this attention module; None for a module without an adapter."""
    return getattr(module, SITE_ATTR, None)


def explicit_mask(mask: torch.Tensor | None, query: torch.Tensor, key_len: int, causal: bool):
    """The mask over real keys, materialised when causality would otherwise rest on sdpa's is_causal flag."""
    q_len = query.shape[2]
    if mask is not None or not causal or q_len == 1:
        return mask
    rows = torch.arange(q_len, device=query.device).unsqueeze(1) + (key_len - q_len)  # bottom-right aligned
    return (torch.arange(key_len, device=query.device).unsqueeze(0) <= rows)[None, None]  # (1, 1, T, S)


def widen_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Add `length` always-visible columns in front of a mask (bool: True=keep; float: 0=keep). None stays None."""
    if mask is None:
        return None
    pad_shape = (*mask.shape[:-1], length)
    if mask.dtype == torch.bool:
        pad = torch.ones(pad_shape, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)  # (B, 1|H, T, l + S)


def widen_mask_rows(mask: torch.Tensor | None, keep: torch.Tensor, key_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Add prefix columns in front of a mask, visible per row as ``keep`` (B, l) says; hidden ones get the mask's
    "drop" value (False, or the dtype's minimum, whose exp underflows to exactly 0 after the softmax's max shift).
    No mask: an additive one in ``dtype`` (the query's), the form every host eager kernel adds to its scores."""
    if mask is None:
        mask = torch.zeros((1, 1, 1, key_len), dtype=dtype, device=keep.device)
    lead = (max(mask.shape[0], keep.shape[0]), mask.shape[1], mask.shape[2])
    if mask.dtype == torch.bool:
        pad = keep[:, None, None, :]
    else:
        pad = torch.zeros(keep.shape, dtype=mask.dtype, device=mask.device).masked_fill(
            ~keep, torch.finfo(mask.dtype).min)[:, None, None, :]
    return torch.cat([pad.expand(*lead, -1), mask.expand(*lead, -1)], dim=-1)  # (B, 1|H, T|1, l + S)


def _repeat_heads(x: torch.Tensor, times: int) -> torch.Tensor:
    return x if times == 1 else x.repeat_interleave(times, dim=1)


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention probabilities are computed in: float32, or the input's own when it is wider (float64)."""
    return torch.promote_types(dtype, torch.float32)


def keep_drop_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A mask as bool (True = keep) or float (additive); an integer mask is 1 = keep, 0 = drop, as a 2D padding mask
    is, and must not be added to the scores as if it were additive (that would keep every key)."""
    if mask is None or mask.dtype == torch.bool or mask.is_floating_point():
        return mask
    return mask != 0


def rows_seeing_keys(mask: torch.Tensor) -> torch.Tensor:
    """(B|1, T|1) bool: whether query row t sees some real key in every head under a keep/drop ``mask`` (bool, True
    = keep, or additive, a dropped key at its dtype's minimum) of shape (B|1, 1|H, T|1, S)."""
    keeps = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return keeps.any(dim=-1).all(dim=1)


def gate_where_real_keys_seen(weight_gate: torch.Tensor | None, mask: torch.Tensor | None,
                              exact_rows: torch.Tensor | None = None,
                              shared: ForwardState | None = None) -> torch.Tensor | None:
    """The exact gate g (B|1, T|1, l), held at 0 for the query rows that see no real key under ``mask``.

    Such a row (a left-padded position under a causal mask) has all its real weight at the masked minimum, so any
    g > 0 hands the row to the prefix while g = 0 leaves it on the masked keys, as the frozen model does: a jump
    whose gradient in g is about exp(80), which overflows Adam's second moment and stops the gate for good (and on
    the fused path becomes inf * 0 = NaN). Those rows are padding: they stay on their masked keys whatever the gate,
    and give it no gradient. ``mask``: keep/drop, bool (True = keep) or additive (a dropped key at its dtype's minimum);
    None sees every key. ``exact_rows`` (B,): in a mixed batch, the rows this applies to (the others' weight 1 stands
    for a gate they do not have, and they keep their prefix there as they would alone). ``shared``: the forward's
    state, so that the rows are found once for all layers.
    """
    if weight_gate is None or mask is None:
        return weight_gate
    seen = rows_seeing_keys(mask) if shared is None else shared.rows_seeing_keys(mask)  # (B|1, T|1)
    if exact_rows is not None:
        seen = seen | ~exact_rows[:, None]  # (B, T|1)
    return torch.where(seen[..., None], weight_gate, torch.zeros((), dtype=weight_gate.dtype,
                                                                 device=weight_gate.device))


def weighted_softmax(scores: torch.Tensor, length: int, weight_gate: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim of ``scores`` (..., l + S) where column j < l has unnormalised weight g_j exp(s_j).

    ``weight_gate``: g (..., l), broadcast against the first l columns; g = 0 gives the column exactly zero weight.
    The gate multiplies the exponential rather than adding log g to the logit, so that its gradient at g = 0 is
    exp(s_j - lse) * (...), not 0 * log'(0) = NaN. The shift m holds no gradient (it cancels); it is the largest
    exponent among the columns with any weight, so a large logit of a gated-off column cannot underflow the rest.
    """
    ct = scores.dtype
    g = weight_gate.to(ct)
    with torch.no_grad():
        m = torch.maximum(scores[..., length:].amax(dim=-1, keepdim=True),
                          (scores[..., :length] + torch.log(g)).amax(dim=-1, keepdim=True))
    # The clamp only matters for a column whose g is below exp(-80) while its logit exceeds all others by 80 or more,
    # where exp would overflow before g brings it back down.
    e_prefix = torch.exp((scores[..., :length] - m).clamp(max=80.0)) * g
    e_real = torch.exp(scores[..., length:] - m)
    total = e_prefix.sum(dim=-1, keepdim=True) + e_real.sum(dim=-1, keepdim=True)
    return torch.cat([e_prefix, e_real], dim=-1) / total


def prefix_weighted_softmax(scores: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """softmax over the last dim of ``scores`` (..., l) where column j has unnormalised weight w_j exp(s_j).

    ``weight`` w broadcasts against ``scores`` (None: 1). As in :func:`weighted_softmax`, w multiplies the exponential
    (its gradient at w = 0 is finite) and the shift is the largest exponent among the columns with any weight. A row
    with no weight anywhere (every w exactly 0, or every column padded away at -inf) gives zeros rather than 0/0: a
    layer whose every alpha is exactly 0 adds nothing, while the same small alpha on every token adds it all.
    """
    w = None if weight is None else weight.to(scores.dtype)
    with torch.no_grad():
        m = (scores if w is None else scores + torch.log(w)).amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # no weight anywhere: any finite shift
    e = torch.exp((scores - m).clamp(max=80.0))
    if w is not None:
        e = e * w
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def separate_softmax(scores: torch.Tensor, length: int, prefix: LayerPrefix) -> torch.Tensor:
    """gate_mode "separate": [lambda * the prefix columns' own softmax, the real keys' own softmax] from masked scores
    (B, H, T, l + S), in the scores' dtype (computed in :func:`softmax_dtype`). In the prefix's softmax, token j weighs
    alpha_j exp(s_j) (``separate_weight``); a padded column (its score at the dtype's minimum) gets no weight."""
    ct = softmax_dtype(scores.dtype)
    weight = None if prefix.separate_weight is None else prefix.separate_weight.unsqueeze(1)  # (B|1, 1, T|1, l)
    own = prefix_weighted_softmax(scores[..., :length].to(ct), weight)
    real = torch.softmax(scores[..., length:], dim=-1, dtype=ct)
    lam = prefix.separate_gate.to(ct).view(-1, 1, 1, 1)
    return torch.cat([lam * own, real], dim=-1).to(scores.dtype)


def with_separate_rows(scores: torch.Tensor, length: int, prefix: LayerPrefix,
                       joint: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The probabilities over [prefix columns; real keys] of each row: :func:`separate_softmax` for the rows whose
    adapter attends to its prefix apart, ``joint()`` (the joint softmax) for the others."""
    if prefix.separate_gate is None:
        return joint()
    separate = separate_softmax(scores, length, prefix)
    if prefix.separate_rows is None:
        return separate
    return torch.where(prefix.separate_rows[:, None, None, None], separate, joint())


def prefix_softmax(scores: torch.Tensor, length: int, prefix: LayerPrefix) -> torch.Tensor:
    """Probabilities over [prefix columns; real keys] from masked scores (B, H, T, l + S), in the scores' dtype:
    a plain softmax, with exact gates :func:`weighted_softmax`, with separate ones :func:`separate_softmax`. For the
    patched attentions (DeBERTa, MPNet), whose gates are pooled (``weight_gate`` (B, 1, l)) or already in the keys
    and values."""
    def joint():
        if prefix.weight_gate is None:
            return nn.functional.softmax(scores, dim=-1)
        ct = softmax_dtype(scores.dtype)
        return weighted_softmax(scores.to(ct), length, prefix.weight_gate.unsqueeze(1)).to(scores.dtype)

    return with_separate_rows(scores, length, prefix, joint)


def per_query_gated_attention(module, query, key, value, mask, prefix: LayerPrefix, scaling=None, dropout=0.0,
                              **kwargs):
    """Attention over [gated prefix; keys] with a gate inside the attention: eager.

    Two gates, either or both (a mixed batch may carry both kinds, each row using one):

    - ``query_gate`` a (B, T, l): scaling pseudo token j's key and value by a_tj for query t equals scaling its logit
      and its attention weight by a_tj, which is what is computed here (a shared key tensor cannot carry a per-query
      factor);
    - ``weight_gate`` g (B|1, T|1, l), exact gates: token j's unnormalised weight is g_tj exp(s_tj), its value as is.

    One (B, H, T, l + S) score matrix, keys and values repeated per query head. This is the reference the fused path
    is tested against, and what runs where that path cannot (see :func:`fast_path_blocker`): it returns the weights
    it used, and applies attention dropout.
    """
    unsupported = [k for k in ("softcap", "sinks", "s_aux") if kwargs.get(k) is not None]
    if unsupported:  # none of the supported architectures passes these; fail rather than compute something else
        raise NotImplementedError(f"per-query gated attention does not implement {', '.join(unsupported)}")
    length = prefix.keys.shape[2]
    batch, heads, q_len, head_dim = query.shape
    rep = heads // key.shape[1]
    scaling = head_dim**-0.5 if scaling is None else scaling
    gate = None if prefix.query_gate is None else prefix.query_gate.unsqueeze(1).to(query.dtype)  # (B, 1, T, l)
    pk = _repeat_heads(prefix.keys.expand(batch, -1, -1, -1), rep)  # (B, H, l, hd)
    pv = _repeat_heads(prefix.values.expand(batch, -1, -1, -1), rep)
    k, v = _repeat_heads(key, rep), _repeat_heads(value, rep)  # (B, H, S, hd)
    prefix_scores = (query @ pk.transpose(-1, -2)) * scaling  # (B, H, T, l)
    if gate is not None:
        prefix_scores = prefix_scores * gate
    if prefix.keep is not None:  # padded prefix columns (mixed adapters): no weight at all
        prefix_scores = prefix_scores.masked_fill(~prefix.keep[:, None, None, :], torch.finfo(prefix_scores.dtype).min)
    scores = (query @ k.transpose(-1, -2)) * scaling  # (B, H, T, S)
    mask = keep_drop_mask(mask)
    weight_gate = gate_where_real_keys_seen(prefix.weight_gate, mask, prefix.exact_rows, prefix.shared)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    both = torch.cat([prefix_scores, scores], dim=-1)  # (B, H, T, l + S)
    ct = softmax_dtype(query.dtype)

    def joint():
        if prefix.weight_gate is None:
            return torch.softmax(both, dim=-1, dtype=ct).to(query.dtype)
        return weighted_softmax(both.to(ct), length, weight_gate.unsqueeze(1)).to(query.dtype)

    probs = with_separate_rows(both, length, prefix, joint)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    # The weights the values are really mixed with (gate on the prefix columns, after dropout): these are what
    # output_attentions reports, so that weights @ [values] reproduces the output.
    if gate is not None:
        probs = torch.cat([probs[..., :length] * gate, probs[..., length:]], dim=-1)
    weights = probs  # (B, H, T, l + S)
    out = weights[..., :length] @ pv + weights[..., length:] @ v  # (B, H, T, hd)
    return out.transpose(1, 2).contiguous(), weights


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A keep/drop mask as the fused kernel takes it: additive, in the query's dtype, a dropped key at dtype's minimum.

    The minimum, not -inf: for a query that sees no real key (left padding) the kernel then reports a log-sum-exp near
    the minimum (with -inf it reports 0 and a zero output), so the merge gives all weight to the prefix, as the eager
    path does.
    """
    low = torch.finfo(dtype).min
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, low)
    return mask.to(dtype).clamp(min=low)


_FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_FAST_PATH = {"enabled": True}


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Use (or bypass) :func:`fused_per_query_gated_attention` inside this block; the tests compare both paths."""
    previous = _FAST_PATH["enabled"]
    _FAST_PATH["enabled"] = enabled
    try:
        yield
    finally:
        _FAST_PATH["enabled"] = previous


def fast_path_blocker(module, query, key, value, mask, prefix: LayerPrefix, dropout=0.0, **kwargs) -> str | None:
    """Why this call must take the eager per-query path; None when the fused path applies."""
    if not _FAST_PATH["enabled"]:
        return "fast path disabled"
    if kwargs.get("output_attentions") or prefix.shared.want_weights:
        return "attention weights requested (the fused kernel does not return them)"
    if module.training and dropout > 0:
        return "attention dropout while training (the fused CPU kernel has none)"
    if any(kwargs.get(k) is not None for k in ("softcap", "sinks", "s_aux")):
        return "softcap / attention sinks"
    tensors = (query, key, value, prefix.keys, prefix.values, prefix.query_gate, prefix.weight_gate)
    if prefix.keep is not None and torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                                   for t in tensors):
        return "padded prefix columns (mixed adapters) while computing gradients"
    if query.device.type != "cpu":
        return f"no fused kernel with log-sum-exp wired up for {query.device.type}"
    if query.dtype not in _FAST_DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtype {query.dtype}"
    if mask is not None and mask.ndim != 4:
        return f"a {mask.ndim}D mask"
    if value.shape[-1] != query.shape[-1] or query.shape[1] % key.shape[1]:
        return "head shapes"
    return None


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _kernel_inputs(query, key, mask):
    """Query and mask as the kernel takes them, and whether a decoding step's heads were folded.

    The kernel reads grouped-query key/value heads directly. When decoding (one query), the rep query heads of a group
    become rep queries of their key/value head instead, so each head of the cache is read once per step.
    """
    batch, heads, q_len, head_dim = query.shape
    groups = key.shape[1]
    rep = heads // groups
    if q_len != 1 or rep == 1 or (mask is not None and mask.shape[1] not in (1, heads)):
        return query, mask, False
    q = query.view(batch, groups, rep, head_dim)  # (B, G, R, hd)
    if mask is not None:  # (B|1, 1|H, 1, S) -> (B|1, 1|G, R, S)
        mask = mask.expand(-1, -1, rep, -1) if mask.shape[1] == 1 else mask.view(mask.shape[0], groups, rep, -1)
    return q, mask, True


def _heads_gate(gate: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A gate (B|1, T|1, l) as (B|1, 1, 1, T|1, l) in ``dtype``, broadcast over the kv groups and their heads."""
    return None if gate is None else _cast(gate, dtype)[:, None, None]


def _fused_forward(query, key, value, pk, pv, gate, wgate, mask, scale: float, causal: bool, need_lse: bool,
                   keep=None):
    """The merged attention and, if asked, its log-normaliser; see :func:`fused_per_query_gated_attention`.

    ``gate``: the query gate a (scales logit and value), ``wgate``: the exact gate g (weighs the exponential); either
    may be None. Returns out (B, H, T, hd) in the query's dtype and lse (B, H, T) (or None) in the kernel's
    log-sum-exp dtype (float32, or float64 for float64 inputs): the log of the softmax denominator over [prefix
    columns; real keys].
    """
    batch, heads, q_len, head_dim = query.shape
    groups, length = pk.shape[1], pk.shape[2]
    rep = heads // groups
    q, kernel_mask, _ = _kernel_inputs(query, key, mask)
    out_real, lse_real = _flash(q, key, value, 0.0, causal, attn_mask=kernel_mask, scale=scale)
    out_real = out_real.view(batch, groups, rep, q_len, head_dim)  # head h = g * R + r, as repeat_kv numbers them
    lse_real = lse_real.view(batch, groups, rep, q_len)
    ct = lse_real.dtype
    gate, wgate = _heads_gate(gate, ct), _heads_gate(wgate, ct)  # (B, 1, 1, T, l)
    logits = _prefix_logits(query, pk, gate, scale, ct)  # (B, G, R, T, l): a_tj * s_tj
    if wgate is not None:  # g exp(s) = exp(s + log g); log 0 = -inf gives exactly 0 (no gradient is taken here)
        logits = logits + torch.log(wgate)
    if keep is not None:  # padded prefix columns (mixed adapters): exp(-inf) = 0, and lse_real keeps the row finite
        logits = logits.masked_fill(~keep[:, None, None, None, :], float("-inf"))
    # One softmax over the l prefix logits and the real keys' log-mass: the last column is the real keys' share.
    both = torch.cat([logits, lse_real.unsqueeze(-1)], dim=-1)  # (B, G, R, T, l + 1)
    probs = torch.softmax(both, dim=-1)
    weights = probs[..., :length] if gate is None else probs[..., :length] * gate  # the query gate on the values too
    prefix_out = torch.matmul(weights.reshape(batch, groups, rep * q_len, length), _cast(pv, ct))  # (B, G, R*T, hd)
    out = torch.addcmul(prefix_out.view(batch, groups, rep, q_len, head_dim), _cast(out_real, ct), probs[..., length:])
    lse = torch.logsumexp(both, dim=-1).view(batch, heads, q_len) if need_lse else None
    return _cast(out.view(batch, heads, q_len, head_dim), query.dtype), lse


def _prefix_logits(query, pk, gate, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """a_tj * (q_t . pk_j) * scale, as (B, G, R, T, l), in ``dtype``; gate (B, 1, 1, T, l), or None for a = 1.

    The R query heads of kv group G read its prefix keys as they are (no copy per query head).
    """
    batch, heads, q_len, head_dim = query.shape
    groups, length = pk.shape[1], pk.shape[2]
    rep = heads // groups
    grouped = _cast(query, dtype).reshape(batch, groups, rep * q_len, head_dim)  # a view when decoding
    scores = torch.matmul(grouped, _cast(pk, dtype).transpose(-1, -2))  # (B, G, R*T, l)
    scores = scores.view(batch, groups, rep, q_len, length).mul_(scale)
    return scores if gate is None else scores * gate


class _FusedGatedAttention(torch.autograd.Function):
    """Autograd for :func:`_fused_forward`: the kernel's log-sum-exp has no gradient of its own, so the merge does.

    Real keys: the kernel's backward, given the *merged* output and log-normaliser, rebuilds each real key's weight
    as exp(s - lse), which is its weight in the merged softmax, and uses sum(grad * out) over the merged output: that
    is exactly the real keys' share of the merged gradient (as in ring attention). Prefix columns: the gradient of
    the surrogate sum_j p_j (a_j grad . pv_j - sum(grad * out)) with p_j = exp(a_j s_j - lse), lse held fixed, which
    is the softmax gradient for logit a_j s_j and value a_j pv_j; autograd takes it through the small (B, H, T, l)
    tensors to q, the prefix and the gate. An exact gate g multiplies p_j (p_j = g_j exp(a_j s_j - lse)): the same
    surrogate then also gives g's gradient, exp(a_j s_j - lse) (...), which is finite at g = 0 (log g's is not).
    """

    @staticmethod
    def forward(ctx, query, key, value, pk, pv, gate, wgate, mask, scale, causal):
        out, lse = _fused_forward(query, key, value, pk, pv, gate, wgate, mask, scale, causal, need_lse=True)
        ctx.save_for_backward(query, key, value, pk, pv, gate, wgate, mask, out, lse)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        # The math lives in a plain function: mutmut (the core's mutation testing) skips decorated ones.
        return _fused_backward(ctx.saved_tensors, ctx.needs_input_grad, ctx.scale, ctx.causal, grad_out)


def _fused_backward(saved, needs_input_grad, scale: float, causal: bool, grad_out):
    """:class:`_FusedGatedAttention`'s gradients, from its saved tensors (see there)."""
    query, key, value, pk, pv, gate, wgate, mask, out, lse = saved
    batch, heads, q_len, head_dim = query.shape
    groups, length = pk.shape[1], pk.shape[2]
    rep, ct = heads // groups, lse.dtype
    grad_out = grad_out.contiguous()
    q, kernel_mask, _ = _kernel_inputs(query, key, mask)
    shape = q.shape  # the kernel's view of the query: (B, H, T, hd), or (B, G, R, hd) when folded
    grad_q, grad_k, grad_v = _flash_backward(
        grad_out.view(shape), q, key, value, out.view(shape), lse.view(shape[:-1]), 0.0, causal,
        attn_mask=kernel_mask, scale=scale)
    grad_q = grad_q.reshape(query.shape)
    inputs = {i: t for i, t in zip((0, 3, 4, 5, 6), (query, pk, pv, gate, wgate)) if t is not None}
    wanted = [i for i in inputs if needs_input_grad[i]]
    grads = {}
    if wanted:
        with torch.enable_grad():
            leaves = {i: t.detach().requires_grad_(i in wanted) for i, t in inputs.items()}
            a, w = _heads_gate(leaves.get(5), ct), _heads_gate(leaves.get(6), ct)  # (B, 1, 1, T, l)
            g = _cast(grad_out, ct)
            d = (g * _cast(out, ct)).sum(dim=-1).view(batch, groups, rep, q_len, 1)
            logits = _prefix_logits(leaves[0], leaves[3], a, scale, ct)  # (B, G, R, T, l)
            # Clamped as weighted_softmax clamps: exp overflows where g is below exp(-80) (and is 0 there).
            probs = torch.exp((logits - lse.view(batch, groups, rep, q_len, 1)).clamp(max=80.0))
            if w is not None:
                probs = probs * w
            g_dot_pv = torch.matmul(g.reshape(batch, groups, rep * q_len, head_dim),
                                    _cast(leaves[4], ct).transpose(-1, -2))  # (B, G, R*T, l)
            g_dot_pv = g_dot_pv.view(batch, groups, rep, q_len, length)
            surrogate = (probs * ((g_dot_pv if a is None else a * g_dot_pv) - d)).sum()
            found = torch.autograd.grad(surrogate, [leaves[i] for i in wanted])
        grads = {i: _cast(g_i, leaves[i].dtype) for i, g_i in zip(wanted, found)}
    if 0 in grads:
        grad_q = grad_q + grads[0]
    return (grad_q, grad_k, grad_v, grads.get(3), grads.get(4), grads.get(5), grads.get(6), None, None, None)


def fused_per_query_gated_attention(module, query, key, value, attention_mask, prefix: LayerPrefix, scaling=None,
                                    dropout=0.0, **kwargs):
    """The result of :func:`per_query_gated_attention` with the real keys on a fused kernel.

    With s_tj = q_t . pk_j * scale and gate a_tj, pseudo token j enters query t's softmax with logit a_tj s_tj and its
    value with weight a_tj. Over the real keys the fused kernel returns O_r and the log-sum-exp L_r; then
    ``out = (exp(L_r) O_r + sum_j exp(a_tj s_tj) a_tj pv_j) / (exp(L_r) + sum_j exp(a_tj s_tj))``, evaluated
    relative to the largest exponent. Keys and values are read as they are: no repeat per query head (the kernel
    takes grouped-query heads; the prefix part keeps the heads of a group on their own axis) and no concatenation
    onto the cache. Causality without a mask uses the kernel's flag when queries and keys are aligned (T == S);
    otherwise the mask is materialised. Returns (out (B, T, H, hd), None): no weights (ask for them with
    ``output_attentions`` and the eager path runs).
    """
    q_len, key_len = query.shape[2], key.shape[2]
    causal = False
    if attention_mask is None and bool(getattr(module, "is_causal", False)) and q_len > 1:
        if q_len == key_len:
            causal = True
        else:
            attention_mask = explicit_mask(None, query, key_len, True)
    attention_mask = keep_drop_mask(attention_mask)
    mask = None if attention_mask is None else prefix.shared.additive_mask(attention_mask, query.dtype)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # gates (B, T, l) or, pooled exact gates, (B, 1, l)
    weight_gate = gate_where_real_keys_seen(prefix.weight_gate, attention_mask, prefix.exact_rows, prefix.shared)
    tensors = (query, key, value, prefix.keys, prefix.values, prefix.query_gate, weight_gate)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out = _FusedGatedAttention.apply(*tensors, mask, scale, causal)
    else:
        out, _ = _fused_forward(*tensors, mask, scale, causal, need_lse=False, keep=prefix.keep)
    return out.transpose(1, 2).contiguous(), None


def gated_attention(module, query, key, value, attention_mask, prefix: LayerPrefix, **kwargs):
    """Attention with a per-query gate: the fused path where :func:`fast_path_blocker` allows it, else the eager one."""
    if fast_path_blocker(module, query, key, value, attention_mask, prefix, **kwargs) is None:
        return fused_per_query_gated_attention(module, query, key, value, attention_mask, prefix, **kwargs)
    mask = explicit_mask(attention_mask, query, key.shape[2], bool(getattr(module, "is_causal", False)))
    return per_query_gated_attention(module, query, key, value, mask, prefix, **kwargs)


def separate_blocker(prefix: LayerPrefix, **kwargs) -> str | None:
    """Why a separately normalised prefix must take the eager per-query path; None when the host's own attention
    over the real keys plus :func:`separate_branch` applies (any device and dtype: no fused kernel is involved)."""
    if not _FAST_PATH["enabled"]:
        return "fast path disabled"
    if kwargs.get("output_attentions") or prefix.shared.want_weights:
        return "attention weights requested"
    if prefix.separate_rows is not None or prefix.query_gate is not None or prefix.weight_gate is not None:
        return "a batch mixing separate rows with others"
    return None


def separate_branch(query: torch.Tensor, prefix: LayerPrefix, scale: float, dropout: float = 0.0,
                    training: bool = False) -> torch.Tensor:
    """lambda * (the prefix's own softmax, token j weighing alpha_j exp(s_j)) @ prefix values: (B, H, T, hd), in
    :func:`softmax_dtype`. The R query heads of a key/value group read its prefix as it is (no copy per head)."""
    batch, heads, q_len, head_dim = query.shape
    groups, length = prefix.keys.shape[1], prefix.keys.shape[2]
    rep = heads // groups
    ct = softmax_dtype(query.dtype)
    logits = _prefix_logits(query, prefix.keys, None, scale, ct)  # (B, G, R, T, l)
    if prefix.keep is not None:  # two separate adapters of different lengths in one batch: padded columns
        logits = logits.masked_fill(~prefix.keep[:, None, None, None, :], torch.finfo(ct).min)
    probs = prefix_weighted_softmax(logits, _heads_gate(prefix.separate_weight, ct))  # (B, G, R, T, l)
    probs = nn.functional.dropout(probs, p=dropout, training=training)
    out = torch.matmul(probs.reshape(batch, groups, rep * q_len, length), _cast(prefix.values, ct))  # (B, G, R*T, hd)
    return out.view(batch, heads, q_len, head_dim) * _cast(prefix.separate_gate, ct).view(-1, 1, 1, 1)


def separate_attention(inner: Callable, module, query, key, value, attention_mask, prefix: LayerPrefix, **kwargs):
    """gate_mode "separate": the host's own attention over the real keys (``inner``, untouched: at lambda = 0 the
    output is the frozen model's, bit for bit) plus :func:`separate_branch`. A batch mixing such rows with others,
    or a request for the weights, takes the eager :func:`per_query_gated_attention`, which computes the same."""
    unsupported = [k for k in ("softcap", "sinks", "s_aux") if kwargs.get(k) is not None]
    if unsupported:  # the prefix's own softmax would need them too; no supported architecture passes them
        raise NotImplementedError(f"separately normalised prefixes do not implement {', '.join(unsupported)}")
    if separate_blocker(prefix, **kwargs) is not None:
        mask = explicit_mask(attention_mask, query, key.shape[2], bool(getattr(module, "is_causal", False)))
        return per_query_gated_attention(module, query, key, value, mask, prefix, **kwargs)
    out, _ = inner(module, query, key, value, attention_mask, **kwargs)  # (B, T, H, hd)
    scale = query.shape[-1] ** -0.5 if kwargs.get("scaling") is None else kwargs["scaling"]
    branch = separate_branch(query, prefix, scale, kwargs.get("dropout", 0.0), module.training)
    return out + branch.transpose(1, 2).to(out.dtype), None


def _inner_function(module_class: type, impl: str) -> Callable:
    if impl == "sdpa":
        return sdpa_attention_forward
    # Every modeling file defines its own eager function (GPT-2's upcasts, Llama's repeats kv heads): use the host's.
    return sys.modules[module_class.__module__].eager_attention_forward


def prefix_attention(impl: str, module, query, key, value, attention_mask, **kwargs):
    """The host's ``impl`` attention ("eager" or "sdpa") over [gated prefix; keys] for modules with a prefix.

    A module function, not a closure per implementation, so that every call runs (and is measured as) this code.
    """
    site = layer_site(module)
    inner = _inner_function(type(module), impl)
    if site is not None and site.capture is not None:
        site.capture.append((key.detach(), value.detach()))
    if site is None or site.prefix is None:
        return inner(module, query, key, value, attention_mask, **kwargs)
    prefix = site.prefix
    if prefix.separate_gate is not None:
        return separate_attention(inner, module, query, key, value, attention_mask, prefix, **kwargs)
    if prefix.query_gate is not None or prefix.weight_gate is not None:
        return gated_attention(module, query, key, value, attention_mask, prefix, **kwargs)
    mask = explicit_mask(attention_mask, query, key.shape[2], bool(getattr(module, "is_causal", False)))
    if prefix.keep is None:
        mask = widen_mask(mask, prefix.keys.shape[2])
    else:  # a batch mixing adapters of different prefix lengths: each row sees its own adapter's columns only
        mask = widen_mask_rows(mask, prefix.keep, key.shape[2], query.dtype)
    batch = key.shape[0]
    key = torch.cat([prefix.keys.expand(batch, -1, -1, -1), key], dim=2)  # (B, kv_heads, l + S, hd)
    value = torch.cat([prefix.values.expand(batch, -1, -1, -1), value], dim=2)
    # Pass is_causal=False: the explicit mask already holds causality, and sdpa's own flag aligns it top-left.
    if impl == "sdpa":
        kwargs["is_causal"] = False
    return inner(module, query, key, value, mask, **kwargs)


def _make_attention(impl: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        return prefix_attention(impl, module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"adaprefix_{impl}_attention"
    return attention


def _materialised_sdpa_mask(*args, **kwargs):
    # sdpa may skip a causal mask and rely on is_causal, which is wrong once keys outnumber queries.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


_REGISTERED = False


def register_attention() -> None:
    """Register ``adaprefix_eager`` and ``adaprefix_sdpa`` once per process."""
    global _REGISTERED
    if _REGISTERED:
        return
    for impl, mask_fn in (("eager", eager_mask), ("sdpa", _materialised_sdpa_mask)):
        AttentionInterface.register(IMPL_PREFIX + impl, _make_attention(impl))
        AttentionMaskInterface.register(IMPL_PREFIX + impl, mask_fn)
    _REGISTERED = True
