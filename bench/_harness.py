"""Timing helpers shared by the benches (pure Python + torch, so the legacy venv can import it too).

Candidates are timed round-robin (each repeat times every candidate once),
so a burst of load on this shared machine hits all of them alike; the
figure per candidate is the minimum over repeats of the mean per call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def calls_for(fn: Callable[[], object], budget: float = 0.05, sync: Callable[[], object] | None = None) -> int:
    """How many calls fit in about ``budget`` seconds (at least 1)."""
    sync = sync or (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(budget / once))


def compare(
    cases: dict[str, Callable[[], object]],
    *,
    repeat: int = 7,
    budget: float = 0.05,
    threads: dict[str, int] | None = None,
    sync: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Seconds per call of each case, measured side by side.

    ``threads`` gives a case its own torch thread count (default: the
    current one), set before each of its timed batches. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs after each batch, inside the timing.
    """
    import torch

    default = torch.get_num_threads()
    threads = threads or {}
    numbers = {}
    for name, fn in cases.items():
        torch.set_num_threads(threads.get(name, default))
        numbers[name] = calls_for(fn, budget, sync)
    best = {name: float("inf") for name in cases}
    for _ in range(repeat):
        for name, fn in cases.items():
            torch.set_num_threads(threads.get(name, default))
            n = numbers[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            if sync is not None:
                sync()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    torch.set_num_threads(default)
    return best


def legacy(case: str, **params: object) -> dict[str, float] | None:
    """Run ``bench/legacy_cases.py CASE`` in the legacy nytorch venv; None if it is unavailable.

    ``NYTORCH_LEGACY_PYTHON`` names another interpreter that has the legacy
    library (the GPU machine puts it on that interpreter's path instead).
    """
    python = Path(os.environ.get("NYTORCH_LEGACY_PYTHON", HERE / ".venv-legacy" / "bin" / "python"))
    if not python.exists():
        setup = subprocess.run(["bash", str(HERE / "legacy_env.sh")], capture_output=True, text=True)
        if setup.returncode != 0:
            print(f"  (legacy nytorch unavailable: {setup.stderr.strip()[-200:]})", file=sys.stderr)
            return None
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(python), str(HERE / "legacy_cases.py"), case, json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        print(f"  (legacy case {case} failed: {proc.stderr.strip()[-400:]})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mlp(sizes):
    """``nn.Sequential`` of Linear layers with ReLU between them (the benches' standard network)."""
    from torch import nn

    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:8.3f} s "
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.3f} ms"
    return f"{seconds * 1e6:8.1f} us"


def table(title: str, rows: list[tuple[str, float]], base: str) -> None:
    """Print times and ratios to the row named ``base``."""
    print(f"\n{title}")
    ref = dict(rows)[base]
    for name, t in rows:
        print(f"  {name:<44} {fmt(t)}   {t / ref:7.2f}x {base}")


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
