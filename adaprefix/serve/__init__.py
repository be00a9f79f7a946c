"""``adaprefix serve``: one backbone, many adapters, one HTTP server (FastAPI + uvicorn, the ``serve`` extra).

:mod:`.engine` loads run folders and runs batches, :mod:`.batching` gathers concurrent requests into them, and
:mod:`.app` is the HTTP layer. This module imports none of them, so that the command line can say what to install
when fastapi or uvicorn is missing instead of failing inside an import.
"""

from __future__ import annotations

import importlib.util

# Import name -> distribution: the "serve" extra of pyproject.toml (tests/test_packaging.py keeps the two in step).
SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn"}
INSTALL = 'pip install "adaprefix[serve]"'


def missing_serve_modules() -> list[str]:
    """The distributions of the ``serve`` extra that cannot be imported here."""
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return [dist for module, dist in SERVE_MODULES.items() if not found(module)]
