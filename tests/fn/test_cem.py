"""CEM: the elite refit against the elites' own mean and standard deviation, smoothing, convergence, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError
from nytorch_fn.algorithms import CEM
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


def test_cem_refits_to_the_elites_mean_and_std():
    algo = CEM(population_size=10, sigma=0.8, elite_ratio=0.35)  # k = floor(3.5) = 3
    assert algo.elites == 3
    x0 = linear(1.0)
    pop, asked = algo.ask(algo.init(x0), generator=gen(0))
    fitness = torch.tensor([0.5, 3.0, math.nan, 2.0, -1.0, 2.5, 0.0, 1.0, math.inf, -3.0])
    new = algo.tell(asked, pop, fitness)
    elites = values(pop)[[8, 1, 5]]  # inf, 3.0, 2.5; NaN is never an elite
    assert torch.allclose(values(new.mean), elites.mean(0), atol=1e-6)
    assert torch.allclose(values(new.sigma), elites.std(0, unbiased=False), atol=1e-6)


def test_cem_smoothing_rates():
    algo = CEM(population_size=8, sigma=0.5, elite_ratio=0.5, lr_mean=0.3, lr_sigma=0.6, maximize=False)
    x0 = linear(2.0)
    pop, asked = algo.ask(algo.init(x0), generator=gen(1))
    loss = sphere(pop)
    new = algo.tell(asked, pop, loss)
    elites = values(pop)[torch.argsort(loss)[:4]]
    m, s = values(x0), torch.full((3,), 0.5, dtype=torch.float64)
    assert torch.allclose(values(new.mean), m + 0.3 * (elites.mean(0) - m), atol=1e-6)
    assert torch.allclose(values(new.sigma), s + 0.6 * (elites.std(0, unbiased=False) - s), atol=1e-6)


def test_cem_one_elite_collapses_unless_limited():
    algo = CEM(population_size=4, sigma=1.0, elite_ratio=0.1, sigma_limit=0.05)
    assert algo.elites == 1
    pop, asked = algo.ask(algo.init(linear()), generator=gen(0))
    new = algo.tell(asked, pop, -sphere(pop))
    assert torch.allclose(values(new.mean), values(pop)[int(torch.argmin(sphere(pop)))], atol=1e-6)
    assert torch.allclose(values(new.sigma), torch.full((3,), 0.05, dtype=torch.float64))


def test_cem_converges_on_sphere():
    algo = CEM(population_size=50, sigma=2.0, elite_ratio=0.2, lr_sigma=0.7, maximize=False)
    x0 = nf.particle(nn.Linear(10, 1, bias=False)).map(lambda t, c: torch.full_like(t, 3.0))
    state, history = algo.run(algo.init(x0), sphere, 200, generator=gen(0))
    assert float(state.best_fitness) < 1e-8
    assert float(sphere(nf.stack([state.mean]))[0]) < 1e-8
    assert history.sigma.shape == (200,) and bool((history.sigma[1:] < history.sigma[:-1] * 1.5).all())


def test_cem_run_equals_steps_and_donation_changes_no_value():
    algo = CEM(population_size=12, sigma=0.5, elite_ratio=0.25)
    state = algo.init(linear())
    snap = Snapshot(state.mean, state.sigma)
    ran, _ = algo.run(state, sphere, 5, generator=gen(3))
    g, stepped = gen(3), state
    for _ in range(5):
        stepped, _ = algo.step(stepped, sphere, generator=g)
    assert torch.equal(values(ran.mean), values(stepped.mean))
    assert torch.equal(values(ran.sigma), values(stepped.sigma))
    assert snap.unchanged()


def test_cem_bad_input():
    with pytest.raises(ValueError, match="elite_ratio"):
        CEM(elite_ratio=0.0)
    with pytest.raises(ValueError, match="elite_ratio"):
        CEM(elite_ratio=1.5)
    with pytest.raises(ValueError, match="sigma"):
        CEM(sigma=-0.1)
    with pytest.raises(ValueError, match="population_size"):
        CEM(population_size=1)
    with pytest.raises(ValueError, match="lr_sigma"):
        CEM(lr_sigma=0.0)
    algo = CEM(population_size=4)
    pop, asked = algo.ask(algo.init(linear()), generator=gen(0))
    snap = Snapshot(asked.mean, asked.sigma, asked.noise, pop)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, pop, torch.zeros(4, 1))
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, pop, torch.full((4,), math.nan))
    assert snap.unchanged()
