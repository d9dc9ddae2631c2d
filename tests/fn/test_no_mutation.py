"""Hypothesis: random programs of public operations never modify any input (contents or identity)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch_fn as nf
from nytorch_fn import optim
from tests.helpers import Snapshot

X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))


def _base() -> nf.Particle:
    torch.manual_seed(0)
    return nf.particle(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)))


OPS = {
    "add": lambda a, b, k: a + b,
    "sub": lambda a, b, k: a - b,
    "mul": lambda a, b, k: a * b,
    "div": lambda a, b, k: a / (b * b + 1),
    "lincomb": lambda a, b, k: k * a + (1 - k) * b,
    "scalar": lambda a, b, k: (a * k - 1.5) / 2 + 0.5,
    "rpow": lambda a, b, k: 2 ** a,
    "neg": lambda a, b, k: -a,
    "map": lambda a, b, k: a.map(lambda t, cfg: t * k),
    "zip": lambda a, b, k: a.zip_with(b, lambda x, y, cfg: x - y),
    "clone": lambda a, b, k: a.clone(),
    "randn": lambda a, b, k: a.randn(generator=torch.Generator().manual_seed(int(k * 10))),
    "lerp": lambda a, b, k: nf.lerp(a, b, k),
    "lincomb_primitive": lambda a, b, k: nf.lincomb([k, 1 - k], [a, b]),
    "lerp_donating_a_copy": lambda a, b, k: nf.lerp(a.clone(), b, k, donate=True),
    "edit": lambda a, b, k: nf.migrate(a, a.species.add_param(f"3.p{int(k * 1000)}", torch.ones(2))) if f"3.p{int(k * 1000)}" not in a.species.names else a,
    "config": lambda a, b, k: nf.migrate(a, a.species.with_config("0", operational=k > 0.5)),
}
SINKS = {
    "apply": lambda p: nf.apply(p, X),
    "apply_with_buffers": lambda p: nf.apply_with_buffers(p, None, (X,), training=True),
    "to_module": lambda p: nf.to_module(p),
    "stack_vmap": lambda p: nf.vmap_apply(nf.stack([p, p]), X),
    "mean_best": lambda p: (nf.mean(nf.stack([p, p * 2])), nf.best(nf.stack([p, p]), torch.tensor([1.0, 2.0]))),
    "adam": lambda p: optim.adam(0.1).update(p, optim.adam(0.1).init(p), p),
    "grad": lambda p: torch.func.grad(lambda w: nf.apply(w, X).sum())(p),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    program=st.lists(
        st.tuples(st.sampled_from(sorted(OPS)), st.integers(0, 5), st.integers(0, 5), st.floats(0.1, 0.9)),
        min_size=1, max_size=8,
    ),
    sinks=st.lists(st.sampled_from(sorted(SINKS)), max_size=3),
)
def test_random_programs_never_modify_their_inputs(program, sinks) -> None:
    base = _base()
    values = [base, base.randn(generator=torch.Generator().manual_seed(1))]
    for name, i, j, k in program:
        a, b = values[i % len(values)], values[j % len(values)]
        snap = Snapshot(a, b, X)
        species_a, species_b = a.species, b.species
        try:
            out = OPS[name](a, b, k)
        except nf.SpeciesMismatchError:  # diverging branches of edits: refused, and still nothing modified
            out = None
        assert snap.unchanged(), f"{name} modified an input"
        assert a.species is species_a and b.species is species_b
        if out is not None:
            values.append(out)
    last = values[-1]
    for sink in sinks:
        snap = Snapshot(last, X, *values[:2])
        SINKS[sink](last)
        assert snap.unchanged(), f"{sink} modified an input"
