"""PSO: the velocity update by hand (coefficients recovered and checked inside their ranges),
personal and global bests, bounds, convergence, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError
from nytorch_fn.algorithms import PSO, uniform_population
from tests.helpers import Snapshot

T = nf.particle(nn.Linear(3, 1))  # two tensors, 4 values


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def values(p: nf.Particle) -> torch.Tensor:
    n = p.population_size
    return torch.cat([t.double().reshape(-1) if n is None else t.double().reshape(n, -1) for t in p.tensors], -1)


def sphere(pop: nf.Particle) -> torch.Tensor:
    return (values(pop) ** 2).sum(1)


def rastrigin(pop: nf.Particle) -> torch.Tensor:
    x = values(pop)
    return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)


def start(n: int = 6, seed: int = 0, low: float = -2.0, high: float = 2.0) -> nf.Particle:
    return uniform_population(T, n, low, high, generator=gen(seed))


def test_first_move_pulls_toward_the_best_with_coefficients_in_range():
    c2 = 1.3
    for per_dimension in (True, False):
        algo = PSO(inertia=0.5, cognitive=0.8, social=c2, per_dimension=per_dimension, maximize=False)
        pop = start()
        state = algo.init(pop)
        asked_pop, asked = algo.ask(state, generator=gen(1))
        assert asked_pop is state.population
        new = algo.tell(asked, asked_pop, sphere(pop), generator=gen(2))
        x, v = values(pop), values(new.velocity)
        best = int(torch.argmin(sphere(pop)))
        g = x[best]
        # velocity 0 and personal best = position: v = c2 r2 (g - x), r2 in [0, 1)
        coef = v / (g - x)
        others = [i for i in range(6) if i != best]
        assert bool(((coef[others] >= 0) & (coef[others] < c2)).all())
        if not per_dimension:  # one r2 per member: the same coefficient for every value
            assert torch.allclose(coef[others], coef[others][:, :1].expand(-1, 4), atol=1e-5)
        assert torch.equal(v[best], torch.zeros(4, dtype=torch.float64))
        assert torch.allclose(values(new.population), x + v, atol=1e-7)
        assert torch.equal(values(new.personal_best), x)


def test_second_move_decomposes_into_inertia_cognitive_and_social_terms():
    w, c1, c2 = 0.6, 1.1, 0.9
    algo = PSO(inertia=w, cognitive=c1, social=c2, per_dimension=False, maximize=False)
    state = algo.init(start(8, seed=3))
    x0 = values(state.population)
    pop, asked = algo.ask(state)
    f0 = sphere(pop)
    state = algo.tell(asked, pop, f0, generator=gen(4))
    x1, v1 = values(state.population), values(state.velocity)
    pop, asked = algo.ask(state)
    f1 = sphere(pop)
    state = algo.tell(asked, pop, f1, generator=gen(5))
    # personal bests: the better of the two positions
    p = torch.where((f1 <= f0)[:, None], x1, x0)
    assert torch.equal(values(state.personal_best), p)
    assert torch.equal(state.personal_score, -torch.minimum(f0, f1))
    g = p[int(torch.argmin(torch.minimum(f0, f1)))]
    rest = values(state.velocity) - w * v1
    for i in range(8):
        basis = torch.stack([p[i] - x1[i], g - x1[i]], 1)  # [4, 2]
        if torch.linalg.matrix_rank(basis) < 2:
            continue
        ab = torch.linalg.lstsq(basis, rest[i]).solution
        assert torch.allclose(basis @ ab, rest[i], atol=1e-5)  # exactly a (p - x) + b (g - x)
        assert -1e-6 <= float(ab[0]) <= c1 + 1e-6 and -1e-6 <= float(ab[1]) <= c2 + 1e-6


def test_nan_fitness_never_becomes_a_personal_or_global_best():
    algo = PSO(maximize=True)
    state = algo.init(start(4))
    pop, asked = algo.ask(state)
    state = algo.tell(asked, pop, torch.tensor([1.0, 2.0, 3.0, 4.0]), generator=gen(0))
    pop, asked = algo.ask(state)
    state = algo.tell(asked, pop, torch.tensor([math.nan, 5.0, math.nan, 0.0]), generator=gen(1))
    assert state.personal_score.tolist() == [1.0, 5.0, 3.0, 4.0]
    assert float(state.best_fitness) == 5.0


@pytest.mark.parametrize("handling", ["clip", "reflect"])
def test_positions_stay_inside_the_bounds(handling):
    algo = PSO(inertia=1.0, cognitive=2.0, social=2.0, bounds=(-1.0, 1.0), bound_handling=handling)
    state = algo.init(start(10, low=-1.0, high=1.0))
    for seed in range(5):
        pop, asked = algo.ask(state)
        assert bool((values(pop).abs() <= 1.0).all())
        state = algo.tell(asked, pop, sphere(pop), generator=gen(seed))


def test_pso_converges_on_sphere_and_rastrigin():
    algo = PSO(bounds=(-5.12, 5.12), maximize=False)
    pop = uniform_population(nf.particle(nn.Linear(10, 1, bias=False)), 40, -5.12, 5.12, generator=gen(0))
    state, history = algo.run(algo.init(pop), sphere, 250, generator=gen(0))
    assert float(state.best_fitness) < 1e-8
    pop = uniform_population(nf.particle(nn.Linear(2, 1, bias=False)), 30, -5.12, 5.12, generator=gen(1))
    for per_dimension in (True, False):
        algo = PSO(bounds=(-5.12, 5.12), per_dimension=per_dimension, maximize=False)
        state, _ = algo.run(algo.init(pop), rastrigin, 150, generator=gen(1))
        assert float(state.best_fitness) < 1e-6  # the global optimum


def test_run_equals_steps_and_leaves_the_input():
    algo = PSO(bounds=(-2.0, 2.0))
    pop = start(6)
    snap = Snapshot(pop)
    state = algo.init(pop)
    ran, _ = algo.run(state, sphere, 4, generator=gen(9))
    stepped, g = state, gen(9)
    for _ in range(4):
        stepped, _ = algo.step(stepped, sphere, generator=g)
    assert torch.equal(values(ran.population), values(stepped.population))
    assert torch.equal(values(ran.velocity), values(stepped.velocity))
    assert snap.unchanged()


def test_pso_bad_input():
    with pytest.raises(ValueError, match="inertia"):
        PSO(inertia=-0.1)
    with pytest.raises(TypeError, match="per_dimension"):
        PSO(per_dimension=1)
    with pytest.raises(PopulationSizeError, match="at least 2"):
        PSO().init(start(1))
    with pytest.raises(ValueError, match="bound_handling"):
        PSO(bound_handling="absorb")
    algo = PSO()
    state = algo.init(start(4))
    pop, asked = algo.ask(state)
    snap = Snapshot(asked.population, asked.velocity, asked.personal_best, asked.personal_score)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, pop, torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, pop, torch.full((4,), math.nan))
    assert snap.unchanged()


def test_initial_positions_are_brought_inside_the_bounds():
    pop = start(6, low=-3.0, high=3.0)
    for handling in ("clip", "reflect"):
        state = PSO(bounds=(-1.0, 1.0), bound_handling=handling).init(pop)
        assert bool((values(state.population).abs() <= 1.0).all())
        assert torch.equal(values(state.personal_best), values(state.population))


def test_first_move_uses_the_uniform_noise_blocks_of_the_documented_seeds():
    # velocity 0 and personal best = position, so v = (c2 r2) * (g - x) with r2 = row i of the
    # uniform noise blocks of the second base seed drawn from tell's generator
    from tests.fn.test_algorithms import stream_noise

    c2 = 1.3
    algo = PSO(inertia=0.5, cognitive=0.8, social=c2, maximize=False)
    pop = start(40)
    pop_asked, asked = algo.ask(algo.init(pop), generator=gen(1))
    new = algo.tell(asked, pop_asked, sphere(pop), generator=gen(2))
    g = gen(2)
    seeds = [int(torch.randint(0, 2**63 - 1, (1,), generator=g)[0]) for _ in range(2)]
    r2 = stream_noise(seeds[1], range(40), 4, n=40, draw=torch.rand)
    x = torch.cat([t.reshape(40, -1) for t in pop.tensors], 1)
    best = int(torch.argmin(sphere(pop)))
    want = (r2 * c2) * (x[best] - x)
    got = torch.cat([t.reshape(40, -1) for t in new.velocity.tensors], 1)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, (stream_noise(seeds[0], range(40), 4, n=40, draw=torch.rand) * c2) * (x[best] - x))


@pytest.mark.parametrize("per_dimension", [True, False])
@pytest.mark.parametrize("bounds", [None, (-0.5, 0.5), "tensors"])
def test_cache_blocks_of_rows_do_not_change_the_bits(monkeypatch, per_dimension, bounds):
    # the move runs in blocks of rows (row_blocks); one row per block and one block for all
    # must give the same bits, in run (donated buffers) and in step (fresh ones)
    from nytorch_fn._algorithms import _base

    wide = nf.particle(nn.Linear(40, 30))  # a weight row of 4,800 bytes, a bias row of 120
    if bounds == "tensors":
        bounds = (wide * 0 - 0.4, wide * 0 + 0.6)

    def final(block_bytes: int):
        monkeypatch.setattr(_base, "ROW_BLOCK_BYTES", block_bytes)
        algo = PSO(per_dimension=per_dimension, bounds=bounds, maximize=False)
        pop = uniform_population(wide, 12, -1.0, 1.0, generator=gen(4))
        state, _ = algo.run(algo.init(pop), sphere, 3, generator=gen(5))
        state, _ = algo.step(state, sphere, generator=gen(6))
        return [values(p) for p in (state.population, state.velocity, state.personal_best)]

    one_row, three_rows, whole = final(1), final(3 * 4800), final(1 << 30)
    for a, b, c in zip(one_row, three_rows, whole):
        assert torch.equal(a, c) and torch.equal(b, c)
    assert not torch.equal(whole[0], whole[2])  # the swarm moved away from its personal bests


def test_row_blocks_cover_the_rows_in_order_within_the_byte_budget(monkeypatch):
    from nytorch_fn._algorithms import _base

    monkeypatch.setattr(_base, "ROW_BLOCK_BYTES", 100)
    t = torch.zeros(10, 3, 2)  # rows of 24 bytes: 4 per block
    assert _base.row_blocks(t) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert _base.row_blocks(torch.zeros(3, 1000)) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # a row at least
    assert _base.row_blocks(torch.zeros(0, 5)) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_select_rows_copies_the_bits_of_torch_where(dtype):
    from nytorch_fn._algorithms._base import select_mask, select_rows

    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-40, -3.5], dtype=torch.float64)
    g = gen(7)
    new = torch.cat([special, torch.randn(13, generator=g, dtype=torch.float64)]).to(dtype).repeat(6, 1)
    old = torch.cat([torch.randn(13, generator=g, dtype=torch.float64), special.flip(0)]).to(dtype).repeat(6, 1)
    rows = torch.tensor([True, False, False, True, True, False])
    expected = torch.where(rows.view(6, 1), new, old)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[new.element_size()]
    out = select_rows(select_mask(rows, new), new, old, torch.empty_like(new), torch.empty_like(new))
    assert torch.equal(out.view(bits), expected.view(bits))
    before = new.clone()
    select_rows(select_mask(rows, new), new, old, torch.empty_like(new), old)  # into old, as run does
    assert torch.equal(old.view(bits), expected.view(bits)) and torch.equal(new.view(bits), before.view(bits))
