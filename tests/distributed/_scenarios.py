"""The model, data, population and algorithm runs shared by the workers (sharded) and
the tests (single-process references). Everything is seeded; nothing uses global RNG."""

from __future__ import annotations

import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import algorithms as alg
from nytorch_fn import optim

STEPS = 3


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


def algorithms() -> dict:
    """name -> algorithm (every one minimises the loss)."""
    return {
        "apso": alg.APSO(alpha=0.3, beta=0.4, alpha_decay=0.9, maximize=False),
        "ga_uniform": alg.GeneticAlgorithm(tournament_size=3, elitism=2, maximize=False),
        "ga_blend": alg.GeneticAlgorithm(
            tournament_size=2, crossover="blend", granularity="element", blend_alpha=0.2,
            mutation_rate=0.5, elitism=1, maximize=False,
        ),
        # 4 elites fill rank 0's whole block (and spill into rank 1's) on 4 ranks of 10
        "ga_elite": alg.GeneticAlgorithm(
            tournament_size=2, granularity="element", mutation_rate=0.5, elitism=4, maximize=False,
        ),
        "es": alg.OpenAIES(population_size=10, sigma=0.1, maximize=False),
        "hybrid": alg.Hybrid(optim.sgd(0.05, momentum=0.9), every=2, subset=3, alpha=0.5, maximize=True),
        "pbt": alg.PBT(fraction=0.25, bounds={"lr": (1e-3, 1.0)}, maximize=False),
    }


def hyper(n: int) -> dict:
    return {"lr": torch.logspace(-2, -1, n, dtype=torch.float64)}


def pbt_train(pop: nf.Particle, lr: torch.Tensor) -> nf.Particle:
    """One SGD step per member with its own learning rate (works on any block)."""
    x, y = data()
    grads = torch.func.vmap(torch.func.grad(member_loss), in_dims=(0, None, None))(pop, x, y)
    return pop - grads * lr.to(torch.float32)


def run_single(name: str, n: int) -> dict:
    """The single-process reference: the final population (or ES mean) and best fitness."""
    tpl = template()
    a = algorithms()[name]
    g = torch.Generator().manual_seed(3)
    x, y = data()
    if name == "es":
        st = a.init(tpl)
        for _ in range(STEPS):
            st, _ = a.step(st, losses, generator=g)
        return {"mean": list(st.mean.tensors), "best": list(st.best.tensors), "best_fitness": st.best_fitness}
    pop = population(tpl, n)
    if name == "hybrid":
        st = a.init(pop)
        for _ in range(2 * STEPS):
            st, _ = a.step(st, member_loss, x, y, generator=g)
        return {"pop": list(st.population.tensors)}
    if name == "pbt":
        st = a.init(pop, hyper(n))
        for _ in range(STEPS):
            st = st._replace(population=pbt_train(st.population, st.hyperparams["lr"]))
            st = a.exploit_explore(st, losses(st.population), generator=g)
        return {"pop": list(st.population.tensors), "lr": st.hyperparams["lr"], "source": st.source}
    st = a.init(pop)
    for _ in range(STEPS):
        st, _ = a.step(st, losses, generator=g)
    return {"pop": list(st.population.tensors), "best": list(st.best.tensors), "best_fitness": st.best_fitness}
