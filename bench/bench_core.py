"""Issue 2 figures: particle arithmetic vs the raw foreach floor, species edits, capture/apply/to_module.

Run: python bench/run.py core   (CPU, 1 thread; legacy figures from bench/.venv-legacy)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import nytorch_fn as nf
from _harness import compare, legacy, table

SIZES = [784, 256, 256, 10]


def mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def blend(device: str = "cpu") -> dict:
    torch.manual_seed(0)
    module = mlp(SIZES).to(device)
    p = nf.particle(module)
    q = p.randn()
    P, Q = list(p.tensors), list(q.tensors)

    def floor():
        r = torch._foreach_mul(P, 0.5)
        torch._foreach_add_(r, Q, alpha=0.5)
        return r

    t = compare(
        {
            "raw floor (_foreach_mul + _foreach_add_)": floor,
            "nytorch_fn 0.5 * p + 0.5 * q": lambda: (0.5 * p + 0.5 * q).tensors,
            "nytorch_fn 0.3 * p + 0.6 * q": lambda: (0.3 * p + 0.6 * q).tensors,
            "nytorch_fn p - 0.01 * q": lambda: (p - 0.01 * q).tensors,
        },
        sync=torch.cuda.synchronize if device.startswith("cuda") else None,
    )
    old = legacy("blend", sizes=SIZES, device=device) or {}
    rows = list(t.items()) + list(old.items())
    n = sum(x.numel() for x in p.tensors)
    table(f"blend on a {n:,}-parameter MLP {SIZES}", rows, "raw floor (_foreach_mul + _foreach_add_)")
    return {"ours/floor": t["nytorch_fn 0.5 * p + 0.5 * q"] / t["raw floor (_foreach_mul + _foreach_add_)"]}


class Wide(nn.Module):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2, bias=False) for _ in range(count))


def edits() -> dict:
    small = nf.particle(Wide(10)).species
    large = nf.particle(Wide(1000)).species
    assert len(small.names) == 10 and len(large.names) == 1000
    value = torch.ones(3)
    t = compare(
        {
            "add_param, 10 tensors": lambda: small.add_param("layers.5.extra", value),
            "add_param, 1000 tensors": lambda: large.add_param("layers.500.extra", value),
            "remove, 10 tensors": lambda: small.remove("layers.5.weight"),
            "remove, 1000 tensors": lambda: large.remove("layers.500.weight"),
            "with_config one param, 10 tensors": lambda: small.with_config("layers.5.weight", operational=False),
            "with_config one param, 1000 tensors": lambda: large.with_config("layers.500.weight", operational=False),
        }
    )
    table("species edits (structure sharing: cost should not grow with the model)", list(t.items()), "add_param, 10 tensors")
    return {
        "add_param 1000/10": t["add_param, 1000 tensors"] / t["add_param, 10 tensors"],
        "remove 1000/10": t["remove, 1000 tensors"] / t["remove, 10 tensors"],
    }


def boundary() -> dict:
    torch.manual_seed(0)
    module = mlp(SIZES)
    p = nf.particle(module)
    x = torch.randn(64, SIZES[0])
    with torch.no_grad():
        t = compare(
            {
                "copy.deepcopy(module)": lambda: copy.deepcopy(module),
                "nf.particle(module)": lambda: nf.particle(module),
                "nf.to_module(p)": lambda: nf.to_module(p),
                "module(x), batch 64": lambda: module(x),
                "nf.apply(p, x), batch 64": lambda: nf.apply(p, x),
            }
        )
    table("capture / forward / back to a module", list(t.items()), "copy.deepcopy(module)")
    return {"apply/forward": t["nf.apply(p, x), batch 64"] / t["module(x), batch 64"]}


def main() -> dict:
    results = {}
    results.update(blend())
    results.update(edits())
    results.update(boundary())
    return results
