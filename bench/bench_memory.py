"""RSS over 10,000 particle operations (the figure reported for issue 6).

Run: ``python bench/bench_memory.py``. Prints RSS after a warm-up and after
every 2,000 operations; a leak would show as steady growth.
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn

import nytorch_fn as nf


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(ops: int = 10_000) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
    p = nf.particle(net)
    q = p.randn(generator=torch.Generator().manual_seed(1))
    pop = nf.stack([p, q, p * 2, q * 2])
    x = torch.randn(8, 64)
    for _ in range(1_000):  # warm-up
        p = 0.5 * p + 0.5 * q
    gc.collect()
    start = rss_mib()
    print(f"after warm-up: {start:.1f} MiB")
    for i in range(1, ops + 1):
        k = i % 5
        if k == 0:
            p = 0.9 * p + 0.1 * q
        elif k == 1:
            p = (p - q) * 0.5 + q
        elif k == 2:
            p = p.map(lambda t, cfg: t * 0.999)
        elif k == 3:
            pop = 0.5 * pop + 0.5 * p
        else:
            nf.apply(p, x)
        if i % 2_000 == 0:
            print(f"after {i:>6} operations: {rss_mib():.1f} MiB")
    gc.collect()
    end = rss_mib()
    print(f"growth over {ops} operations: {end - start:+.2f} MiB")


if __name__ == "__main__":
    main()
