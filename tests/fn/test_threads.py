"""Particle and population operations from 4 threads on shared particles and species equal the sequential results."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import optim
from tests.helpers import Snapshot, tensor_equal


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)).eval()
    p = nf.particle(net)
    q = p.randn(generator=torch.Generator().manual_seed(1))
    pop = nf.stack([p, q, 0.5 * (p + q)])
    x = torch.randn(8, 4)
    return p, q, pop, x


def _job(i: int, p, q, pop, x):
    """A mix of arithmetic, forward passes, vmap, species edits, migration and an optimiser step."""
    a = (i + 1) * 0.1
    r = a * p + (1 - a) * q
    r = (r - q) ** 2 / 3 + r.map(lambda t, cfg: t.tanh())
    s2 = p.species.add_param(f"3.s{i}", torch.full((3,), float(i))).with_config("0", operational=False)
    m = nf.migrate(r, s2) * 2
    y = nf.apply(r, x)
    out, buffers = nf.apply_with_buffers(r, None, (x,), training=True)
    ys = nf.vmap_apply(pop * a, x)
    best = nf.best(pop, torch.tensor([a, 1.0, 0.5]))
    opt = optim.adam(0.01)
    state = opt.init(pop)
    g = torch.func.grad(lambda w: nf.apply(w, x).pow(2).mean())(r)
    updates, state = opt.update(pop * 0.1, state, pop)
    stepped = optim.apply_updates(pop, updates)
    return [*r.tensors, *m.tensors, y, out, *buffers.values(), ys, *best.tensors, *g.tensors, *stepped.tensors, state.count]


def test_four_threads_give_the_sequential_results() -> None:
    p, q, pop, x = _setup()
    snap = Snapshot(p, q, pop, x)
    jobs = list(range(16))
    sequential = [_job(i, p, q, pop, x) for i in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=4) as ex:
            threaded = list(ex.map(lambda i: _job(i, p, q, pop, x), jobs))
        for seq, thr in zip(sequential, threaded):
            assert len(seq) == len(thr)
            assert all(tensor_equal(a, b) for a, b in zip(seq, thr))
    assert snap.unchanged()


def test_threads_editing_one_species_build_independent_versions() -> None:
    p, _, _, _ = _setup()
    base = p.species

    def edit(i: int):
        s = base.add_param(f"0.extra{i}", torch.full((2,), float(i)))
        return s, nf.migrate(p, s)

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(edit, range(12)))
    assert p.species is base and base.names == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
    for i, (s, m) in enumerate(results):
        assert s.parent is base and s.names[-1] == f"0.extra{i}"
        assert torch.equal(m.params[f"0.extra{i}"], torch.full((2,), float(i)))
