"""What the compat layer promises under threads: particle operations that only read their
operands may run concurrently (docs/guides/migrating.md); edits are not covered."""

from __future__ import annotations

import threading

import torch
from torch import nn

import nytorch as nyto


class Net(nyto.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.l2 = nn.Linear(5, 2)


def _program(a: Net, b: Net, k: int) -> list[torch.Tensor]:
    out = 0.25 * a + 0.75 * b
    out = out * (k + 1) - b
    prod = (a.product() * 2.0 + b.product()).module()
    return [p.detach().clone() for p in list(out.parameters()) + list(prod.parameters())]


def test_particle_operations_from_4_threads_equal_the_sequential_results():
    torch.manual_seed(0)
    a = Net()
    b = a.randn()
    before = [p.detach().clone() for p in list(a.parameters()) + list(b.parameters())]
    expected = {k: _program(a, b, k) for k in range(8)}
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []

    def worker(ks: range) -> None:
        try:
            for _ in range(10):
                for k in ks:
                    results[k] = _program(a, b, k)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(range(i, 8, 4),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    for k, tensors in expected.items():
        assert all(torch.equal(x, y) for x, y in zip(results[k], tensors)), k
    after = list(a.parameters()) + list(b.parameters())
    assert all(torch.equal(x, y) for x, y in zip(after, before))
