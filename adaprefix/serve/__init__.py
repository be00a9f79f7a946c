"""``adaprefix serve``: one backbone, many adapters, one HTTP server (FastAPI + uvicorn, the ``serve`` extra).

:mod:`.engine` loads run folders and runs batches, :mod:`.batching` gathers concurrent requests into them, and
:mod:`.app` is the HTTP layer. This module imports none of them, so that the command line can say what to install
when fastapi or uvicorn is missing instead of failing inside an import.
"""

from __future__ import annotations

from ..extras import missing_distributions

# Import name -> distribution: the "serve" extra of pyproject.toml (tests/test_packaging.py keeps the two in step).
SERVE_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "fastapi_offline": "fastapi-offline"}
INSTALL = 'pip install "adaprefix[serve]"'


def missing_serve_modules() -> list[str]:
    """The distributions of the ``serve`` extra that cannot be imported here."""
    return missing_distributions(SERVE_MODULES)
