#!/usr/bin/env bash
# Builds bench/.venv-mergekit: mergekit 0.1.5 from PyPI beside the same torch,
# in its own environment (never the test venv: it pulls transformers,
# accelerate, pydantic ...). torch goes in first, pinned to the CPU build on
# this machine's disk, so mergekit's looser requirement does not pull a
# multi-GB CUDA build. Idempotent; prints the venv's python.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-mergekit"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import mergekit.merge_methods" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet torch==2.13.0
    "$venv/bin/python" -m pip install --quiet torch==2.13.0 mergekit==0.1.5
fi
echo "$venv/bin/python"
