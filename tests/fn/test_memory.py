"""Memory: no reference cycles in core objects, and RSS stays flat over many particle operations.

The measured figure comes from ``bench/bench_memory.py``; the suite keeps a
looser assertion.
"""

from __future__ import annotations

import gc
import weakref

import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import optim
from tests.helpers import mlp


def _work() -> list[weakref.ref]:
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2))
    p = nf.particle(net)
    q = p.randn(generator=torch.Generator().manual_seed(0))
    r = 0.5 * p + 0.5 * q - 2 * (p * q) ** 2 / 3
    r = r.map(lambda t, cfg: t + 1).zip_with(q, lambda a, b, cfg: a - b)
    s2 = p.species.add_param("3.scale", torch.ones(2)).with_config("0", operational=False, tags={"w": 1})
    s3 = s2.add_module("extra", nn.Linear(2, 2)).add_buffer("extra.b", torch.zeros(2)).remove("extra")
    m = nf.migrate(r, s3)
    pop = nf.stack([m, m * 2, m.rand()])
    x = torch.randn(5, 4)
    nf.apply(m, x)
    nf.apply_with_buffers(m, None, (x,), training=True)
    nf.vmap_apply(pop, x)
    nf.best(pop, torch.tensor([1.0, 3.0, 2.0]))
    nf.mean(pop)
    nf.unstack(pop)
    nf.to_module(m)
    opt = optim.adam(0.1)
    state = opt.init(pop)
    updates, state = opt.update(pop * 0.1, state, pop)
    optim.apply_updates(pop.clone(), updates, donate=True)
    nf.lerp(pop.clone(), m, 0.5, donate=True)
    g = torch.func.grad(lambda w: nf.apply(w, x).pow(2).mean())(nf.particle(mlp(0)))
    return [weakref.ref(o) for o in (p, q, r, m, pop, g, p.species, s2, s3, state.mu, g.species)]


def test_core_objects_create_no_reference_cycles() -> None:
    """With the cycle collector off, every core object dies when its last reference goes.

    The first call warms torch's lazy imports and caches (which do create
    cycles, once). ``torch.func`` / ``torch.utils._pytree`` still leave a few
    of their own cycles on every call (recursive ``tree_flatten`` helper
    closures); the collector may find those, but never one of our objects.
    """
    _work()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        refs = _work()
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"freed only by the cycle collector: {alive}"
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith(("nytorch_fn", "nytorch"))]
        assert not ours, f"core objects in reference cycles: {ours[:5]}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


def test_rss_stays_flat_over_many_particle_operations() -> None:
    p = nf.particle(mlp(0, sizes=(32, 64, 32)))
    q = p.randn(generator=torch.Generator().manual_seed(0))
    x = p
    for _ in range(500):  # warm-up: allocator pools, caches
        x = 0.5 * x + 0.5 * q
    before = _rss_bytes()
    for i in range(5000):
        x = 0.9 * x + 0.1 * q
        x = (x - q) * 0.5 + q
        if i % 1000 == 0:
            x = x.clone()
    after = _rss_bytes()
    assert after - before < 16 * 2**20, f"RSS grew by {(after - before) / 2**20:.1f} MiB over 10,000 operations"
