"""``run``'s scratch buffers (``_base.workspace``): a donated loop reuses its temporaries, and the
values are those of the plain ``step`` loop, bit for bit, on configurations the protocol
examples do not cover (reflected bounds, a float64 state over float32 parameters, several
tensors per member, elitism that keeps every member)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import algorithms as alg
from nytorch_fn._algorithms._base import workspace
from nytorch_fn._algorithms._space import enforce_bounds


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)
        self.w = nn.Parameter(torch.randn(3, 5))


def template() -> nf.Particle:
    torch.manual_seed(0)
    return nf.particle(Two())


def fitness(pop: nf.Particle) -> torch.Tensor:
    return -sum(((t.double() - 0.3) ** 2).flatten(1).sum(1) for t in pop.tensors)


def two_objectives(pop: nf.Particle) -> torch.Tensor:
    return torch.stack([fitness(pop), -sum(((t.double() + 0.2) ** 2).flatten(1).sum(1) for t in pop.tensors)], 1)


CASES = {
    "DE reflect CR=0.6": alg.DE(bounds=(-1.0, 1.0), bound_handling="reflect", crossover_rate=0.6),
    "DE rand/1 CR=1": alg.DE(crossover_rate=1.0),
    "DE current-to-best": alg.DE(strategy="current-to-best/1/bin", bounds=(-1.0, 1.0)),
    "PSO per value, reflect": alg.PSO(bounds=(-0.5, 0.5), bound_handling="reflect"),
    "PSO per member": alg.PSO(per_dimension=False),
    "GA uniform, element": alg.GeneticAlgorithm(crossover="uniform", mutation_rate=0.4, bounds=(-1.0, 1.0)),
    "GA blend, tensor": alg.GeneticAlgorithm(crossover="blend", granularity="tensor", blend_alpha=0.2),
    "GA none, reflect": alg.GeneticAlgorithm(crossover="none", bounds=(-0.2, 0.2), bound_handling="reflect"),
    "GA every member elite": alg.GeneticAlgorithm(crossover="blend", elitism=10),
    "SepCMAES float64 over float32": alg.SepCMAES(population_size=10, sigma=0.3),
    "SepCMAES float32 exact": alg.SepCMAES(population_size=10, sigma=0.3, dtype=torch.float32, exact=True),
    "LMMAES float64 over float32": alg.LMMAES(population_size=10, sigma=0.3),
    "LMMAES exact": alg.LMMAES(population_size=10, sigma=0.3, exact=True),
    "NSGA2 polynomial": alg.NSGA2(bounds=(-1.0, 1.0), mutation="polynomial", mutation_prob=0.4),
    "NSGA2 gaussian, reflect": alg.NSGA2(bounds=(-1.0, 1.0), bound_handling="reflect", mutation="gaussian",
                                         mutation_prob=0.3, crossover_prob=0.6),
    "Hybrid": alg.Hybrid(loss=lambda p: sum(((t.double() - 0.5) ** 2).sum() for t in p.tensors), every=2, subset=4),
}


def _start(algo):
    p = template()
    if algo.kind == "distribution":
        return p
    return nf.random_population(p, 10, generator=torch.Generator().manual_seed(1))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8) if t.is_floating_point() else t


@pytest.mark.parametrize("name", sorted(CASES))
def test_run_with_its_workspace_equals_plain_steps(name):
    algo = CASES[name]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = _start(algo)
    f = two_objectives if algo.multi_objective else fitness
    ran, _ = algo.run(algo.init(x, generator=g1), f, 8, generator=g1)
    stepped = algo.init(x, generator=g2)
    for _ in range(8):
        stepped, _ = algo.step(stepped, f, generator=g2)
    for field in ("best", "population", "mean", "m", "c", "sigma", "score"):
        if field not in type(ran)._fields:
            continue
        a, b = getattr(ran, field), getattr(stepped, field)
        ta = a.tensors if isinstance(a, nf.Particle) else [a]
        tb = b.tensors if isinstance(b, nf.Particle) else [b]
        for u, v in zip(ta, tb):
            assert u.dtype == v.dtype and u.shape == v.shape, (name, field)
            assert torch.equal(_bits(u), _bits(v)), (name, field)
    assert torch.equal(ran.best_fitness, stepped.best_fitness)


def test_the_workspace_is_seen_by_runs_own_ask_and_tell_only():
    seen = []

    def probe(pop):
        seen.append(workspace(True))
        return fitness(pop)

    algo = alg.DE()
    state = algo.init(_start(algo), generator=torch.Generator().manual_seed(0))
    algo.run(state, probe, 3, generator=torch.Generator().manual_seed(0))
    assert seen == [None, None, None]  # not inside fitness_fn
    assert workspace(True) is None and workspace(False) is None  # nor after the loop


def test_reflect_in_place_gives_the_bits_of_the_fresh_result():
    pop = nf.random_population(template(), 16, generator=torch.Generator().manual_seed(2)) * 3.0
    lo = nf.random_population(template(), 1, generator=torch.Generator().manual_seed(3))[0] * 0.1 - 1.0
    for bounds in ((-1.0, 1.0), (0.5, 0.5), (lo, lo + 2.0)):
        fresh = enforce_bounds(pop, bounds, "reflect")
        owned = enforce_bounds(pop.clone(), bounds, "reflect", donate=True)
        for u, v in zip(fresh.tensors, owned.tensors):
            assert torch.equal(_bits(u), _bits(v))
        if bounds == (-1.0, 1.0):
            assert all(float(t.min()) >= -1.0 and float(t.max()) <= 1.0 for t in owned.tensors)
    before = [t.clone() for t in pop.tensors]
    enforce_bounds(pop, (-1.0, 1.0), "reflect")  # not donated: the input is left as it was
    assert all(torch.equal(a, b) for a, b in zip(before, pop.tensors))
