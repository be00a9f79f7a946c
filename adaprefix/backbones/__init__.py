"""Backbones by name or file: packaged real weights (``minilm``, ``mpnet``, ``gemma3-270m``) and GGUF checkpoints.

:func:`resolve_backbone` turns what a user passes as ``--model`` (or to the Python examples) into something
``from_pretrained`` loads: a packaged backbone's folder, the cached Hugging Face conversion of a ``.gguf`` file, or
the path or hub name as given. Nothing in the core imports this package; it sits beside the training layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cache import CACHE_ENV, BackboneError, BackboneNotInstalledError, cache_root, file_sha256
from .gguf import conversion_record, convert_gguf, is_gguf_file
from .packaged import PACKAGED, PackagedBackbone, install, packaged_path

__all__ = ["CACHE_ENV", "PACKAGED", "BackboneError", "BackboneNotInstalledError", "PackagedBackbone", "cache_root",
           "conversion_record", "convert_gguf", "file_sha256", "install", "is_gguf_file", "packaged_path",
           "resolve_backbone"]

# (resolved path, size, mtime) -> converted folder: a run resolves its model several times, and hashing a GGUF
# file (hundreds of MB) each time would be wasted; any change to the file changes the key.
_RESOLVED_GGUF: dict[tuple[str, int, int], Path] = {}


def resolve_backbone(model: str | os.PathLike) -> str:
    """What ``from_pretrained`` should load for ``model``.

    - a packaged backbone's name (see :data:`PACKAGED`): its folder, prepared on first use from its installed
      packages; :class:`BackboneNotInstalledError` naming ``adaprefix install NAME`` if they are not installed;
    - a path to a ``.gguf`` file: its Hugging Face conversion, made once and cached (:func:`convert_gguf`);
    - anything else (a local folder, a hub name): returned as it is.
    """
    name = str(model)
    if name in PACKAGED:
        return str(packaged_path(name))
    if is_gguf_file(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise BackboneError(f"{path}: no such GGUF file")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _RESOLVED_GGUF or not _RESOLVED_GGUF[key].is_dir():
            _RESOLVED_GGUF[key] = convert_gguf(path)
        return str(_RESOLVED_GGUF[key])
    return name
