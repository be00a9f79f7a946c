"""The core's import graph: no module of the core imports another in a circle, and none imports the layers above it.

Read from the source (imports inside functions included), since at run time ``import adaprefix.x`` always runs the
package's ``__init__`` first, which imports every core module and would hide a circle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaprefix"
ABOVE_THE_CORE = ("adaprefix.tasks", "adaprefix.training", "adaprefix.cli", "adaprefix.analysis", "adaprefix.serve",
                  "adaprefix.backbones", "adaprefix.__main__")  # __main__: the console script, starts the command line


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


CORE = {_module_name(p): p for p in [*PACKAGE.glob("*.py"), *PACKAGE.glob("arch/*.py")]
        if _module_name(p) not in ABOVE_THE_CORE and _module_name(p) != "adaprefix"}


def _imports(name: str, path: Path) -> set[str]:
    """Every adaprefix module ``name`` imports, as absolute names (``from . import x`` counts as importing ``.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "adaprefix" or m.startswith("adaprefix.")}


GRAPH = {name: _imports(name, path) for name, path in CORE.items()}


def test_the_core_is_every_top_level_module_and_arch():
    assert {"adaprefix.adapter", "adaprefix.inject", "adaprefix.persistence", "adaprefix.files",
            "adaprefix.arch", "adaprefix.arch.deberta"} <= set(CORE)


@pytest.mark.parametrize("name", sorted(CORE))
def test_no_core_module_imports_the_layers_above_it(name):
    assert not [m for m in GRAPH[name] if m.startswith(ABOVE_THE_CORE)]


def _circles(modules: dict[str, Path], face: str) -> list[str]:
    """Edges ``a -> b`` of ``modules`` where ``b`` leads back to ``a``, through any others; ``face`` (the package's
    ``__init__``, which imports everything as the public face) is left out."""
    edges = {n: {m for m in _imports(n, p) if m in modules and m not in (n, face)} for n, p in modules.items()}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for n in edges[todo.pop()] - seen:
                seen.add(n)
                todo.append(n)
        return seen

    return sorted(f"{a} -> {b}" for a in modules for b in edges[a] if a in reachable(b))


def test_no_two_core_modules_import_each_other_even_through_others():
    # persistence reads __version__ from the package itself when it reports a format mismatch.
    assert _circles(CORE, "adaprefix") == []


TASKS = {_module_name(p): p for p in PACKAGE.glob("tasks/**/*.py")}


def test_no_two_task_modules_import_each_other_and_none_reads_anothers_private_names():
    assert _circles(TASKS, "adaprefix.tasks") == []
    private = sorted(f"{name}: {m}" for name, path in TASKS.items() for m in _imports(name, path)
                     if m.rpartition(".")[2].startswith("_") and not m.endswith("__init__"))
    assert private == []
