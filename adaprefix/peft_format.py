"""PEFT's prefix-tuning folder, read as a ``pt2`` adapter and written from one.

PEFT (``peft_type: PREFIX_TUNING``) saves ``adapter_config.json`` and ``adapter_model.safetensors``. Whether or not it
trained with ``prefix_projection``, the weights file holds one prefix tensor, ``prompt_embeddings`` (l, N * 2 * d_kv):
with the projection on, PEFT saves the MLP's *output*, not the MLP. Its flat layout, (layer, key|value, head,
head_dim), is the one :class:`~adaprefix.prefix.PrefixEncoder` uses, so it is copied in as the prefix itself. The task
head (PEFT's ``modules_to_save``) is saved under the host model's parameter names behind ``base_model.``.

What PEFT runs and adaprefix reproduces: the prefix enters as past key values, which shifts real tokens' positions by
l; there is no prefix dropout. An encoder's adapter therefore loads with ``shift_positions=True`` and
``prefix_dropout=0``. adaprefix keeps decoders' positions (``shift_positions`` is refused for them), so a decoder's
PEFT prefix runs with unshifted positions unless the caller passes ``position_ids`` shifted by l
(docs/guides/from-peft.md).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .adapter import PARAM_PREFIX, adapter_parameters, adapter_runtime
from .arch import resolve_arch
from .config import AdaptivePrefixConfig, ConfigError
from .files import atomic_write
from .persistence import CONFIG_NAME, AdapterLoadError, base_model_name

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PICKLE_NAME = "adapter_model.bin"
PEFT_TYPE = "PREFIX_TUNING"
PROMPT_KEY = "prompt_embeddings"
HEAD_PREFIX = "base_model."  # PEFT's name of the wrapped model, in front of a modules_to_save parameter
#: safetensors metadata key under which :func:`export_peft` keeps the adaprefix config (PEFT ignores metadata), so that
#: the settings PEFT cannot express (unshifted positions, dropout) survive a round trip.
METADATA_KEY = "adaprefix_config"
PREFIX_NAME = PARAM_PREFIX + "prefix.embedding"
# Task types PEFT writes, by the host model class's name ending (others export as None: PEFT's plain PeftModel).
_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
               "ForCausalLM": "CAUSAL_LM", "ForQuestionAnswering": "QUESTION_ANS"}


class PeftConversionWarning(UserWarning):
    """A PEFT adapter was read as a ``pt2`` adapter (or written from one); the message says what that changes."""


def is_peft_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a PEFT adapter: a ``adapter_config.json`` naming a ``peft_type`` and no adaprefix config.

    adaprefix adapters written before 0.2 also used the name ``adapter_config.json``; theirs has no ``peft_type``.
    """
    folder = Path(path)
    file = folder / PEFT_CONFIG_NAME
    if (folder / CONFIG_NAME).is_file() or not file.is_file():
        return False
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and "peft_type" in meta


def _refuse(file: Path, field: str, expected: str, got) -> None:
    raise AdapterLoadError(f"{file}: {field}: expected {expected}, got {got!r}")


