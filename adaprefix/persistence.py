"""save_adapter / load_adapter: a small, pickle-free adapter (JSON config + safetensors)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .arch import resolve_arch
from .config import AdaptivePrefixConfig, ConfigError
from .inject import attach, is_attached

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT_VERSION = 1


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AdapterLoadError(ValueError):
    """An adapter directory cannot be loaded onto this model; the message names the file and the mismatch."""


class BaseModelMismatchWarning(UserWarning):
    """The adapter was trained on another checkpoint than the one it is loaded onto (same shapes, other weights)."""


def base_model_name(model: nn.Module) -> str | None:
    """The name or path the model was loaded from (``from_pretrained``); None for a model built from a config."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter consists of: prefix, gates and task head (what attach left trainable)."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in model._adaprefix_runtime.saved_names}


def _atomic_write(path: Path, write) -> None:
    # A killed process must never leave a half-written file under the final name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; keep the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    if not is_attached(model):
        raise ValueError("save_adapter needs a model returned by adaprefix.attach")
    runtime = model._adaprefix_runtime
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
    _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))


def read_adapter_config(path: str | os.PathLike) -> tuple[AdaptivePrefixConfig, dict]:
    """Read and validate ``adapter_config.json``; return the config and the saved backbone facts."""
    config, meta = _read_adapter_meta(path)
    return config, meta["backbone"]


def _read_adapter_meta(path: str | os.PathLike) -> tuple[AdaptivePrefixConfig, dict]:
    file = Path(path) / CONFIG_NAME
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


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Attach the adapter saved in ``path`` to a fresh ``model`` and load its tensors; returns the model.

    Shapes must match exactly. A different base checkpoint of the same shape loads with a
    :class:`BaseModelMismatchWarning`: the prefix was learned for other weights.
    """
    config, meta = _read_adapter_meta(path)
    saved_backbone, saved_base = meta["backbone"], meta.get("base_model")  # base_model: None when unknown
    current_base = base_model_name(model)
    if saved_base and current_base and os.path.normpath(saved_base) != os.path.normpath(current_base):
        warnings.warn(
            f"adaprefix: {Path(path) / CONFIG_NAME} was trained on base model {saved_base!r}, this model was loaded "
            f"from {current_base!r}; shapes match, so it loads, but outputs differ from the ones it was trained for "
            "unless the two are the same checkpoint",
            BaseModelMismatchWarning,
            stacklevel=2,
        )
    _, shape, _, _ = resolve_arch(model)
    mismatches = [
        f"{key}: adapter {saved_backbone.get(key)!r}, model {value!r}"
        for key, value in asdict(shape).items()
        if saved_backbone.get(key) != value
    ]
    if mismatches:
        raise AdapterLoadError(f"{Path(path) / CONFIG_NAME}: saved for a different backbone: {'; '.join(mismatches)}")
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterLoadError(f"{weights}: missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"{weights}: unreadable or corrupt safetensors file ({err})") from err

    attach(model, config)
    params = dict(model.named_parameters())
    expected = {name: params[name] for name in model._adaprefix_runtime.saved_names}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [f"{n}: file {tuple(tensors[n].shape)}, model {tuple(expected[n].shape)}"
             for n in sorted(set(expected) & set(tensors)) if tensors[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        from .inject import detach

        detach(model)
        parts = [f"missing tensors {missing}" if missing else "", f"unexpected tensors {unexpected}" if unexpected
                 else "", f"shape mismatches: {'; '.join(wrong)}" if wrong else ""]
        raise AdapterLoadError(f"{weights}: does not fit this model: {', '.join(p for p in parts if p)}")
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name])
    return model
