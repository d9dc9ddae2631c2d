"""SNES and XNES: the paper's utilities and updates against hand computations, convergence, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError
from nytorch_fn.algorithms import SNES, XNES, centered_ranks, nes_utilities
from tests.helpers import Snapshot


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear(value: float = 3.0, d: int = 2) -> nf.Particle:
    """A Linear(d, 1): ``d + 1`` searched values (two tensors), all set to ``value``."""
    return nf.particle(nn.Linear(d, 1)).map(lambda t, cfg: torch.full_like(t, value))


def flat(d: int, value: float = 3.0) -> nf.Particle:
    """A one-tensor species of ``d`` values."""
    return nf.particle(nn.Linear(d, 1, bias=False)).map(lambda t, cfg: torch.full_like(t, value))


def values(p: nf.Particle) -> torch.Tensor:
    """All values of a particle (``[d]``) or population (``[N, d]``) in float64, names order."""
    n = p.population_size
    return torch.cat([t.double().reshape(-1) if n is None else t.double().reshape(n, -1) for t in p.tensors], -1)


def sphere(pop: nf.Particle) -> torch.Tensor:
    return (values(pop) ** 2).sum(1)


def rastrigin(pop: nf.Particle) -> torch.Tensor:
    x = values(pop)
    return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)


# -- the utilities ------------------------------------------------------------------------


def test_nes_utilities_by_hand():
    # N = 4: raw weights max(0, ln 3 - ln k) for ranks k = 1..4, normalised, minus 1/4
    raw = torch.tensor([math.log(3), math.log(3) - math.log(2), 0.0, 0.0], dtype=torch.float64)
    by_rank = raw / raw.sum() - 0.25
    u = nes_utilities(torch.tensor([1.0, 3.0, 2.0, 0.0]))
    expected = torch.stack([by_rank[2], by_rank[0], by_rank[1], by_rank[3]])
    assert torch.allclose(u, expected, atol=1e-15)
    assert abs(float(u.sum())) < 1e-15
    # NaN is the worst; ties by position
    u = nes_utilities(torch.tensor([float("nan"), 5.0, 5.0, 1.0]))
    assert float(u[1]) == pytest.approx(float(by_rank[0])) and float(u[2]) == pytest.approx(float(by_rank[1]))
    assert float(u[0]) == pytest.approx(-0.25)
    with pytest.raises(TypeError, match=r"\[N\] tensor"):
        nes_utilities(torch.ones(2, 2))


# -- SNES ---------------------------------------------------------------------------------


def test_snes_samples_and_update_match_the_paper_by_hand():
    algo = SNES(population_size=6, sigma=0.7, lr_mean=0.9, lr_sigma=0.3)
    x0 = linear(1.0)
    state = algo.init(x0)
    pop, asked = algo.ask(state, generator=gen(3))
    z = values(asked.noise)
    m, s = values(x0), torch.full((3,), 0.7, dtype=torch.float64)
    assert torch.allclose(values(pop), m + s * z, atol=1e-6)
    fitness = torch.tensor([0.3, -1.0, 2.0, float("nan"), 0.5, 1.0])
    new = algo.tell(asked, pop, fitness)
    # hand computation, float64: utilities by rank, then algorithm 6 of Wierstra et al. 2014
    order = [2, 5, 4, 0, 1, 3]  # best first (NaN last)
    raw = torch.clamp(math.log(4) - torch.log(torch.arange(1, 7, dtype=torch.float64)), min=0)
    w = raw / raw.sum() - 1 / 6
    u = torch.empty(6, dtype=torch.float64)
    u[order] = w
    mean = m + 0.9 * s * (u @ z)
    sigma = s * torch.exp(0.3 / 2 * (u @ (z**2 - 1)))
    assert torch.allclose(values(new.mean), mean, atol=1e-6)
    assert torch.allclose(values(new.sigma), sigma, atol=1e-6)
    assert new.generation == 1
    assert float(new.best_fitness) == 2.0


def test_snes_default_learning_rate_and_population_helper():
    from nytorch_fn._algorithms._nes import nes_population

    d = 100
    assert SNES().lr_sigma_for(d) == pytest.approx((3 + math.log(d)) / (5 * math.sqrt(d)))
    assert XNES().rates_for(d) == pytest.approx(((9 + 3 * math.log(d)) / (5 * d * 10),) * 2)
    assert nes_population(100) == 4 + 13


def test_snes_sigma_schedule_decays_and_stops_at_the_limit():
    algo = SNES(population_size=4, sigma=1.0, lr_sigma=1e-12, sigma_decay=0.5, sigma_limit=0.2)
    state = algo.init(linear())
    sigmas = []
    for _ in range(4):
        state, _ = algo.step(state, sphere, generator=gen(0))
        sigmas.append(float(values(state.sigma).max()))
    assert sigmas == pytest.approx([0.5, 0.25, 0.2, 0.2], rel=1e-6)


def test_snes_shaping_is_pluggable():
    a = SNES(population_size=6, sigma=0.5, shaping=centered_ranks)
    state = a.init(linear(1.0))
    pop, asked = a.ask(state, generator=gen(1))
    f = sphere(pop)
    new = a.tell(asked, pop, f)
    u = centered_ranks(f)
    z = values(asked.noise)
    assert torch.allclose(values(new.mean), values(linear(1.0)) + 0.5 * (u @ z), atol=1e-6)


def test_snes_converges_on_sphere_and_rastrigin():
    state = SNES(population_size=10, sigma=1.0, maximize=False).init(flat(10))
    state, history = SNES(population_size=10, sigma=1.0, maximize=False).run(state, sphere, 250, generator=gen(0))
    assert float(state.best_fitness) < 1e-8
    assert history.sigma.shape == (250,) and float(history.sigma[-1]) < 1e-3
    algo = SNES(population_size=50, sigma=2.0, maximize=False)
    state, _ = algo.run(algo.init(flat(4, 2.0)), rastrigin, 200, generator=gen(0))
    assert float(state.best_fitness) < 1e-6  # the global optimum, not a local one


def test_snes_exact_sums_give_the_same_run_to_rounding():
    runs = []
    for exact in (False, True):
        algo = SNES(population_size=8, sigma=0.5, exact=exact, maximize=False)
        state, _ = algo.run(algo.init(linear()), sphere, 5, generator=gen(2))
        runs.append(values(state.mean))
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


# -- XNES ---------------------------------------------------------------------------------


def _expm_sym(a: torch.Tensor) -> torch.Tensor:
    """exp of a symmetric matrix by its eigendecomposition (independent of torch.linalg.matrix_exp)."""
    w, v = torch.linalg.eigh(a)
    return v @ torch.diag(torch.exp(w)) @ v.T


def test_xnes_update_matches_the_paper_by_hand():
    algo = XNES(population_size=5, sigma=0.8, lr_mean=0.7, lr_sigma=0.2, lr_B=0.1)
    x0 = linear(0.5)
    state = algo.init(x0)
    for step in range(2):  # the second step starts from a B that is no longer the identity
        pop, asked = algo.ask(state, generator=gen(10 + step))
        z = asked.noise
        mu, sigma, B = values(state.mean), asked.sigma, asked.B
        assert torch.allclose(values(pop), mu + sigma * z @ B.T, atol=1e-6)
        fitness = -sphere(pop)
        state = algo.tell(asked, pop, fitness)
        u = nes_utilities(fitness.double())
        d = 3
        g_delta = u @ z
        g_m = sum(u[i] * (torch.outer(z[i], z[i]) - torch.eye(d, dtype=torch.float64)) for i in range(5))
        g_sigma = torch.trace(g_m) / d
        g_b = g_m - g_sigma * torch.eye(d, dtype=torch.float64)
        assert torch.allclose(values(state.mean), mu + 0.7 * sigma * B @ g_delta, atol=1e-6)
        assert torch.allclose(state.sigma, sigma * torch.exp(0.1 * g_sigma), atol=1e-12)
        assert torch.allclose(state.B, B @ _expm_sym(0.05 * g_b), atol=1e-10)
        assert float(torch.linalg.det(state.B)) == pytest.approx(1.0, abs=1e-10)


def test_xnes_learns_a_rotated_ellipse():
    rot = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]], dtype=torch.float64)
    scale = torch.diag(torch.tensor([1.0, 30.0], dtype=torch.float64))
    hessian = rot @ scale @ rot.T

    def ellipse(pop):
        x = values(pop)
        return ((x @ hessian) * x).sum(1)

    algo = XNES(population_size=10, sigma=1.0, maximize=False)
    state, _ = algo.run(algo.init(flat(2)), ellipse, 250, generator=gen(0))
    assert float(state.best_fitness) < 1e-10
    # the search covariance lines up with the inverse Hessian (up to scale)
    cov = state.B @ state.B.T
    cosine = (cov * torch.linalg.inv(hessian)).sum() / (cov.norm() * torch.linalg.inv(hessian).norm())
    assert float(cosine) > 0.95


def test_xnes_converges_on_sphere():
    algo = XNES(population_size=10, sigma=1.0, maximize=False)
    state, history = algo.run(algo.init(flat(5)), sphere, 250, generator=gen(1))
    assert float(state.best_fitness) < 1e-10
    assert history.sigma.shape == (250,)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SNES, XNES])
def test_bad_hyperparameters_are_refused(cls):
    with pytest.raises(ValueError, match="sigma"):
        cls(sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        cls(sigma=-1.0)
    with pytest.raises(ValueError, match="population_size"):
        cls(population_size=1)
    with pytest.raises(TypeError, match="shaping"):
        cls(shaping="ranks")
    with pytest.raises(ValueError, match="sigma_decay"):
        cls(sigma_decay=0.0)
    with pytest.raises(ValueError, match="lr_mean"):
        cls(lr_mean=0.0)


@pytest.mark.parametrize("cls", [SNES, XNES])
def test_integer_parameters_are_refused_by_name(cls):
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
            self.steps = nn.Parameter(torch.zeros(1, dtype=torch.int64), requires_grad=False)

    p = nf.particle(Counter())
    with pytest.raises(TypeError, match="'steps'"):
        cls().init(p)
    p = p.species.with_config("steps", operational=False)
    state = cls(population_size=4).init(nf.Particle(p, dict(nf.particle(Counter()).params)))
    assert state.generation == 0


@pytest.mark.parametrize("cls", [SNES, XNES])
def test_nan_fitness_is_the_worst_and_all_nan_is_refused_untouched(cls):
    algo = cls(population_size=4, sigma=0.5)
    state = algo.init(linear())
    pop, asked = algo.ask(state, generator=gen(0))
    snap = Snapshot(asked.mean, asked.noise if cls is SNES else [asked.noise, asked.B], pop)
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, pop, torch.full((4,), float("nan")))
    with pytest.raises(PopulationSizeError, match=r"\(4,\)"):
        algo.tell(asked, pop, torch.zeros(4, 2))
    assert snap.unchanged()
    new = algo.tell(asked, pop, torch.tensor([float("nan"), 1.0, float("inf"), -float("inf")]))
    assert all(bool(torch.isfinite(t).all()) for t in new.mean.tensors)
    assert float(new.best_fitness) == float("inf")
    assert snap.unchanged()


def test_xnes_refuses_a_dimension_its_matrix_cannot_hold():
    with pytest.raises(ValueError, match="at most 10000 searched values, got 10001"):
        XNES().init(nf.particle(nn.Linear(10_000, 1)))


def test_run_equals_step_by_step_and_leaves_the_state():
    for algo in (SNES(population_size=6, sigma=0.3), XNES(population_size=6, sigma=0.3)):
        state = algo.init(linear())
        snap = Snapshot(state.mean)
        ran, _ = algo.run(state, sphere, 4, generator=gen(5))
        stepped, g = state, gen(5)
        for _ in range(4):
            stepped, _ = algo.step(stepped, sphere, generator=g)
        assert torch.equal(values(ran.mean), values(stepped.mean))
        assert snap.unchanged()
