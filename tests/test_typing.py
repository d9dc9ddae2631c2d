"""The type check: mypy over nytorch_fn, with the configuration in pyproject.toml, reports nothing.

Why mypy and not pyright: docs/development.md (mypy is a pure pip package;
pyright's pip wrapper downloads a Node.js runtime on first use, which a
machine without internet access cannot do).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (it is in the dev extra: pip install -e '.[dev]')",
)
def test_mypy_reports_no_errors() -> None:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],  # files and options: [tool.mypy] in pyproject.toml
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mypy found errors:\n{output}"
    assert "Success: no issues found" in result.stdout, output
    print(f"\nmypy: {result.stdout.strip()} in {seconds:.1f} s")
