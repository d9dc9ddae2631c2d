"""PGPE (symmetric sampling) and optim.clipup: hand computations, convergence, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError, optim
from nytorch_fn.algorithms import PGPE, centered_ranks, identity
from tests.helpers import Snapshot


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear(value: float = 3.0, d: int = 2) -> nf.Particle:
    return nf.particle(nn.Linear(d, 1)).map(lambda t, cfg: torch.full_like(t, value))


def values(p: nf.Particle) -> torch.Tensor:
    n = p.population_size
    return torch.cat([t.double().reshape(-1) if n is None else t.double().reshape(n, -1) for t in p.tensors], -1)


def sphere(pop: nf.Particle) -> torch.Tensor:
    return (values(pop) ** 2).sum(1)


# -- clipup -------------------------------------------------------------------------------


def test_clipup_by_hand():
    sp = nf.particle(nn.Linear(2, 1)).species
    g = nf.Particle(sp, {"weight": torch.tensor([[3.0, 4.0]]), "bias": torch.tensor([0.0])})  # |g| = 5
    opt = optim.clipup(0.1, max_speed=0.15, momentum=0.9)
    state = opt.init(g)
    # step 1: v = 0.1 * g / 5 = (0.06, 0.08, 0), |v| = 0.1 <= 0.15
    updates, state = opt.update(g, state)
    assert torch.allclose(values(updates), torch.tensor([-0.06, -0.08, 0.0], dtype=torch.float64), atol=1e-7)
    # step 2: v = 0.9 v + 0.1 g / 5 = 1.9 * (0.06, 0.08, 0), |v| = 0.19 > 0.15: scaled to 0.15
    updates, state = opt.update(g, state)
    assert torch.allclose(values(updates), torch.tensor([-0.09, -0.12, 0.0], dtype=torch.float64), atol=1e-7)
    assert torch.allclose(values(state.velocity), torch.tensor([0.09, 0.12, 0.0], dtype=torch.float64), atol=1e-7)
    # a zero gradient gives no push (0 / 0 taken as 0): only momentum
    updates, state = opt.update(g * 0.0, state)
    assert torch.allclose(values(updates), 0.9 * torch.tensor([-0.09, -0.12, 0.0], dtype=torch.float64), atol=1e-7)


def test_clipup_default_speed_donation_and_per_member_norms():
    sp = nf.particle(nn.Linear(2, 1)).species
    g = nf.Particle(sp, {"weight": torch.tensor([[3.0, 4.0]]), "bias": torch.tensor([0.0])})
    opt = optim.clipup(0.05)  # max_speed 0.1
    s0 = opt.init(g)
    u1, s1 = opt.update(g, s0)
    snap = Snapshot(s1.velocity, g)
    u2, s2 = opt.update(g, s1)
    assert snap.unchanged()
    u2d, s2d = opt.update(g, s1, donate=True)
    assert torch.equal(values(u2), values(u2d)) and torch.equal(values(s2.velocity), values(s2d.velocity))
    assert float(values(u2).norm()) == pytest.approx(0.095, rel=1e-6)  # 1.9 * 0.05 < 0.1
    # a population: each member normalised and clipped by its own norm
    pop = nf.stack([g, g * 10.0, g * 0.0])
    us, _ = opt.update(pop, opt.init(pop))
    norms = values(us).norm(dim=1)
    assert torch.allclose(norms, torch.tensor([0.05, 0.05, 0.0], dtype=torch.float64), atol=1e-7)
    # [N] step sizes
    opt = optim.clipup(torch.tensor([0.1, 0.2, 0.3]))
    us, _ = opt.update(pop, opt.init(pop))
    assert torch.allclose(values(us).norm(dim=1), torch.tensor([0.1, 0.2, 0.0], dtype=torch.float64), atol=1e-7)


def test_clipup_refuses_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        optim.clipup(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="max_speed"):
        optim.clipup(0.1, max_speed=0.0)
    with pytest.raises(ValueError, match="lr"):
        optim.clipup(-0.1)
    with pytest.raises(TypeError, match="ClipUpState"):
        optim.clipup(0.1).update(linear(), optim.sgd(0.1).init(linear()))


# -- PGPE ---------------------------------------------------------------------------------


def test_pgpe_samples_in_antithetic_pairs():
    algo = PGPE(population_size=6, sigma=0.4)
    x0 = linear(1.0)
    pop, asked = algo.ask(algo.init(x0), generator=gen(0))
    d = values(pop) - values(x0)
    assert torch.allclose(d[:3], -d[3:], atol=1e-6)  # one noise block: its second half mirrors the first
    assert torch.allclose(d, 0.4 * values(asked.noise), atol=1e-6)


@pytest.mark.parametrize("shaping", [centered_ranks, identity])
def test_pgpe_update_matches_the_symmetric_estimates_by_hand(shaping):
    lr, lr_s, c = 0.3, 0.2, 0.05
    algo = PGPE(population_size=6, sigma=0.5, optimizer=optim.sgd(lr), lr_sigma=lr_s, sigma_max_change=c,
                shaping=shaping, maximize=False)
    x0 = linear(1.0)
    pop, asked = algo.ask(algo.init(x0), generator=gen(4))
    loss = sphere(pop)
    new = algo.tell(asked, pop, loss)
    # directions k: eps_k = x_k - m (the first half of the one noise block), utilities of the
    # + end x_k and the - end x_{k+3} (higher better)
    u = shaping(-loss)
    b = u.mean()
    m, s = values(x0), torch.full((3,), 0.5, dtype=torch.float64)
    eps = values(pop)[:3] - m
    up, um = u[:3], u[3:]
    g_m = ((up - um) / 2) @ eps / 3
    g_s = ((up + um) / 2 - b) @ ((eps**2 - s**2) / s) / 3
    assert torch.allclose(values(new.mean), m + lr * g_m, atol=1e-6)
    expected = torch.clamp(s + lr_s * g_s, min=s * (1 - c), max=s * (1 + c))
    assert torch.allclose(values(new.sigma), expected, atol=1e-6)


def test_pgpe_with_clipup_converges_on_sphere():
    algo = PGPE(population_size=20, sigma=1.0, optimizer=optim.clipup(0.05), maximize=False)  # max speed 0.1
    state = algo.init(nf.particle(nn.Linear(10, 1, bias=False)).map(lambda t, c: torch.full_like(t, 3.0)))
    start = float(sphere(nf.stack([state.mean]))[0]) ** 0.5
    state, history = algo.run(state, sphere, 250, generator=gen(0))
    assert start == pytest.approx(math.sqrt(90.0))
    # ClipUp moves at most 0.1 a step: from 9.5 away the mean settles within two steps of the optimum
    assert float(sphere(nf.stack([state.mean]))[0]) ** 0.5 < 0.2
    assert float(state.best_fitness) < 0.05
    assert history.sigma.shape == (250,)


def test_pgpe_sigma_limit_and_decay():
    algo = PGPE(population_size=4, sigma=1.0, lr_sigma=1e-9, sigma_decay=0.5, sigma_limit=0.3)
    state = algo.init(linear())
    for _ in range(3):
        state, _ = algo.step(state, sphere, generator=gen(0))
    assert torch.allclose(values(state.sigma), torch.full((3,), 0.3, dtype=torch.float64), atol=1e-6)


def test_pgpe_bad_input():
    with pytest.raises(ValueError, match="even"):
        PGPE(population_size=5)
    with pytest.raises(ValueError, match="population_size"):
        PGPE(population_size=0)
    with pytest.raises(ValueError, match="sigma"):
        PGPE(sigma=0.0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        PGPE(optimizer=0.1)
    with pytest.raises(ValueError, match="sigma_max_change"):
        PGPE(sigma_max_change=1.5)
    algo = PGPE(population_size=4)
    state = algo.init(linear())
    pop, asked = algo.ask(state, generator=gen(0))
    snap = Snapshot(asked.mean, asked.sigma, asked.noise, pop)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, pop, torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, pop, torch.full((4,), math.nan))
    assert snap.unchanged()
    new = algo.tell(asked, pop, torch.tensor([math.nan, 1.0, 2.0, math.inf]))
    assert all(bool(torch.isfinite(t).all()) for t in new.mean.tensors + new.sigma.tensors)
    assert snap.unchanged()
