"""NSGA2: non-dominated sorting and crowding against a hand-worked example, selection, variation,
convergence to ZDT1's Pareto front, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError
from nytorch_fn._algorithms._nsga2 import compromise, crowding_distance, nondominated_ranks, survivors
from nytorch_fn.algorithms import NSGA2, uniform_population
from tests.helpers import Snapshot

INF = math.inf
T = nf.particle(nn.Linear(3, 1))  # two tensors, 4 values


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def values(p: nf.Particle) -> torch.Tensor:
    n = p.population_size
    return torch.cat([t.double().reshape(-1) if n is None else t.double().reshape(n, -1) for t in p.tensors], -1)


def zdt1(pop: nf.Particle) -> torch.Tensor:
    """ZDT1 (minimise both): f1 = x1, f2 = g (1 - sqrt(f1 / g)), g = 1 + 9 mean(x2..xn); front at g = 1."""
    x = values(pop)
    f1 = x[:, 0]
    g = 1 + 9 * x[:, 1:].mean(1)
    return torch.stack([f1, g * (1 - torch.sqrt(f1 / g))], 1)


def two_spheres(pop: nf.Particle) -> torch.Tensor:
    x = values(pop)
    return torch.stack([(x**2).sum(1), ((x - 1) ** 2).sum(1)], 1)


# the hand-worked example (minimise both objectives):
#   A (1, 5)  B (2, 3)  C (4, 1)  D (3, 4)  E (5, 5)  F (2.5, 2.5)
# front 0: A, B, C, F; front 1: D (dominated by B and F); front 2: E (dominated by D)
# crowding in front 0, objective 1 sorted A(1) B(2) F(2.5) C(4), range 3: A, C inf; B (2.5-1)/3, F (4-2)/3
#                       objective 2 sorted C(1) F(2.5) B(3) A(5), range 4: F (3-1)/4, B (5-2.5)/4
HAND = -torch.tensor([[1.0, 5.0], [2.0, 3.0], [4.0, 1.0], [3.0, 4.0], [5.0, 5.0], [2.5, 2.5]], dtype=torch.float64)


def test_nondominated_sorting_by_hand():
    assert nondominated_ranks(HAND).tolist() == [0, 0, 0, 1, 2, 0]
    # peeling stops once enough members are ranked
    assert nondominated_ranks(HAND, needed=4).tolist() == [0, 0, 0, 6, 6, 0]


def test_crowding_distance_by_hand():
    rank = nondominated_ranks(HAND)
    d = crowding_distance(HAND, rank)
    assert d[0] == INF and d[2] == INF
    assert float(d[1]) == pytest.approx(1.5 / 3 + 2.5 / 4)
    assert float(d[5]) == pytest.approx(2 / 3 + 2 / 4)
    assert d[3] == INF and d[4] == INF  # alone in their fronts


def test_survivors_by_front_then_crowding():
    rank = nondominated_ranks(HAND)
    d = crowding_distance(HAND, rank)
    # 3: of front 0, A and C (inf) and F (1.167 > B's 1.125); 5: all of front 0, and D
    assert survivors(rank, d, 3).tolist() == [0, 2, 5]
    assert survivors(rank, d, 5).tolist() == [0, 1, 2, 3, 5]


def test_compromise_is_the_first_front_member_nearest_the_ideal_point():
    # scaled over the front (A, B, C, F): squared distances to the ideal point A 1, B 1/9 + 1/4,
    # C 1, F 1/4 + 9/64
    assert compromise(HAND) == 1


def test_a_generation_selects_from_parents_and_children():
    algo = NSGA2(bounds=(0.0, 1.0), maximize=False)
    pop = uniform_population(T, 8, 0.0, 1.0, generator=gen(0))
    state = algo.init(pop)
    first, asked = algo.ask(state, generator=gen(1))
    assert torch.equal(values(first), values(pop))  # the first ask evaluates the initial population
    f0 = zdt1(first)
    state = algo.tell(asked, first, f0)
    assert state.rank.tolist() == nondominated_ranks(-f0).tolist()
    children, asked = algo.ask(state, generator=gen(2))
    f1 = zdt1(children)
    new = algo.tell(asked, children, f1)
    both = torch.cat([values(pop), values(children)])
    score = -torch.cat([f0, f1])
    rank = nondominated_ranks(score, 8)
    keep = survivors(rank, crowding_distance(score, rank), 8)
    assert torch.equal(values(new.population), both[keep])
    assert torch.equal(new.score, score[keep])
    assert new.rank.tolist() == rank[keep].tolist()
    # best: the compromise of the members just evaluated, with its fitness as given
    i = compromise(-f1)
    assert torch.equal(values(nf.stack([new.best]))[0], values(children)[i])
    assert torch.equal(new.best_fitness, f1[i].double())


def test_identical_parents_have_identical_children_without_mutation():
    algo = NSGA2(mutation="gaussian", mutation_prob=0.0)
    pop = nf.stack([T] * 6)
    state = algo.init(pop)
    first, asked = algo.ask(state, generator=gen(0))
    state = algo.tell(asked, first, two_spheres(first))
    children, _ = algo.ask(state, generator=gen(1))
    assert torch.equal(values(children), values(pop))


def test_children_stay_inside_the_bounds_and_mix_their_parents():
    algo = NSGA2(bounds=(-1.0, 1.0), crossover_prob=1.0, mutation_prob=0.5)
    pop = uniform_population(T, 32, -1.0, 1.0, generator=gen(0))
    state = algo.init(pop)
    first, asked = algo.ask(state, generator=gen(0))
    state = algo.tell(asked, first, two_spheres(first))
    children, _ = algo.ask(state, generator=gen(3))
    x = values(children)
    assert bool((x.abs() <= 1.0).all())
    # every child is new (crossed or mutated somewhere)
    assert not any(bool((x[i] == values(pop)).all(1).any()) for i in range(32))


def test_nsga2_converges_to_the_zdt1_front():
    d = 6
    algo = NSGA2(bounds=(0.0, 1.0), maximize=False)
    pop = uniform_population(nf.particle(nn.Linear(d, 1, bias=False)), 40, 0.0, 1.0, generator=gen(0))
    state, history = algo.run(algo.init(pop), zdt1, 150, generator=gen(0))
    assert history.best_fitness.shape == (150, 2) and history.mean_fitness.shape == (150, 2)
    front, score = algo.front(state)
    f = -score
    assert len(front) == 40  # the whole population is non-dominated
    # on the true front: g = 1, i.e. f2 = 1 - sqrt(f1)
    gap = (f[:, 1] - (1 - f[:, 0].sqrt())).abs()
    assert float(gap.max()) < 0.05
    # and spread over it: both ends reached, no hole wider than 0.15 in f1
    f1 = torch.sort(f[:, 0]).values
    assert float(f1[0]) < 0.01 and float(f1[-1]) > 0.95
    assert float((f1[1:] - f1[:-1]).max()) < 0.15


def test_maximize_per_objective():
    algo = NSGA2(maximize=(True, False))
    pop = uniform_population(T, 6, -1.0, 1.0, generator=gen(0))
    state = algo.init(pop)
    first, asked = algo.ask(state, generator=gen(0))
    f = two_spheres(first)
    state = algo.tell(asked, first, f)
    assert torch.equal(state.score, torch.stack([f[:, 0], -f[:, 1]], 1).double())


def test_nan_members_are_dominated_by_every_number():
    algo = NSGA2(maximize=False)
    pop = uniform_population(T, 4, -1.0, 1.0, generator=gen(0))
    first, asked = algo.ask(algo.init(pop), generator=gen(0))
    f = torch.tensor([[0.0, math.nan], [1.0, 1.0], [2.0, 2.0], [3.0, 0.5]])
    state = algo.tell(asked, first, f)
    assert state.rank.tolist() == [2, 0, 1, 0]  # member 0's 0.0 does not save it
    assert int(torch.nonzero(state.rank == 0)[0]) != 0


def test_nsga2_bad_input():
    with pytest.raises(ValueError, match="needs bounds"):
        NSGA2(mutation="polynomial")
    with pytest.raises(ValueError, match="mutation"):
        NSGA2(mutation="uniform")
    with pytest.raises(TypeError, match="tuple of 2 bools"):
        NSGA2(maximize=(True, False, True))
    with pytest.raises(ValueError, match="objectives"):
        NSGA2(objectives=1)
    with pytest.raises(PopulationSizeError, match="at least 2"):
        NSGA2().init(nf.stack([T]))
    algo = NSGA2()
    pop = uniform_population(T, 5, -1.0, 1.0, generator=gen(0))
    first, asked = algo.ask(algo.init(pop), generator=gen(0))
    snap = Snapshot(asked.population, asked.score, first)
    with pytest.raises(PopulationSizeError, match=r"\(5, 2\)"):
        algo.tell(asked, first, torch.zeros(5))  # [N] where [N, M] is expected
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, first, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, first, torch.full((5, 2), math.nan))
    assert snap.unchanged()
