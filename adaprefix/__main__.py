"""The ``adaprefix`` console script and ``python -m adaprefix``: the command line, or a clear word on what to install.

The library needs only torch, transformers and safetensors; the command line and training need the ``train`` extra.
This checks for it before importing the command line, so a light install says what to install instead of failing
deep inside an import.
"""

from __future__ import annotations

import sys

from .extras import missing_distributions

# Import name -> distribution: the "train" extra of pyproject.toml (tests/test_packaging.py keeps the two in step).
TRAIN_MODULES = {"accelerate": "accelerate", "datasets": "datasets", "seqeval": "seqeval", "typer": "typer",
                 "rich": "rich", "yaml": "pyyaml", "tensorboard": "tensorboard", "numpy": "numpy"}
INSTALL = 'pip install "adaprefix[train]"'


def missing_train_modules() -> list[str]:
    """The distributions of the ``train`` extra that cannot be imported here."""
    return missing_distributions(TRAIN_MODULES)


def main() -> None:
    missing = missing_train_modules()
    if missing:
        print(f"error: adaprefix's command line needs the training extra; not installed here: {', '.join(missing)}.\n"
              f"Install it with: {INSTALL}", file=sys.stderr)
        raise SystemExit(2)
    from .cli import app

    app()


if __name__ == "__main__":
    main()
