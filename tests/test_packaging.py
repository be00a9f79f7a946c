"""The light install: `import adaprefix` and `adaprefix.attach` need torch, transformers and safetensors only; the
command line, training and plots are extras (pyproject.toml), and the console script names the one to install."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from adaprefix.__main__ import INSTALL, TRAIN_MODULES
from adaprefix.serve import INSTALL as SERVE_INSTALL, SERVE_MODULES

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Import names of the extras (train, plot, serve, gguf) and of the benchmarks' extra: the core loads none of them.
EXTRA_MODULES = ("typer", "rich", "datasets", "seqeval", "matplotlib", "tensorboard", "accelerate", "peft", "fastapi",
                 "uvicorn", "fastapi_offline", "gguf")

CORE_USE = """
import json, sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # as if not installed: importing it raises ModuleNotFoundError
import tempfile, torch, adaprefix
sys.path.insert(0, "tests")
from tiny_models import tiny_batch, tiny_model
model = adaprefix.attach(tiny_model("bert"), adaprefix.AdaptivePrefixConfig(method="apt", prefix_length=4))
ids, mask = tiny_batch()
out = model(input_ids=ids, attention_mask=mask).logits
with tempfile.TemporaryDirectory() as folder:
    adaprefix.save_adapter(model, folder)
    again = adaprefix.load_adapter(adaprefix.detach(model), folder)
    same = torch.allclose(again(input_ids=ids, attention_mask=mask).logits, out)
print(json.dumps({"same": same, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2].split(",")
                                                 and sys.modules[m] is not None)}))
"""


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()


def core_use(blocked: tuple[str, ...]) -> dict:
    done = subprocess.run([sys.executable, "-c", CORE_USE, ",".join(blocked), ",".join(EXTRA_MODULES)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_attach_save_and_load_work_with_every_extra_missing():
    result = core_use(EXTRA_MODULES)
    assert result == {"same": True, "loaded": []}


def test_attach_loads_no_extra_where_they_are_installed():
    # transformers itself imports accelerate when it is installed (its own integrations), so accelerate is left out
    # here; the test above shows adaprefix works without it.
    result = core_use(())
    assert result["same"]
    assert [m for m in result["loaded"] if m.split(".")[0] != "accelerate"] == []


def test_core_dependencies_are_torch_transformers_safetensors_and_the_rest_are_extras():
    project = PYPROJECT["project"]
    assert sorted(map(_name, project["dependencies"])) == ["safetensors", "torch", "transformers"]
    extras = project["optional-dependencies"]
    assert {"train", "plot", "serve", "gguf", "all", "test", "bench"} <= extras.keys()
    assert extras["all"] == ["adaprefix[train,plot,serve,gguf]"]
    # httpx: what fastapi's TestClient (the serve tests) runs on; the server itself needs the other two.
    assert sorted(map(_name, extras["serve"])) == sorted([*SERVE_MODULES.values(), "httpx"])
    assert list(map(_name, extras["gguf"])) == ["gguf"]
    assert "adaprefix[docs]" in extras["test"]  # tests/test_docs.py builds the documentation site
    assert sorted(map(_name, extras["docs"])) == ["mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python"]
    assert "adaprefix[all,bench]" in extras["test"]  # the suite runs the command line, training, plots and the LoRA dry run
    assert sorted(map(_name, extras["train"])) == sorted(TRAIN_MODULES.values())
    assert list(map(_name, extras["plot"])) == ["matplotlib"]
    assert project["scripts"]["adaprefix"] == "adaprefix.__main__:main"
    assert '-e ".[all,test]"' in (REPO / "setup.sh").read_text()  # setup.sh still installs everything


def test_console_script_without_the_train_extra_says_what_to_install():
    code = ("import sys\nfor m in ('datasets', 'tensorboard'): sys.modules[m] = None\n"
            "sys.argv = ['adaprefix', 'train']\nfrom adaprefix.__main__ import main\nmain()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert INSTALL == 'pip install "adaprefix[train]"' and INSTALL in done.stderr
    assert "datasets, tensorboard" in done.stderr and "Traceback" not in done.stderr


def test_serve_without_the_serve_extra_says_what_to_install(tmp_path):
    code = ("import sys\nfor m in ('fastapi', 'uvicorn'): sys.modules[m] = None\n"
            f"sys.argv = ['adaprefix', 'serve', {str(tmp_path)!r}]\nfrom adaprefix.__main__ import main\nmain()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert SERVE_INSTALL == 'pip install "adaprefix[serve]"' and SERVE_INSTALL in done.stderr
    assert "fastapi, uvicorn" in done.stderr and "Traceback" not in done.stderr


def test_console_script_with_the_extras_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "adaprefix", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout


def test_plotting_without_matplotlib_names_the_plot_extra(monkeypatch):
    from adaprefix.analysis.plotting import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "adaprefix\[plot\]"'):
        pyplot()
