#!/usr/bin/env bash
# Create .venv (Python 3.11) and install fedalign with its pinned dependencies.
# Idempotent: a second run only checks that the install is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import fedalign, flwr, torch, torchvision, pytest" >/dev/null 2>&1 \
   || ! cmp -s pyproject.toml .venv/.fedalign-installed-from 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  cp pyproject.toml .venv/.fedalign-installed-from
fi
