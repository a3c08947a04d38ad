#!/usr/bin/env bash
# All set-up for a fresh machine: a Python 3.11 virtualenv in .venv with the pinned dependencies
# (requirements.lock, the `pip freeze` of pyproject.toml's pins) and mmreason installed editable.
# Idempotent: a rerun with unchanged pins does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"mmreason needs Python 3.11, found {sys.version.split()[0]}"'
stamp=.venv/.mmreason-setup
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import mmreason' 2>/dev/null; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e '.[dev]'
echo "$want" > "$stamp"
echo "[setup] .venv ready ($(.venv/bin/python -c 'import torch, transformers, open_clip, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, open_clip {open_clip.__version__}, lightning {lightning.__version__}")'))"
