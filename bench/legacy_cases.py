"""The legacy library's side of the benches; run only in bench/.venv-legacy.

Usage: python legacy_cases.py CASE JSON_PARAMS  ->  prints one JSON line of seconds per call.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nytorch as nyto  # noqa: E402  (the legacy library in this venv)
from _harness import compare  # noqa: E402

torch.set_num_threads(1)


class MLP(nyto.NytoModule):
    def __init__(self, sizes):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


def _sync(device):
    return torch.cuda.synchronize if str(device).startswith("cuda") else None


def blend(sizes, device="cpu"):
    torch.manual_seed(0)
    a = MLP(sizes).to(device)
    b = a.randn()
    pa, pb = a.product(), b.product()
    return compare(
        {
            "legacy ParamProduct op": lambda: 0.5 * pa + 0.5 * pb,
            "legacy module op": lambda: 0.5 * a + 0.5 * b,
        },
        sync=_sync(device),
    )


def blend_population(sizes, n, device="cpu"):
    torch.manual_seed(0)
    first = MLP(sizes).to(device)
    members = [first] + [first.randn() for _ in range(n - 1)]
    products = [m.product() for m in members]
    best = products[0]
    return compare(
        {"legacy loop of ParamProduct ops": lambda: [0.5 * p + 0.5 * best for p in products]}, sync=_sync(device)
    )


def main() -> None:
    case, params = sys.argv[1], json.loads(sys.argv[2])
    result = {"blend": blend, "blend_population": blend_population}[case](**params)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
