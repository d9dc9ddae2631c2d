"""Issue 2 figures: species edits, capture/apply/to_module (particle arithmetic: bench_values.py).

Run: python bench/run.py core   (CPU, 1 thread; legacy figures from bench/.venv-legacy)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import nytorch_fn as nf
from _harness import compare, mlp, table

SIZES = [784, 256, 256, 10]


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
    results.update(edits())
    results.update(boundary())
    return results
