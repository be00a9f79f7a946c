"""A prefix initialised from real tokens: each layer's prefix set to the frozen model's own keys and values of a text.

Li and Liang (2021) found that initialising a prefix with the activations of real words trains more stably than a
random one, and much better with little data. Here the text is run through the frozen model once; at every layer
the keys and values its attention receives (projected, normalised and rotated, exactly as the attention sees them)
become that layer's prefix. A pt2 prefix initialised so is then the text itself, cached: the model starts as if the
text preceded every input.

Positions. Real tokens keep their pretrained positions (0, 1, ...), so a text that precedes them must sit before
position 0. On rotary-position decoders (Llama, Qwen2, Mistral, Gemma 3) the text is read at positions -l .. -1:
rotary attention depends on position differences only, so the text's hidden states are those it has at 0 .. l-1, its
keys are rotated as a real text right before the input would be, and pt2 then gives exactly the logits the frozen
model gives for the text followed by the input. Models with absolute position embeddings (BERT-style encoders,
GPT-2) have no position before 0: the text is read at 0 .. l-1, the positions the input also starts at.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Iterator

import torch
import torch.nn as nn

from .adapter import adapter_runtime
from .config import ConfigError


def text_token_ids(tokenizer, text: str, length: int) -> list[int]:
    """The text's own token ids (no special tokens), cut or repeated to exactly ``length`` tokens.

    A longer text keeps its first ``length`` tokens; a shorter one is repeated, so the prefix is always the keys and
    values of one real token sequence of the prefix's length.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"prefix_init_text: expected a non-empty text, got {text!r}")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ConfigError(f"prefix_init_text: {text!r} gives no tokens with this tokenizer; use a text of words")
    return (ids * math.ceil(length / len(ids)))[:length]


@contextlib.contextmanager
def _capturing(model: nn.Module) -> Iterator[list[list]]:
    """Inside: the adapter is off (no prefix) but its attention seam stays in place and records every layer's keys
    and values; yields one list per layer."""
    runtime = adapter_runtime(model)
    lists: list[list] = [[] for _ in runtime.sites]
    enabled = runtime.enabled
    runtime.enabled = False  # the hooks add no prefix; the attention implementation stays adaprefix's
    for site, captured in zip(runtime.sites, lists):
        site.capture = captured
    try:
        yield lists
    finally:
        runtime.enabled = enabled
        for site in runtime.sites:
            site.capture = None


def _uses_rotary_positions(model: nn.Module) -> bool:
    return getattr(model.base_model, "rotary_emb", None) is not None


def text_keys_values(model: nn.Module, token_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's (keys, values) of ``token_ids`` in the frozen model: (kv_heads, n, head_dim) each.

    Read at positions -n .. -1 on rotary-position models, 0 .. n-1 otherwise (see the module docstring).
    """
    ids = torch.tensor([token_ids], device=next(model.parameters()).device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if _uses_rotary_positions(model):
        inputs["position_ids"] = torch.arange(-ids.shape[1], 0, device=ids.device)[None]
    was_training = model.training
    model.eval()
    try:
        with _capturing(model) as captured, torch.no_grad():
            model.base_model(**inputs)
    finally:
        model.train(was_training)
    missing = [i for i, c in enumerate(captured) if len(c) != 1]
    if missing:
        raise ConfigError(f"prefix_init_text: layers {missing} did not run their attention exactly once while "
                          "reading the text; this architecture cannot be initialised from a text")
    return [(keys[0], values[0]) for ((keys, values),) in captured]


def init_prefix_from_text(model: nn.Module, tokenizer, text: str) -> list[int]:
    """Set every layer's prefix of the attached adapter to the frozen model's keys and values of ``text``.

    Works for every method (the gates are left as they are) and for per-layer lengths (layer i takes the last l_i
    tokens, those nearest the input). The text is recorded in the adapter's config (``prefix_init_text``). Not with
    ``prefix_projection``, whose prefix is an MLP's output rather than a tensor to set. Returns the token ids used
    (``prefix_length`` of them: see :func:`text_token_ids`).
    """
    runtime = adapter_runtime(model)
    config = runtime.config
    if config.prefix_projection:
        raise ConfigError("prefix_init_text: a reparameterised prefix (prefix_projection=True) is an MLP's output and "
                          "cannot be set to a text's keys and values; set prefix_projection to False")
    if not runtime.enabled:
        raise ConfigError("prefix_init_text: the adapter is disabled here (inside disable_adapter()), so the text "
                          "cannot be read through it; initialise it outside that block")
    positions = getattr(model.config, "max_position_embeddings", None)
    # RoBERTa-style embeddings (RoBERTa, XLM-R, MPNet) number real tokens from padding_idx + 1
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    first = 0 if padding_idx is None else padding_idx + 1
    if not _uses_rotary_positions(model) and positions is not None and first + config.prefix_length > positions:
        raise ConfigError(f"prefix_init_text: the text is read at positions {first} .. "
                          f"{first + config.prefix_length - 1}, and this {model.config.model_type} model has "
                          f"{positions} positions; use a prefix_length of at most {positions - first}")
    ids = text_token_ids(tokenizer, text, config.prefix_length)
    per_layer = text_keys_values(model, ids)
    shape = runtime.shape
    encoder = runtime.adapter.prefix
    with torch.no_grad():
        for i, (keys, values) in enumerate(per_layer):
            kv = torch.stack([keys, values])  # (2, kv_heads, L, head_dim)
            if isinstance(encoder.embedding, nn.ParameterList):  # per-layer lengths: (l_i, 2 * kv_dim), layer i's own
                n = encoder.layer_lengths[i]
                if n:
                    encoder.embedding[i].copy_(kv[:, :, kv.shape[2] - n:].permute(2, 0, 1, 3).reshape(n, -1))
                continue
            # The flat layout (l, N * 2 * kv_dim) orders the last dimension as (layer, key|value, head, head_dim).
            flat = encoder.embedding.view(config.prefix_length, shape.num_layers, 2, shape.num_kv_heads,
                                          shape.head_dim)
            flat[:, i].copy_(kv.permute(2, 0, 1, 3))
    runtime.config = replace(config, prefix_init_text=text)
    if runtime.bank is not None:  # several adapters: the active one's entry holds the same config
        runtime.bank.entries[runtime.adapter_name].config = runtime.config
    return ids
