#!/usr/bin/env bash
# Builds bench/.venv-legacy: the original nytorch 1.1.0 from PyPI beside the
# same torch, in its own environment (it has the same import name as our
# drop-in `nytorch`, so it must never share the test venv). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-legacy"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import nytorch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet torch==2.13.0
    "$venv/bin/python" -m pip install --quiet nytorch==1.1.0
fi
echo "$venv/bin/python"
