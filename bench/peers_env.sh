#!/usr/bin/env bash
# Builds the peer libraries' venvs for bench/bench_algorithms.py, each in its own
# environment (never in the project's dependencies): bench/.venv-evosax (JAX CPU +
# evosax), bench/.venv-evotorch and bench/.venv-evox (each beside the same torch
# 2.13.0 CPU build as ours, installed first so nothing pulls a CUDA build).
# Idempotent; prints the three interpreters.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build() {  # name, import check, packages...
    local name="$1" check="$2"; shift 2
    local venv="$here/.venv-$name"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$check" 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet "$@"
    fi
    echo "$venv/bin/python"
}
build evosax "import evosax, jax" "jax[cpu]==0.10.2" "evosax==0.3.2" "scikit-learn>=1.3"
build evotorch "import evotorch, torch" "torch==2.13.0" "evotorch==0.6.1" "scikit-learn>=1.3"
build evox "import evox, torch" "torch==2.13.0" "evox==1.4.0" "scikit-learn>=1.3"
