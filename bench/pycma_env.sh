#!/usr/bin/env bash
# Builds bench/.venv-pycma: pycma (`cma` on PyPI, the reference CMA-ES by
# N. Hansen) beside the same torch, in its own environment, for
# bench/bench_cma.py's side-by-side runs. Never a dependency of the project.
# torch==2.13.0 goes first so that pip takes the CPU build already on disk.
# Idempotent; prints the venv's python.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-pycma"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import cma, torch" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet torch==2.13.0
    "$venv/bin/python" -m pip install --quiet "cma==4.5.0" numpy
fi
echo "$venv/bin/python"
