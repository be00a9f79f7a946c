"""Which optional extras (pyproject.toml) are installed: the command line names a missing one instead of crashing."""

from __future__ import annotations

import importlib.util


def missing_distributions(modules: dict[str, str]) -> list[str]:
    """The distributions among ``{import name: distribution}`` whose module cannot be found here."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return [dist for module, dist in modules.items() if not found(module)]
