"""Where adaprefix keeps the backbones it assembles or converts, how their files are hashed, and their errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import AdaprefixError

CACHE_ENV = "ADAPREFIX_CACHE"


class BackboneError(AdaprefixError, ValueError):
    """A backbone cannot be resolved, installed or converted; the message names it and the way out."""


class BackboneNotInstalledError(BackboneError, FileNotFoundError):
    """A named backbone is not installed yet; the message gives the one command that installs it."""


def cache_root() -> Path:
    """``$ADAPREFIX_CACHE``, else ``$XDG_CACHE_HOME/adaprefix``, else ``~/.cache/adaprefix``.

    Outside the virtual environment on purpose: an assembled MPNet (440 MB) or a converted GGUF (1 GB) is reused by
    every clone and every venv of the same user, instead of being rebuilt per checkout.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "adaprefix"


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (the files here are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
