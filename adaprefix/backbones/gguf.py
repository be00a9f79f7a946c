"""GGUF checkpoints as Hugging Face folders: dequantised once, cached, reloaded in seconds afterwards.

transformers reads a ``.gguf`` file by dequantising every tensor (about 2 minutes for Gemma-3-270m on 2 CPU cores)
on each ``from_pretrained(..., gguf_file=...)``. Here that happens once: the model and its tokenizer are saved as
an ordinary folder (``config.json``, ``model.safetensors``, tokenizer files) under the adaprefix cache, keyed by the
GGUF file's sha256, so a renamed or moved copy of the same file reuses the folder and a changed file never does.

What the weights are: the GGUF file holds quantised tensors (Q4_K_M: 4 to 6 bits per weight in blocks with their
own scales). Dequantising expands them back to floats, but what was rounded away when the file was quantised stays
lost: the converted model is *not* the original checkpoint, and results obtained with it should say so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..files import atomic_replace_dir, current_umask
from .cache import BackboneError, cache_root, file_sha256

GGUF_SUFFIX = ".gguf"
CONVERSION_RECORD = "adaprefix_conversion.json"  # written last into a converted folder; its presence marks it whole
#: The dtype the dequantised weights are stored in. float32 keeps the dequantised values exactly as the GGUF reader
#: produced them (bf16 would round them a second time); it costs 4 bytes a weight (1.1 GB for Gemma-3-270m).
STORED_DTYPE = "float32"


def is_gguf_file(name: str | os.PathLike) -> bool:
    """Whether ``name`` names a GGUF checkpoint (by its suffix; the file itself is checked on conversion)."""
    return str(name).lower().endswith(GGUF_SUFFIX)


def converted_dir(gguf_path: str | os.PathLike, sha256: str) -> Path:
    """Where the conversion of the GGUF file with this sha256 lives (whether made yet or not)."""
    stem = Path(gguf_path).name[: -len(GGUF_SUFFIX)]
    return cache_root() / "gguf" / f"{stem}-{sha256[:16]}"


def _require_gguf_reader() -> None:
    try:
        import gguf  # noqa: F401  (transformers imports it by name while loading)
    except ModuleNotFoundError:
        raise BackboneError(
            "reading a .gguf checkpoint needs the `gguf` package: pip install 'adaprefix[gguf]' (or pip install gguf)"
        ) from None


def convert_gguf(gguf_path: str | os.PathLike, sha256: str | None = None, quiet: bool = False) -> Path:
    """The Hugging Face folder of a GGUF causal-LM checkpoint, converted on first use and cached.

    ``sha256``: the file's hash when the caller has just checked it (a packaged file), to skip hashing it again.
    Returns the folder, loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
    (and ``AutoModelForSequenceClassification`` for the same backbone with a new head).
    """
    path = Path(gguf_path).expanduser()
    if not is_gguf_file(path):
        raise BackboneError(f"{path}: not a GGUF file (expected a name ending in {GGUF_SUFFIX})")
    if not path.is_file():
        raise BackboneError(f"{path}: no such GGUF file")
    digest = sha256 or file_sha256(path)
    target = converted_dir(path, digest)
    if (target / CONVERSION_RECORD).is_file():
        return target
    _require_gguf_reader()
    if not quiet:
        print(f"adaprefix: converting {path.name} into {target} (once; dequantising takes a few minutes on a CPU)",
              flush=True)
    atomic_replace_dir(target, lambda folder: _convert_into(path, digest, folder))
    return target


def _convert_into(path: Path, digest: str, folder: Path) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=getattr(torch, STORED_DTYPE))
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as err:  # what transformers and the reader raise
        raise BackboneError(f"{path}: transformers could not load it as a GGUF causal language model "
                            f"({type(err).__name__}: {err})") from err
    seconds = time.time() - started
    # The loaded model still carries the GGUF quantizer, which refuses to serialise ("quantized ... not
    # serializable"); its tensors are already plain dequantised floats, so dropping it changes no weight.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    record = {
        "source": str(path.resolve()), "sha256": digest, "bytes": path.stat().st_size,
        "model_type": model.config.model_type, "dtype": STORED_DTYPE, "dequantise_seconds": round(seconds, 1),
        "transformers": transformers.__version__,
        "note": "dequantised from a quantised GGUF file: not the original checkpoint's weights",
    }
    (folder / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    for file in folder.iterdir():  # save_pretrained writes the weights 0600; a shared cache wants a plain file's mode
        if file.is_file():
            os.chmod(file, 0o666 & ~current_umask())


def conversion_record(folder: str | os.PathLike) -> dict | None:
    """What :func:`convert_gguf` recorded about a converted folder (source, sha256, timing); None for other folders."""
    file = Path(folder) / CONVERSION_RECORD
    return json.loads(file.read_text()) if file.is_file() else None
