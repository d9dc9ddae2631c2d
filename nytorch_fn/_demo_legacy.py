"""The demo's algorithm written as legacy nytorch users write it: a Python loop of modules.

Used by ``python -m nytorch_fn.demo --compare-legacy``. It runs on the
``nytorch`` API (this distribution's drop-in compat layer; the original
library behaves the same way here), one ``NytoModule`` and one
``torch.optim.Adam`` per member, particle operations for the blend, and is
timed against the vectorised ``Hybrid`` run for the same number of steps.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _legacy_net(hidden: int) -> Any:
    import nytorch as nyto

    class MLP(nyto.NytoModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return MLP


def legacy_loop(args: argparse.Namespace, data: dict[str, torch.Tensor], steps: int) -> float:
    """Seconds for ``steps`` hybrid steps as a loop of modules (same hyperparameters)."""
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    MLP = _legacy_net(args.hidden)
    first = MLP()
    members = [first] + [first.clone() for _ in range(args.population - 1)]
    for m in members[1:]:
        for sub in m.modules():
            if isinstance(sub, nn.Linear):
                sub.reset_parameters()
    optimisers = [torch.optim.Adam(m.parameters(), lr=args.lr) for m in members]
    x, y = data["x_train"], data["y_train"]
    subset = max(1, int(args.subset * args.population))
    start = time.perf_counter()
    val = torch.zeros(args.population)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(y), (args.population, args.batch_size), generator=g)
        for i, (m, opt) in enumerate(zip(members, optimisers)):
            opt.zero_grad()
            F.cross_entropy(m(x[idx[i]]), y[idx[i]]).backward()
            opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                val = torch.tensor(
                    [float((m(data["x_val"]).argmax(-1) == data["y_val"]).float().mean()) for m in members]
                )
            best = members[int(torch.argmax(val))]
            for i in torch.randperm(args.population, generator=g)[:subset].tolist():
                blended = args.alpha * best + (1 - args.alpha) * members[i]
                with torch.no_grad():
                    for old, new in zip(members[i].parameters(), blended.parameters()):
                        old.copy_(new)
    return time.perf_counter() - start


def compare_legacy(args: argparse.Namespace, data: dict[str, torch.Tensor], ours_seconds: float) -> dict[str, Any]:
    steps = min(args.steps, 100)
    legacy_seconds = legacy_loop(args, data, steps)
    ours_per_step = ours_seconds / args.steps
    legacy_per_step = legacy_seconds / steps
    print(
        f"\nside by side, {args.population} members, per step:\n"
        f"  nytorch_fn (one vmap of grad + fused blend)   {ours_per_step * 1e3:8.2f} ms\n"
        f"  nytorch loop of modules ({steps} steps)         {legacy_per_step * 1e3:8.2f} ms\n"
        f"  speedup                                       {legacy_per_step / ours_per_step:8.1f}x"
    )
    return {
        "legacy_loop_ms_per_step": round(legacy_per_step * 1e3, 3),
        "nytorch_fn_ms_per_step": round(ours_per_step * 1e3, 3),
        "speedup": round(legacy_per_step / ours_per_step, 2),
    }
