"""The adapter's files: a small, pickle-free adapter (JSON config + safetensors).

save_adapter writes them; read_adapter and check_adapter_tensors make every check before and after attaching that
:func:`adaprefix.load_adapter` (in :mod:`adaprefix.inject`, since loading is attaching) relies on.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .adapter import adapter_parameters, adapter_runtime
from .arch import resolve_arch
from .config import AdaptivePrefixConfig, ConfigError
from .errors import AdaprefixError
from .files import atomic_write

# Not PEFT's "adapter_config.json": transformers with peft installed reads a folder holding that name as a PEFT
# adapter, so a model saved with save_pretrained (adapter beside the base weights) would not reload.
CONFIG_NAME = "adaprefix_config.json"
LEGACY_CONFIG_NAME = "adapter_config.json"  # adapters written before 0.2 (read, never written)
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1


class AdapterLoadError(AdaprefixError, ValueError):
    """An adapter directory cannot be loaded onto this model; the message names the file and the mismatch."""


class BaseModelMismatchWarning(UserWarning):
    """The adapter was trained on another checkpoint than the one it is loaded onto (same shapes, other weights)."""


def base_model_name(model: nn.Module) -> str | None:
    """The name or path the model was loaded from (``from_pretrained``); None for a model built from a config."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter consists of: prefix, gates and task head (what attach left trainable)."""
    return {name: param.detach() for name, param in adapter_parameters(model).items()}


def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``adaprefix_config.json`` and ``adapter.safetensors`` (prefix, gates, task head) into ``path``.

    Each file is written atomically (a kill leaves the old file or the new one, never half of one); missing parent
    folders are made. Raises :class:`~adaprefix.adapter.AdapterStateError` for a model without an adapter.
    """
    runtime = adapter_runtime(model)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous().cpu() for name, t in adapter_state_dict(model).items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "base_model": base_model_name(model),
        "config": runtime.config.to_dict(),
        "backbone": asdict(runtime.shape),
        "tensors": {name: list(t.shape) for name, t in tensors.items()},
    }
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def read_adapter_config(path: str | os.PathLike) -> tuple[AdaptivePrefixConfig, dict]:
    """Read and validate ``adaprefix_config.json``; return the config and the saved backbone facts."""
    config, meta = _read_adapter_meta(path)
    return config, meta["backbone"]


def config_file(path: str | os.PathLike) -> Path:
    """The adapter's config file in ``path``: ``adaprefix_config.json``, or an older adapter's name for it."""
    file = Path(path) / CONFIG_NAME
    legacy = Path(path) / LEGACY_CONFIG_NAME
    return legacy if not file.is_file() and legacy.is_file() else file


def _read_adapter_meta(path: str | os.PathLike) -> tuple[AdaptivePrefixConfig, dict]:
    file = config_file(path)
    if not file.is_file():
        raise AdapterLoadError(f"{file}: missing; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterLoadError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise AdapterLoadError(f"{file}: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise AdapterLoadError(
            f"{file}: format_version {version!r}, but adaprefix {_package_version()} reads format_version "
            f"{FORMAT_VERSION}; load it with the adaprefix release that wrote it, or re-save the adapter with this one"
        )
    for key in ("config", "backbone"):
        if not isinstance(meta.get(key), dict):
            raise AdapterLoadError(f"{file}: field {key!r} missing or not an object")
    try:
        config = AdaptivePrefixConfig.from_dict(meta["config"], source=f"{file} field 'config'")
    except (ConfigError, TypeError) as err:
        raise AdapterLoadError(str(err)) from err
    return config, meta


def _package_version() -> str:
    from . import __version__

    return __version__


def read_adapter(path: str | os.PathLike, model: nn.Module) -> tuple[AdaptivePrefixConfig, dict[str, torch.Tensor]]:
    """Read the adapter in ``path`` for ``model``: its config and tensors, after every check the files allow.

    The saved backbone facts must equal the model's (:class:`AdapterLoadError` naming each difference). A different
    base checkpoint of the same shape warns with :class:`BaseModelMismatchWarning`. Whether the tensors fit the
    attached model is :func:`check_adapter_tensors`' part; :func:`adaprefix.load_adapter` does both.
    """
    config, meta = _read_adapter_meta(path)
    saved_backbone, saved_base = meta["backbone"], meta.get("base_model")  # base_model: None when unknown
    current_base = base_model_name(model)
    if saved_base and current_base and os.path.normpath(saved_base) != os.path.normpath(current_base):
        warnings.warn(
            f"adaprefix: {config_file(path)} was trained on base model {saved_base!r}, this model was loaded "
            f"from {current_base!r}; shapes match, so it loads, but outputs differ from the ones it was trained for "
            "unless the two are the same checkpoint",
            BaseModelMismatchWarning,
            stacklevel=3,  # the caller of load_adapter
        )
    _, shape, _, _ = resolve_arch(model)
    mismatches = [
        f"{key}: adapter {saved_backbone.get(key)!r}, model {value!r}"
        for key, value in asdict(shape).items()
        if saved_backbone.get(key) != value
    ]
    if mismatches:
        raise AdapterLoadError(f"{config_file(path)}: saved for a different backbone: {'; '.join(mismatches)}")
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterLoadError(f"{weights}: missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"{weights}: unreadable or corrupt safetensors file ({err})") from err
    return config, tensors


def check_adapter_tensors(path: str | os.PathLike, expected: dict[str, torch.Tensor],
                          tensors: dict[str, torch.Tensor]) -> None:
    """Raise :class:`AdapterLoadError` naming every missing, unexpected or wrongly shaped tensor of ``path``.

    ``expected``: the attached model's adapter parameters by name; ``tensors``: what the weights file holds.
    """
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [f"{n}: file {tuple(tensors[n].shape)}, model {tuple(expected[n].shape)}"
             for n in sorted(set(expected) & set(tensors)) if tensors[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        parts = [f"missing tensors {missing}" if missing else "", f"unexpected tensors {unexpected}" if unexpected
                 else "", f"shape mismatches: {'; '.join(wrong)}" if wrong else ""]
        raise AdapterLoadError(f"{Path(path) / WEIGHTS_NAME}: does not fit this model: "
                               f"{', '.join(p for p in parts if p)}")
