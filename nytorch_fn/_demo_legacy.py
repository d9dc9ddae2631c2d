"""The demo's PBT written as legacy nytorch users write it: a Python loop of modules.

Used by ``python -m nytorch_fn.demo --compare-legacy``. It runs on the
``nytorch`` API (this distribution's drop-in compat layer; the original
library behaves the same way here): one ``NytoModule`` and one
``torch.optim.Adam`` (its own ``lr`` and ``weight_decay``) per member, and
every ``every`` steps the exploit and explore of PBT (the worst members take
a copy of a better one's weights and optimiser state, then perturb its
hyperparameters). It is timed against the vectorised PBT run for the same
number of steps.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def _legacy_net(hidden: int) -> Any:
    import nytorch as nyto  # type: ignore[import-untyped]  # the compat package ships no py.typed

    class MLP(nyto.NytoModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    return MLP


def legacy_loop(args: argparse.Namespace, data: dict[str, torch.Tensor], steps: int) -> float:
    """Seconds for ``steps`` PBT steps as a loop of modules (the demo's hyperparameters and schedule)."""
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    MLP = _legacy_net(args.hidden)
    first = MLP()
    members = [first] + [first.clone() for _ in range(args.population - 1)]
    for m in members[1:]:
        for sub in m.modules():
            if isinstance(sub, nn.Linear):
                sub.reset_parameters()

    def log_uniform(low: float, high: float) -> list[float]:
        u = torch.rand(args.population, generator=g, dtype=torch.float64)
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low))).tolist()

    lrs, wds = log_uniform(*args.lr_range), log_uniform(*args.wd_range)
    optimisers = [torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd) for m, lr, wd in zip(members, lrs, wds)]
    x, y = data["x_train"], data["y_train"]
    n = args.population
    k = max(1, int(args.fraction * n))
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(y), (n, args.batch_size), generator=g)
        for i, (m, opt) in enumerate(zip(members, optimisers)):
            opt.zero_grad()
            F.cross_entropy(m(x[idx[i]]), y[idx[i]]).backward()
            opt.step()
        if step % args.every == 0 and step < steps:
            with torch.no_grad():
                val = torch.tensor([float(F.cross_entropy(m(data["x_val"]), data["y_val"])) for m in members])
            order = torch.argsort(val)  # lowest validation cross-entropy first
            top, bottom = order[:k].tolist(), order[n - k:].tolist()
            for i in bottom:
                donor = top[int(torch.randint(0, k, (), generator=g))]
                members[i] = members[i].clone_from(members[donor])
                state = copy.deepcopy(optimisers[donor].state_dict())
                optimisers[i] = torch.optim.Adam(members[i].parameters(), lr=1.0)
                optimisers[i].load_state_dict(state)
                group = optimisers[i].param_groups[0]
                for name, (low, high) in (("lr", args.lr_range), ("weight_decay", args.wd_range)):
                    factor = (0.8, 1.25)[int(torch.randint(0, 2, (), generator=g))]
                    group[name] = min(max(group[name] * factor, low), high)
    return time.perf_counter() - start


def compare_legacy(args: argparse.Namespace, data: dict[str, torch.Tensor], ours_seconds: float) -> dict[str, Any]:
    """Time the legacy loop for up to 100 steps and print it beside the vectorised PBT run's time per step.

    Args:
        args: the demo's options.
        data: the demo's splits.
        ours_seconds: the vectorised PBT run's seconds for ``args.steps`` steps
            (training, evaluation, exploit and explore).

    Returns:
        ``legacy_loop_ms_per_step``, ``nytorch_fn_ms_per_step`` and ``speedup`` for ``summary.json``.
    """
    steps = min(args.steps, 100)
    legacy_seconds = legacy_loop(args, data, steps)
    ours_per_step = ours_seconds / args.steps
    legacy_per_step = legacy_seconds / steps
    print(
        f"\nside by side, the PBT step of {args.population} members (train, and every {args.every} steps "
        f"evaluate + exploit + explore):\n"
        f"  nytorch_fn (one vmap of grad + Adam for all)  {ours_per_step * 1e3:8.2f} ms\n"
        f"  nytorch loop of modules ({steps} steps)         {legacy_per_step * 1e3:8.2f} ms\n"
        f"  speedup                                       {legacy_per_step / ours_per_step:8.1f}x"
    )
    return {
        "legacy_loop_ms_per_step": round(legacy_per_step * 1e3, 3),
        "nytorch_fn_ms_per_step": round(ours_per_step * 1e3, 3),
        "speedup": round(legacy_per_step / ours_per_step, 2),
    }