def read_peft_adapter(path: str | os.PathLike,
                      model: nn.Module) -> tuple[AdaptivePrefixConfig, dict[str, torch.Tensor]]:
    """Read PEFT's prefix-tuning folder ``path`` for ``model`` as a ``pt2`` config and adaprefix-named tensors.

    Refuses, naming the field with what was expected and what was found: another ``peft_type``, an encoder-decoder
    adapter (``num_transformer_submodules``), sizes that differ from the model's (``num_layers``, ``token_dim``,
    ``num_attention_heads``, ``num_virtual_tokens``), a pickle-only weights file, and tensors that are neither the
    prefix nor a parameter of the model's task head (``modules_to_save``). Warns with
    :class:`PeftConversionWarning` saying what the conversion keeps and changes.
    """
    folder = Path(path)
    file = folder / PEFT_CONFIG_NAME
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{file}: not a readable JSON file ({err})") from err
    if meta.get("peft_type") != PEFT_TYPE:
        _refuse(file, "peft_type", f"{PEFT_TYPE!r} (prefix tuning, which adaprefix reads as pt2; other PEFT methods "
                "have no adaprefix equivalent)", meta.get("peft_type"))
    _, shape, _, causal = resolve_arch(model)
    if meta.get("num_transformer_submodules", 1) != 1:
        _refuse(file, "num_transformer_submodules", "1 (one stack of layers; encoder-decoder prefixes are not "
                "supported)", meta.get("num_transformer_submodules"))
    length = meta.get("num_virtual_tokens")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        _refuse(file, "num_virtual_tokens", "a positive integer", length)
    sizes = {"num_layers": shape.num_layers, "token_dim": shape.kv_dim, "num_attention_heads": shape.num_kv_heads}
    for field, value in sizes.items():
        if meta.get(field) != value:
            _refuse(file, field, f"{value} (this model's; for key/value heads that is {shape.num_kv_heads} heads x "
                    f"{shape.head_dim})", meta.get(field))
    tensors, adaprefix_meta = _read_weights(folder)
    prompt = tensors.pop(PROMPT_KEY, None)
    flat_width = shape.num_layers * 2 * shape.kv_dim
    weights = folder / PEFT_WEIGHTS_NAME
    if prompt is None:
        raise AdapterLoadError(f"{weights}: no {PROMPT_KEY!r} tensor; PEFT saves a prefix-tuning prefix under it")
    if tuple(prompt.shape) != (length, flat_width):
        _refuse(weights, PROMPT_KEY, f"shape {(length, flat_width)} (num_virtual_tokens, num_layers * 2 * token_dim)",
                tuple(prompt.shape))
    head = _head_tensors(weights, tensors, model)
    config = _converted_config(meta, adaprefix_meta, length, causal, bool(head))
    if adaprefix_meta is None:
        shift = ("real tokens' positions shifted by the prefix length, as PEFT ran them" if config.shift_positions else
                 "decoder positions NOT shifted (PEFT shifts them by the prefix length; pass position_ids shifted by "
                 f"{length} to reproduce PEFT)")
        warnings.warn(
            f"adaprefix: {folder} is a PEFT prefix-tuning adapter; loaded as method 'pt2' with its saved prefix "
            f"{PROMPT_KEY} ({length} tokens" + (", the output of PEFT's prefix projection" if
                                                meta.get("prefix_projection") else "")
            + f"), prefix_dropout 0 (PEFT has none), {shift}"
            + (f", task head {sorted({n.split('.')[0] for n in head})}" if head else ", no task head (the model's)"),
            PeftConversionWarning,
            stacklevel=3,  # the caller of load_adapter
        )
    return config, {PREFIX_NAME: prompt, **head}


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    weights = folder / PEFT_WEIGHTS_NAME
    if not weights.is_file():
        if (folder / PEFT_PICKLE_NAME).is_file():
            raise AdapterLoadError(
                f"{folder / PEFT_PICKLE_NAME}: a pickle file, which adaprefix does not load; re-save the adapter with "
                f"PEFT's save_pretrained(..., safe_serialization=True) to get {PEFT_WEIGHTS_NAME}"
            )
        raise AdapterLoadError(f"{weights}: missing")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            saved = (handle.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"{weights}: unreadable or corrupt safetensors file ({err})") from err
    try:
        return tensors, (json.loads(saved) if saved else None)
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{weights}: metadata {METADATA_KEY!r} is not valid JSON ({err})") from err


