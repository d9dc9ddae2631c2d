"""The legacy library's own test suite (182 tests, unchanged) passes against the installed ``nytorch``.

The suite lives beside the repository, in ``../shared/legacy/tests``
(BSD-2-Clause, its licence beside it). It is copied to a temporary folder
and run there by pytest in a subprocess with this interpreter, so it
imports the installed drop-in ``nytorch`` and none of this project's
pytest configuration. Where ``../shared`` is absent (a checkout without it)
the test is skipped and says so; CI has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO.parent / "shared" / "legacy" / "tests"
EXPECTED = 182


def _counts(summary: str) -> dict[str, int]:
    """``{"passed": 182, "warnings": 3}`` from pytest's last line (``182 passed, 3 warnings in 3.72s``)."""
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", summary.split(" in ")[0])}


def test_the_legacy_suite_passes_in_full(tmp_path: Path) -> None:
    if not SUITE.is_dir():
        pytest.skip(f"the legacy suite is not here: {SUITE} is absent (it ships in ../shared beside the repository)")
    shutil.copytree(SUITE, tmp_path / "tests")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = _counts(summary)
    counts.pop("warnings", None)
    assert counts == {"passed": EXPECTED} and proc.returncode == 0, (
        f"expected {EXPECTED} passed and nothing else, got {summary!r}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    )


def test_the_summary_is_read_as_pytest_writes_it() -> None:
    assert _counts("182 passed in 3.72s") == {"passed": 182}
    assert _counts("3 failed, 179 passed, 2 warnings in 3.53s") == {"failed": 3, "passed": 179, "warnings": 2}
    assert _counts("1 error in 0.20s") == {"error": 1}
