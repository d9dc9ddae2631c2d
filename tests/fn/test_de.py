"""DE: mutants and crossover against every admissible hand computation, selection, bounds, convergence, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError
from nytorch_fn._algorithms._de import distinct_others
from nytorch_fn.algorithms import DE, uniform_population
from tests.helpers import Snapshot


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


_TEMPLATES: dict[int, nf.Particle] = {}


def template(d: int = 2) -> nf.Particle:
    """Two tensors (weight [1, d], bias [1]): d + 1 values per member (one species per d)."""
    if d not in _TEMPLATES:
        _TEMPLATES[d] = nf.particle(nn.Linear(d, 1))
    return _TEMPLATES[d]


def values(p: nf.Particle) -> torch.Tensor:
    n = p.population_size
    return torch.cat([t.double().reshape(-1) if n is None else t.double().reshape(n, -1) for t in p.tensors], -1)


def sphere(pop: nf.Particle) -> torch.Tensor:
    return (values(pop) ** 2).sum(1)


def rastrigin(pop: nf.Particle) -> torch.Tensor:
    x = values(pop)
    return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)


def start(n: int = 4, seed: int = 0, d: int = 2, low: float = -2.0, high: float = 2.0) -> nf.Particle:
    return uniform_population(template(d), n, low, high, generator=gen(seed))


def evaluated(algo: DE, pop: nf.Particle, fn=sphere):
    state = algo.init(pop)
    first, asked = algo.ask(state, generator=gen(0))
    assert torch.equal(values(first), values(pop))  # the first ask evaluates the initial population
    return algo.tell(asked, first, fn(first))


def test_distinct_others_are_distinct_and_uniform():
    counts = torch.zeros(6, 6)
    for seed in range(400):
        idx = distinct_others(6, 3, gen(seed), "cpu")
        for i, row in enumerate(idx.tolist()):
            assert len({i, *row}) == 4
            for j in row:
                counts[i, j] += 1
    assert bool((counts.diagonal() == 0).all())
    off = counts[~torch.eye(6, dtype=torch.bool)] / (400 * 3)
    assert bool(((off - 0.2).abs() < 0.05).all())  # each other member picked with probability 1/5


def test_rand_1_mutant_is_one_of_the_admissible_combinations():
    f = 0.7
    algo = DE(differential_weight=f, crossover_rate=1.0)
    pop = start()
    state = evaluated(algo, pop)
    trial, _ = algo.ask(state, generator=gen(1))
    x = values(pop)
    for i in range(4):
        others = [j for j in range(4) if j != i]
        candidates = [x[a] + f * (x[b] - x[c]) for a, b, c in itertools.permutations(others)]
        assert any(torch.allclose(values(trial)[i], v, atol=1e-6) for v in candidates)


def test_current_to_best_mutant_is_one_of_the_admissible_combinations():
    f = 0.6
    algo = DE(strategy="current-to-best/1/bin", differential_weight=f, crossover_rate=1.0, maximize=False)
    pop = start(5)
    state = evaluated(algo, pop)
    best = int(torch.argmin(sphere(pop)))
    trial, _ = algo.ask(state, generator=gen(2))
    x = values(pop)
    for i in range(5):
        others = [j for j in range(5) if j != i]
        candidates = [x[i] + f * (x[best] - x[i]) + f * (x[a] - x[b]) for a, b in itertools.permutations(others, 2)]
        assert any(torch.allclose(values(trial)[i], v, atol=1e-6) for v in candidates)


def test_binomial_crossover_takes_at_least_one_value_from_the_mutant():
    pop = start(8, d=5)
    x = values(pop)
    # CR = 0: exactly one value (j_rand) differs from the parent, in any tensor
    trial, _ = DE(crossover_rate=0.0).ask(evaluated(DE(crossover_rate=0.0), pop), generator=gen(3))
    changed = (values(trial) != x).sum(1)
    assert changed.tolist() == [1] * 8
    # CR = 0.5: about half the values, always at least one
    algo = DE(crossover_rate=0.5)
    state = evaluated(algo, start(64, d=9))
    trial, _ = algo.ask(state, generator=gen(4))
    frac = (values(trial) != values(state.population)).double().mean()
    assert 0.4 < float(frac) < 0.6
    assert bool(((values(trial) != values(state.population)).sum(1) >= 1).all())


def test_selection_keeps_the_better_of_parent_and_trial():
    algo = DE(maximize=False)
    pop = start(4)
    state = evaluated(algo, pop)
    trial, asked = algo.ask(state, generator=gen(5))
    parent_loss = sphere(pop)
    loss = torch.tensor([float(parent_loss[0]) - 1, float(parent_loss[1]) + 1, float(parent_loss[2]), math.nan],
                        dtype=torch.float64)
    new = algo.tell(asked, trial, loss)
    x, t = values(pop), values(trial)
    assert torch.equal(values(new.population)[0], t[0])  # better: replaced
    assert torch.equal(values(new.population)[1], x[1])  # worse: kept
    assert torch.equal(values(new.population)[2], t[2])  # as good: replaced
    assert torch.equal(values(new.population)[3], x[3])  # NaN: kept
    assert torch.equal(new.score, torch.tensor([-float(loss[0]), -float(parent_loss[1]), -float(loss[2]),
                                                 -float(parent_loss[3])], dtype=torch.float64))


@pytest.mark.parametrize("handling", ["clip", "reflect"])
def test_trials_stay_inside_the_bounds(handling):
    algo = DE(differential_weight=2.0, bounds=(-1.0, 1.0), bound_handling=handling)
    state = evaluated(algo, start(16, low=-1.0, high=1.0))
    for seed in range(3):
        trial, asked = algo.ask(state, generator=gen(seed))
        assert bool((values(trial).abs() <= 1.0).all())
        state = algo.tell(asked, trial, sphere(trial))


def test_particle_bounds_per_value():
    low = template().map(lambda t, c: torch.full_like(t, -1.0))
    high = template().map(lambda t, c: torch.full_like(t, 1.0))
    high = nf.Particle(high.species, {"weight": torch.tensor([[1.0, 0.5]]), "bias": torch.tensor([0.1])})
    algo = DE(differential_weight=2.0, bounds=(low, high))
    state = evaluated(algo, start(12, low=-0.1, high=0.1))
    trial, _ = algo.ask(state, generator=gen(1))
    assert bool((values(trial) <= values(high) + 1e-7).all()) and bool((values(trial) >= -1.0).all())
    with pytest.raises(TypeError, match="bound expects a particle of"):
        DE(bounds=(low, nf.particle(nn.Linear(2, 1)))).init(start(4))  # another species


def test_de_converges_on_sphere_and_rastrigin():
    algo = DE(bounds=(-5.12, 5.12), maximize=False)
    pop = uniform_population(nf.particle(nn.Linear(10, 1, bias=False)), 40, -5.12, 5.12, generator=gen(0))
    state, history = algo.run(algo.init(pop), sphere, 250, generator=gen(0))
    assert float(state.best_fitness) < 1e-8
    assert history.best_fitness.shape == (250,) and bool((history.best_fitness[1:] <= history.best_fitness[:-1]).all())
    for strategy in ("rand/1/bin", "current-to-best/1/bin"):
        algo = DE(strategy=strategy, crossover_rate=0.2, bounds=(-5.12, 5.12), maximize=False)
        pop = uniform_population(nf.particle(nn.Linear(4, 1, bias=False)), 30, -5.12, 5.12, generator=gen(1))
        state, _ = algo.run(algo.init(pop), rastrigin, 200, generator=gen(1))
        assert float(state.best_fitness) < 1e-6, strategy  # the global optimum


def test_de_bad_input():
    with pytest.raises(PopulationSizeError, match="at least 4"):
        DE().init(start(3))
    with pytest.raises(ValueError, match="strategy"):
        DE(strategy="best/2/exp")
    with pytest.raises(ValueError, match="differential_weight"):
        DE(differential_weight=0.0)
    with pytest.raises(ValueError, match="crossover_rate"):
        DE(crossover_rate=1.1)
    with pytest.raises(ValueError, match="bound_handling"):
        DE(bound_handling="wrap")
    with pytest.raises(ValueError, match="low <= high"):
        DE(bounds=(1.0, -1.0))
    with pytest.raises(TypeError, match="population"):
        DE().init(template())
    algo = DE()
    pop = start(5)
    state = evaluated(algo, pop)
    trial, asked = algo.ask(state, generator=gen(0))
    snap = Snapshot(asked.population, asked.score, trial)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, trial, torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, trial, torch.full((5,), math.nan))
    assert snap.unchanged()


def test_crossover_mask_is_u_below_cr_from_the_uniform_noise_blocks_plus_j_rand():
    # the documented draws, replayed in plain torch: [n, 3] U(0, 1) for the distinct others, then
    # j_rand ~ randint(0, P, (n,)), then one base seed; u = row i of the uniform noise blocks
    from tests.fn.test_algorithms import stream_noise

    n, d, cr = 40, 6, 0.3
    algo = DE(crossover_rate=cr)
    state = evaluated(algo, start(n, d=d))
    trial, _ = algo.ask(state, generator=gen(11))
    g = gen(11)
    torch.rand(n, 3, generator=g, dtype=torch.float64)
    j_rand = torch.randint(0, d + 1, (n,), generator=g)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g)[0])
    u = stream_noise(seed, range(n), d + 1, n=n, draw=torch.rand)
    want = u < cr
    want[torch.arange(n), j_rand] = True
    took = values(trial) != values(state.population)  # a mutant value differs from its parent's
    assert torch.equal(took, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("cr", [0.3, 0.9, 0.5])
def test_trial_is_where_u_below_cr_in_the_species_dtype(dtype, cr):
    # the crossover runs on bit patterns: it must be torch.where(u < CR, mutant, parent) exactly,
    # u compared in its own dtype (0.3 and 0.9 round to below CR in half precision)
    from tests.fn.test_algorithms import stream_noise

    n, d = 37, 40
    lin = nn.Linear(d, 1, bias=False)
    base = nf.particle(lin).to(dtype)
    pop = uniform_population(base, n, -2.0, 2.0, generator=gen(1))
    parents = evaluated(DE(crossover_rate=cr), pop).population
    mutant, _ = DE(crossover_rate=1.0).ask(evaluated(DE(crossover_rate=1.0), pop), generator=gen(12))
    trial, _ = DE(crossover_rate=cr).ask(evaluated(DE(crossover_rate=cr), pop), generator=gen(12))
    g = gen(12)
    torch.rand(n, 3, generator=g, dtype=torch.float64)
    j_rand = torch.randint(0, d, (n,), generator=g)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g)[0])
    u = stream_noise(seed, range(n), d, n=n, draw=lambda *s, generator: torch.rand(*s, generator=generator, dtype=dtype))
    take = u < cr
    take[torch.arange(n), j_rand] = True
    want = torch.where(take, mutant.tensors[0].reshape(n, d), parents.tensors[0].reshape(n, d))
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[want.element_size()]
    assert torch.equal(trial.tensors[0].reshape(n, d).view(bits), want.view(bits))
    assert 0 < int(take.sum()) < n * d


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("c", [0.3, 0.9, 0.5, 0.1, 1e-3])
def test_below_mask_is_torch_lt_on_the_values_next_to_the_threshold(dtype, c):
    from nytorch_fn._algorithms._de import below_mask_

    r = torch.tensor(c, dtype=dtype)
    near = [torch.nextafter(r, torch.tensor(-1.0, dtype=dtype)), r, torch.nextafter(r, torch.tensor(2.0, dtype=dtype))]
    u = torch.cat([torch.stack(near), torch.tensor([0.0, 0.25, 0.75, 0.99951171875], dtype=dtype),
                   torch.rand(50, generator=gen(2), dtype=dtype)])
    want = torch.lt(u, c)
    got = below_mask_(u.clone(), c)
    assert got.element_size() == u.element_size()
    assert torch.equal(got, torch.where(want, -1, 0).to(got.dtype))


def test_copy_rows_copies_exactly_the_selected_rows_bit_for_bit():
    from nytorch_fn._algorithms._base import copy_rows_

    g = torch.Generator().manual_seed(0)
    for dtype, bits in ((torch.float32, torch.int32), (torch.float64, torch.int64)):
        src = torch.randn(40, 7, generator=g, dtype=dtype)
        src[0, 0], src[1, 1] = -0.0, float("inf")
        src.view(bits)[2, 2] = 0x7FC00123 if dtype == torch.float32 else 0x7FF8000000000123  # a NaN payload
        dst = torch.randn(40, 7, generator=g, dtype=dtype)
        for rows in (torch.rand(40, generator=g) < 0.5, torch.zeros(40, dtype=torch.bool), torch.ones(40, dtype=torch.bool)):
            rows = rows.clone()
            rows[:3] = bool(rows.any())
            out = dst.clone()
            src_before = src.clone()
            assert copy_rows_(out, src, rows) is out
            expected = torch.where(rows[:, None], src.view(bits), dst.view(bits))
            assert torch.equal(out.view(bits), expected)
            assert torch.equal(src.view(bits), src_before.view(bits))  # the source is untouched
