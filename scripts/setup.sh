#!/usr/bin/env bash
# Set up ./.venv for abd: torch 2.13.0 first, then abd (editable) with its dev tools.
# Idempotent and quiet: a second run only checks that nothing changed. PYTHON picks the interpreter,
# EXTRAS the optional extras (default: dev; the CI adds ray).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
EXTRAS="${EXTRAS:-dev}"
STAMP=.venv/.abd-setup

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv .venv
fi

want="torch==${TORCH_VERSION} [${EXTRAS}] $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python -c "import abd, torch" 2>/dev/null; then
    exit 0  # already set up for this pyproject.toml
fi

echo "setup: installing torch==${TORCH_VERSION}, then abd[${EXTRAS}] (editable)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
echo "$want" > "$STAMP"
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
