"""Start ``R`` gloo worker processes on the loopback interface, with hard timeouts.

Each worker runs ``python -m tests.distributed._worker SUITE OUTDIR`` with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR=127.0.0.1``/``MASTER_PORT`` set (a free
port on 127.0.0.1), warnings turned into errors, one thread, and a different
``PYTHONHASHSEED`` per rank (results must not depend on it). Nothing binds
to any address but 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    def __init__(self, results: list[Any], logs: list[str], codes: list[int | None], wall: float) -> None:
        self.results, self.logs, self.codes, self.wall = results, logs, codes, wall

    def describe(self) -> str:
        return "\n".join(f"--- rank {r} exit {c}\n{log[-3000:]}" for r, (c, log) in enumerate(zip(self.codes, self.logs)))

    def ok(self) -> "Run":
        errors = [r.get("__error__") for r in self.results if isinstance(r, dict) and "__error__" in r]
        if any(c != 0 for c in self.codes) or errors or any(r is None for r in self.results):
            raise AssertionError(f"distributed run failed:\n{self.describe()}")
        return self


def launch(suite: str, ranks: int, outdir: Path, *, timeout: float = 60.0, stop_after: int | None = None,
           extra: tuple[str, ...] = ()) -> Run:
    """Run ``suite`` on ``ranks`` processes; kill everything at ``timeout`` seconds.

    ``stop_after``: once that rank has exited, the others get 2 s and are then killed
    (for a rank that hangs on purpose).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    start = time.monotonic()
    for r in range(ranks):
        env = dict(os.environ)
        env.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r),
            WORLD_SIZE=str(ranks), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
            PYTHONHASHSEED=str(r + 1), PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        log = open(outdir / f"rank{r}.log", "w+")
        logs.append(log)
        cmd = [sys.executable, "-W", "error", "-W", "ignore:Failed to initialize NumPy:UserWarning",
               "-m", "tests.distributed._worker", suite, str(outdir), *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = start + timeout
    stop_at = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if stop_after is not None and stop_at is None and procs[stop_after].poll() is not None:
                stop_at = now + 2.0
            if now > deadline or (stop_at is not None and now > stop_at):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(timeout=10)
    wall = time.monotonic() - start
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    results = []
    for r in range(ranks):
        f = outdir / f"rank{r}.pt"
        results.append(torch.load(f, weights_only=True) if f.exists() else None)
    return Run(results, texts, [p.returncode for p in procs], wall)