def _head_tensors(weights: Path, tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT's ``modules_to_save`` tensors under the model's parameter names; anything else is refused by name."""
    params = dict(model.named_parameters())
    backbone = {id(p) for p in model.base_model.parameters()}
    head, refused = {}, []
    for key, tensor in tensors.items():
        name = key[len(HEAD_PREFIX):] if key.startswith(HEAD_PREFIX) else None
        if name is None or name not in params or id(params[name]) in backbone:
            refused.append(key)
        else:
            head[name] = tensor
    if refused:
        raise AdapterLoadError(
            f"{weights}: tensors {sorted(refused)} are neither the prefix ({PROMPT_KEY!r}) nor a parameter of this "
            f"model's task head (PEFT's modules_to_save, saved as '{HEAD_PREFIX}<parameter name>'); adaprefix trains "
            "the prefix and the head only, so other modules_to_save (inside the backbone) cannot be loaded"
        )
    return head


def _converted_config(meta: dict, saved: dict | None, length: int, causal: bool,
                      has_head: bool) -> AdaptivePrefixConfig:
    if saved is not None:  # written by export_peft: the settings PEFT cannot hold come back as they were
        try:
            config = AdaptivePrefixConfig.from_dict({**saved, "prefix_projection": False},
                                                    source=f"{METADATA_KEY} metadata")
        except (ConfigError, TypeError) as err:
            raise AdapterLoadError(str(err)) from err
        if config.method == "pt2" and config.prefix_length == length:
            return config  # otherwise the file was edited since: read it as PEFT's
    return AdaptivePrefixConfig(method="pt2", prefix_length=length, prefix_projection=False, prefix_dropout=0.0,
                                shift_positions=not causal, train_head=has_head)


def export_peft(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's active ``pt2`` adapter as PEFT's prefix-tuning folder in ``path``.

    ``adapter_config.json`` (``peft_type: PREFIX_TUNING``, ``prefix_projection: false``) and
    ``adapter_model.safetensors``: the prefix as ``prompt_embeddings`` (a reparameterised prefix is saved as its
    projection's output, as PEFT itself saves it) and the task head under PEFT's ``base_model.<name>`` keys with its
    modules in ``modules_to_save``. ``PeftModel.from_pretrained(model, path)`` reads it; so does
    :func:`adaprefix.load_adapter`, exactly (the adaprefix config rides along in the file's metadata).

    Refused with :class:`~adaprefix.config.ConfigError`: APT and the gate ablations (PEFT has no gates) and per-layer
    prefix lengths (PEFT has one length). Warns with :class:`PeftConversionWarning` where PEFT will run the prefix
    differently (PEFT shifts real tokens' positions by the prefix length).
    """
    runtime = adapter_runtime(model)
    config = runtime.config
    if config.method != "pt2":
        raise ConfigError(
            f"method: PEFT's prefix tuning has no equivalent of {config.method!r}'s gates (the token gate alpha and "
            f"the layer gate lambda scale the prefix per input and layer); expected 'pt2', got {config.method!r}"
        )
    if config.prefix_lengths is not None:
        raise ConfigError(f"prefix_lengths: PEFT's prefix tuning has one prefix length for every layer; expected "
                          f"None, got {config.prefix_lengths!r}")
    encoder = runtime.adapter.prefix
    with torch.no_grad():
        # The same computation the forward runs, so the exported prefix equals the one attention sees bit for bit.
        flat = encoder.embedding if encoder.projection is None else encoder.projection(encoder.embedding)
    tensors = {PROMPT_KEY: flat.detach().contiguous().cpu()}
    head = {n: p.detach().contiguous().cpu() for n, p in adapter_parameters(model).items()
            if not n.startswith(PARAM_PREFIX)}
    tensors.update({HEAD_PREFIX + n: t for n, t in head.items()})
    shape = runtime.shape
    task_type = next((t for end, t in _TASK_TYPES.items() if type(model).__name__.endswith(end)), None)
    peft_config = {
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name(model),
        "encoder_hidden_size": shape.kv_dim,  # PEFT's default; unused without the projection
        "inference_mode": True,
        "init_weights": None,
        "modules_to_save": sorted({n.split(".")[0] for n in head}) or None,
        "num_attention_heads": shape.num_kv_heads,
        "num_layers": shape.num_layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": config.prefix_length,
        "peft_type": PEFT_TYPE,
        "prefix_projection": False,  # the saved prefix is the projection's output already
        "revision": None,
        "task_type": task_type,
        "token_dim": shape.kv_dim,
    }
    with model.disable_adapter():  # the host's own attention, which is what resolve_arch recognises
        _, _, _, causal = resolve_arch(model)
    if not config.shift_positions:
        warnings.warn(
            f"adaprefix: {'this decoder' if causal else 'this encoder'}'s adapter ran with pretrained positions "
            f"(shift_positions=False); PEFT feeds the prefix as past key values, which shifts real tokens' positions "
            f"by {config.prefix_length}, so PEFT's outputs will differ from adaprefix's (adaprefix.load_adapter "
            "reads the folder back unshifted)",
            PeftConversionWarning,
            stacklevel=2,
        )
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", METADATA_KEY: json.dumps(config.to_dict())}
    atomic_write(out / PEFT_WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(out / PEFT_CONFIG_NAME,
                 lambda tmp: Path(tmp).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n"))
