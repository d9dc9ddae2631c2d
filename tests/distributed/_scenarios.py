"""The model, data, populations and algorithm runs shared by the workers (sharded) and
the tests (single-process references). Everything is seeded; nothing uses global RNG."""

from __future__ import annotations

import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import algorithms as alg

STEPS = 3
GENERATIONS = 3


def template() -> nf.Particle:
    """A small MLP plus a float64 parameter (two dtype groups to pack)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    p = nf.particle(net)
    sp = p.species.add_param("scale", torch.ones(2, dtype=torch.float64))
    return nf.migrate(p, sp)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)


def population(tpl: nf.Particle, n: int) -> nf.Particle:
    return nf.random_population(tpl, n, generator=torch.Generator().manual_seed(2))


def losses(pop: nf.Particle) -> torch.Tensor:
    """``[n]`` mean squared error per member (vmap over whatever block it is given)."""
    x, y = data()
    out = nf.vmap_apply(pop, x)
    scale = pop.params["scale"].sum(1, keepdim=True).unsqueeze(-1).to(out.dtype) / 2
    return ((out * scale - y) ** 2).mean((1, 2))


def member_loss(p: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((nf.apply(p, x) - y) ** 2).mean()


def algo_template() -> nf.Particle:
    """The protocol tests' species: a float32 Linear(3, 2), a float64 parameter, a non-operational one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        p = nf.particle(nn.Linear(3, 2))
    sp = p.species.add_param("scale", torch.full((2,), 0.25, dtype=torch.float64))
    sp = sp.add_param("frozen", torch.arange(3.0)).with_config("frozen", operational=False)
    return nf.migrate(p, sp)


def fitness_fn(objectives: int = 1):
    """Per member (works on any block): minus the squared distance to 0.5 (and to -0.5, ...)."""

    def one(pop: nf.Particle, c: float) -> torch.Tensor:
        xs = [pop.tensors[i] for i in pop.species.layout().op]
        return -sum(((t.double() - c) ** 2).flatten(1).sum(1) for t in xs)

    def f(pop: nf.Particle) -> torch.Tensor:
        if objectives == 1:
            return one(pop, 0.5)
        return torch.stack([one(pop, 0.5), one(pop, -0.5)] + [one(pop, 0.1 * k) for k in range(objectives - 2)], 1)

    return f


def algorithm_cases() -> dict:
    """name -> (algorithm, x, objectives, exact) for every registered algorithm, plus the
    OpenAI-ES with its default (fast, inexact) gradient sum."""
    out = {}
    tpl = algo_template()
    for name, cls in sorted(alg.ALGORITHMS.items()):
        ex = cls._example()
        a = ex.algorithm
        x = tpl if a.kind == "distribution" else nf.random_population(
            tpl, ex.population, generator=torch.Generator().manual_seed(2))
        out[name] = (a, x, ex.objectives, ex.exact)
    es = alg.OpenAIES(population_size=10, sigma=0.1)
    out["OpenAIES(fast sum)"] = (es, tpl, 1, False)
    # restarts every generation (tolx far above any step): the population grows 6 -> 12 -> 24,
    # so every rank's block changes size between generations
    for name, cls, inner in (("IPOP", alg.IPOP, alg.CMAES(population_size=6, sigma=0.5)),
                             ("BIPOP", alg.BIPOP, alg.SepCMAES(population_size=6, sigma=0.5, exact=True))):
        out[f"{name}(restarts)"] = (cls(algorithm=inner, tolx=1e9, max_restarts=2), tpl, 1, True)
    return out


def run_case(algo, x, objectives: int, generations: int = GENERATIONS):
    """``generations`` of ``algo`` (sharded or not) from fixed seeds: the final state."""
    g = torch.Generator().manual_seed(3)
    state = algo.init(x, generator=g)
    state, _ = algo.run(state, fitness_fn(objectives), generations, generator=g)
    return state


def fault_algorithm():
    """The APSO of the fault tests (minimises ``losses``)."""
    return alg.APSO(alpha=0.3, beta=0.4, alpha_decay=0.9, maximize=False)
