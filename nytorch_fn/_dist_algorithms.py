"""The population algorithms run on a sharded population, with single-process results.

``sharded(algo)`` wraps an algorithm of ``nytorch_fn.algorithms`` (APSO,
Hybrid, GeneticAlgorithm, OpenAIES, PBT). Local work runs on each rank's
block; the global step gathers the ``[N]`` fitness (``N`` numbers), draws
every random quantity for the whole population from the caller's generator
(seeded alike on every rank) and keeps the local rows, and moves members
between ranks only where the algorithm needs another member's values (the
best member, parents, PBT donors). For the same seed a run gives the same
numbers as the single-process algorithm, bit for bit on CPU (the tests
check it): every step is either elementwise per member or computed from
replicated data in the same order.

The algorithms' own pure pieces are reused (``scores``, ``draw``,
``centered_ranks``, ``Hybrid.gradient_step``, ``OpenAIES.ask/tell``,
``PBT.exploit_explore``); the GA's breeding and APSO's move are mirrored
here because their single-process ``tell`` indexes the whole population.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import attrs
import torch
from torch import nn

from ._algorithms._apso import APSO
from ._algorithms._common import check_generator, draw, member_view, noise_population, rebuild, scores, worst_fitness
from ._algorithms._es import ESState, OpenAIES
from ._algorithms._ga import GeneticAlgorithm
from ._algorithms._hybrid import Hybrid, HybridState
from ._algorithms._pbt import PBT, PBTState
from ._distributed import Shard, block_sizes, gather_fitness, member, take, world
from ._errors import describe
from ._module import particle
from ._particle import Particle, _assemble, plan


def _better(sh: Shard, best: Particle, best_fitness: torch.Tensor, f: torch.Tensor, score: torch.Tensor, maximize: bool):
    """``update_best`` over the global fitness: the new best is broadcast from its owner only when it improves."""
    i = int(torch.argmax(score))
    current = float(score[i])
    previous = float(best_fitness) if maximize else -float(best_fitness)
    if math.isnan(previous) or current > previous:
        return member(sh, i), f[i].to(torch.float64).clone()
    return best, best_fitness


# ---------------------------------------------------------------------------
# APSO
# ---------------------------------------------------------------------------


class ShardedAPSOState(NamedTuple):
    """``APSOState`` with the population sharded; ``best`` is replicated on every rank."""

    shard: Shard
    best: Particle
    best_fitness: torch.Tensor
    generation: int


@attrs.frozen
class ShardedAPSO:
    """APSO over a sharded population: ``tell`` gathers ``N`` fitness values and, when the
    best improves, broadcasts one member; the noise is drawn for all ``N`` members on every
    rank and sliced."""

    algo: APSO

    def init(self, sh: Shard) -> ShardedAPSOState:
        return ShardedAPSOState(sh, member(sh, 0), worst_fitness(self.algo.maximize, _dev(sh)), 0)

    def tell(self, state: ShardedAPSOState, local_fitness: Any, *, generator: torch.Generator | None = None) -> ShardedAPSOState:
        check_generator(generator, "ShardedAPSO.tell")
        a, sh = self.algo, state.shard
        n = sh.size
        f, score = scores(gather_fitness(sh, local_fitness), n, "ShardedAPSO.tell", maximize=a.maximize)
        best, best_fitness = _better(sh, state.best, state.best_fitness, f, score, a.maximize)
        noise = sh.block(noise_population(best, n, generator))
        alpha_t = a.alpha * a.alpha_decay ** state.generation
        moved = (1.0 - a.beta) * sh.local + a.beta * best
        if alpha_t:
            moved = moved + alpha_t * noise
        return ShardedAPSOState(sh.replace(moved), best, best_fitness, state.generation + 1)


# ---------------------------------------------------------------------------
# Hybrid: local gradient steps, a global blend every k steps
# ---------------------------------------------------------------------------


class ShardedHybridState(NamedTuple):
    """``HybridState`` with the population sharded (the optimiser state is the local block's)."""

    shard: Shard
    opt_state: Any
    count: int


@attrs.frozen
class ShardedHybrid:
    """Hybrid over a sharded population: gradient steps are purely local; every
    ``algo.every`` steps the global blend gathers ``N`` fitness values and broadcasts the
    best member (the only communication)."""

    algo: Hybrid

    def init(self, sh: Shard) -> ShardedHybridState:
        self.algo._check_subset(sh.size)
        return ShardedHybridState(sh, self.algo.optimizer.init(sh.local), 0)

    def step(
        self,
        state: ShardedHybridState,
        loss_fn: Callable[..., torch.Tensor],
        *batch: Any,
        local_fitness: Any = None,
        in_dims: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[ShardedHybridState, torch.Tensor]:
        """As ``Hybrid.step``; per-member batch arguments and ``local_fitness`` are the local
        block's. Returns the local members' losses ``[n_local]``."""
        check_generator(generator, "ShardedHybrid.step")
        a, sh = self.algo, state.shard
        new, losses = a.gradient_step(HybridState(sh.local, state.opt_state, state.count), loss_fn, *batch, in_dims=in_dims)
        local = new.population
        if new.count % a.every == 0:
            f_local = (-losses if a.maximize else losses) if local_fitness is None else local_fitness
            local = self._blend(sh.replace(local), f_local, generator)
        return ShardedHybridState(sh.replace(local), new.opt_state, new.count), losses

    def _blend(self, sh: Shard, local_fitness: Any, generator: torch.Generator | None) -> Particle:
        """Mirrors ``Hybrid.blend`` on the local rows: the best member is broadcast, the
        subset mask drawn for all ``N`` and sliced."""
        a, n = self.algo, sh.size
        a._check_subset(n)
        _, score = scores(gather_fitness(sh, local_fitness), n, "ShardedHybrid.blend", maximize=a.maximize)
        best = member(sh, int(torch.argmax(score))).tensors
        chosen = draw("randperm", None, generator, device="cpu", high=n)[: a.subset]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[chosen] = True
        mask = sh.block(mask).to(_dev(sh))
        k, alpha = len(mask), a.alpha

        def move(i: int, t: torch.Tensor) -> torch.Tensor:
            m = mask.view(k, *([1] * (t.dim() - 1)))
            return torch.where(m, alpha * best[i] + (1 - alpha) * t, t)

        return rebuild(sh.local, move, population=k)


# ---------------------------------------------------------------------------
# GA: parents cross ranks with take()
# ---------------------------------------------------------------------------


class ShardedGAState(NamedTuple):
    shard: Shard
    best: Particle
    best_fitness: torch.Tensor
    generation: int


@attrs.frozen
class ShardedGA:
    """The genetic algorithm over a sharded population.

    Selection runs on the gathered ``[N]`` fitness (replicated); the two
    parents of every local child come with two ``take`` calls (an
    ``all_to_all`` each, moving only members owned elsewhere); crossover and
    mutation noise is drawn for all children on every rank and sliced.
    Mirrors ``GeneticAlgorithm.tell`` draw for draw.
    """

    algo: GeneticAlgorithm

    def init(self, sh: Shard) -> ShardedGAState:
        self.algo._check_sizes(sh.size)
        return ShardedGAState(sh, member(sh, 0), worst_fitness(self.algo.maximize, _dev(sh)), 0)

    def tell(self, state: ShardedGAState, local_fitness: Any, *, generator: torch.Generator | None = None) -> ShardedGAState:
        check_generator(generator, "ShardedGA.tell")
        ga, sh = self.algo, state.shard
        n = sh.size
        ga._check_sizes(n)
        f, score = scores(gather_fitness(sh, local_fitness), n, "ShardedGA.tell", maximize=ga.maximize)
        best, best_fitness = _better(sh, state.best, state.best_fitness, f, score, ga.maximize)
        dev, g = _dev(sh), generator
        elites = torch.topk(score, ga.elitism, sorted=True).indices
        m = n - ga.elitism
        score = score.to(dev)
        contestants = draw("randint", (2, m, ga.tournament_size), g, device=dev, high=n)
        wins = score[contestants].argmax(-1, keepdim=True)
        parents = contestants.gather(-1, wins).squeeze(-1)
        crossed = draw("rand", (m,), g, device=dev) < ga.crossover_rate
        elites = elites.to(dev)
        # rows of the next generation: elites first, then children (global positions)
        first = take(sh, torch.cat([elites, parents[0]]).cpu()).local.tensors
        second = take(sh, torch.cat([elites, parents[1]]).cpu()).local.tensors
        lo, hi = sh.offset, sh.offset + sh.sizes[sh.world.rank]
        n_elite_local = max(0, min(hi, ga.elitism) - lo)
        c_lo, c_hi = max(lo, ga.elitism) - ga.elitism, hi - ga.elitism  # local children, as child indices
        crossed_local = crossed[c_lo:c_hi]

        def breed(t_a: torch.Tensor, t_b: torch.Tensor, shape: torch.Size) -> torch.Tensor:
            pa, pb = t_a[n_elite_local:], t_b[n_elite_local:]
            full = (m, *shape)
            if ga.crossover == "none" or m == 0:
                child = pa
            else:
                dshape = full if ga.granularity == "element" else (m, *([1] * len(shape)))
                if ga.crossover == "uniform":
                    take_b = (draw("rand", dshape, g, dtype=t_a.dtype, device=dev) < 0.5)[c_lo:c_hi]
                    child = torch.where(take_b & member_view(crossed_local, pa).bool(), pb, pa)
                else:
                    u = draw("rand", dshape, g, dtype=t_a.dtype, device=dev) * (1 + 2 * ga.blend_alpha) + (-ga.blend_alpha)
                    u = u[c_lo:c_hi] * member_view(crossed_local, pa)
                    child = pa + u * (pb - pa)
            if ga.mutation_std and m:
                noise = draw("randn", full, g, dtype=t_a.dtype, device=dev) * ga.mutation_std
                if ga.mutation_rate < 1.0:
                    noise = noise * (draw("rand", full, g, dtype=t_a.dtype, device=dev) < ga.mutation_rate)
                child = child + noise[c_lo:c_hi]
            return torch.cat([t_a[:n_elite_local], child])

        sp = sh.species
        leaves = sh.local.tensors
        results = []
        for i in plan(sp).op:
            t = leaves[i]
            results.append(breed(first[i], second[i], t.shape[1:]) if t.is_floating_point() else t.clone())
        local = Particle._make(sp, _assemble(sp, leaves, results, len(sh.local)))
        return ShardedGAState(sh.replace(local), best, best_fitness, state.generation + 1)


# ---------------------------------------------------------------------------
# OpenAI-ES: only N fitness values cross ranks
# ---------------------------------------------------------------------------


class ShardedESState(NamedTuple):
    """``ESState`` (replicated on every rank: mean, optimiser state, the last noise) and the layout."""

    es: ESState
    sizes: tuple[int, ...]


@attrs.frozen
class ShardedES:
    """OpenAI-ES with the evaluation sharded: every rank draws the whole noise (shared
    seed), evaluates its block of members, and ``tell`` gathers the ``N`` fitness values;
    the mean update is then computed identically on every rank (no parameter traffic)."""

    algo: OpenAIES

    def init(self, mean: Particle, *, group: Any = None) -> ShardedESState:
        w = world(group)
        return ShardedESState(self.algo.init(mean), block_sizes(self.algo.population_size, w.size))

    def ask(self, state: ShardedESState, *, generator: torch.Generator | None = None, group: Any = None) -> tuple[Shard, ShardedESState]:
        pop, asked = self.algo.ask(state.es, generator=generator)
        w = world(group)
        off = sum(state.sizes[: w.rank])
        local = pop[off:off + state.sizes[w.rank]]
        return Shard(local, state.sizes, w), state._replace(es=asked)

    def tell(self, state: ShardedESState, sh: Shard, local_fitness: Any) -> ShardedESState:
        f = gather_fitness(sh, local_fitness)
        return state._replace(es=self.algo.tell(state.es, f))


# ---------------------------------------------------------------------------
# PBT: donors cross ranks with take()
# ---------------------------------------------------------------------------


class _Slot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(0))


_stand_in: list[Particle] = []


def _index_population(n: int, device: torch.device) -> Particle:
    """A population of ``n`` members with no values (``[n, 0]``): lets ``PBT.exploit_explore``
    compute ``source`` and the new hyperparameters without touching parameters."""
    if not _stand_in:
        _stand_in.append(particle(_Slot()))
    p = _stand_in[0]
    return Particle._make(p.species, [torch.empty(n, 0, device=device)])


class ShardedPBTState(NamedTuple):
    """``PBTState`` with the population sharded; ``hyperparams`` and ``source`` are
    global ``[N]`` vectors, replicated (use ``shard.block(v)`` for the local members')."""

    shard: Shard
    hyperparams: dict
    source: torch.Tensor
    generation: int


@attrs.frozen
class ShardedPBT:
    """PBT over a sharded population: ``PBT.exploit_explore`` itself decides (on the
    gathered fitness, with replicated hyperparameters); members then move with one
    ``take`` (an ``all_to_all`` carrying only the copied members)."""

    algo: PBT

    def init(self, sh: Shard, hyperparams: Any) -> ShardedPBTState:
        st = self.algo.init(_index_population(sh.size, _dev(sh)), hyperparams)
        return ShardedPBTState(sh, st.hyperparams, st.source, 0)

    def exploit_explore(
        self, state: ShardedPBTState, local_fitness: Any, *, generator: torch.Generator | None = None
    ) -> ShardedPBTState:
        sh = state.shard
        f = gather_fitness(sh, local_fitness)
        st = PBTState(_index_population(sh.size, _dev(sh)), state.hyperparams, state.source, state.generation)
        new = self.algo.exploit_explore(st, f, generator=generator)
        moved = take(sh, new.source.cpu()).local.tensors
        sp = sh.species
        results = [moved[i] for i in plan(sp).op]
        local = Particle._make(sp, _assemble(sp, sh.local.tensors, results, len(sh.local)))
        return ShardedPBTState(sh.replace(local), new.hyperparams, new.source, new.generation)


def sharded(algo: Any) -> Any:
    """The sharded counterpart of an algorithm of ``nytorch_fn.algorithms``.

    Example:
        >>> s_apso = sharded(APSO(alpha=0.3, beta=0.5, maximize=False))
        >>> state = s_apso.init(shard(pop))
        >>> state = s_apso.tell(state, loss_fn(state.shard.local), generator=g)   # g seeded alike on every rank
    """
    table = {APSO: ShardedAPSO, Hybrid: ShardedHybrid, GeneticAlgorithm: ShardedGA, OpenAIES: ShardedES, PBT: ShardedPBT}
    cls = table.get(type(algo))
    if cls is None:
        raise TypeError(f"sharded: expected APSO, Hybrid, GeneticAlgorithm, OpenAIES or PBT, got {describe(algo)}")
    return cls(algo)


def _dev(sh: Shard) -> torch.device:
    return sh.local.tensors[0].device if sh.local.tensors else torch.device("cpu")
