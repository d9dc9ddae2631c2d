"""The population algorithms run on a sharded population, with single-process results.

``sharded(algo)`` wraps an algorithm of ``nytorch_fn.algorithms`` (APSO,
Hybrid, GeneticAlgorithm, OpenAIES, PBT). Local work runs on each rank's
block; the global step gathers the ``[N]`` fitness (``N`` numbers), draws
every random quantity for the whole population from the caller's generator
(seeded alike on every rank) and keeps the local rows (except the ES noise:
one base seed per generation, then each rank draws only its own members'
rows from per-member streams), and moves members
between ranks only where the algorithm needs another member's values (the
best member, parents, PBT donors). For the same seed a run gives the same
numbers as the single-process algorithm, bit for bit on CPU (the tests
check it): every step is either elementwise per member, computed from
replicated data in the same order, or (the ES mean update) an exact int64
fixed-point sum, which any split over ranks reproduces.

Each algorithm's math lives in its single-process class and is called
from here, never copied: ``update_best``, ``APSO._move``,
``Hybrid.gradient_step/_choose/_blend_toward``, ``GeneticAlgorithm._select/_breed``
(draws for all children, keeps a shard's rows), ``OpenAIES._ask_rows/_move``
(each rank draws only its members' noise from per-member streams) and
``PBT.exploit_explore``. This module only decides which rows are local and
which members must cross ranks.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch
from torch import nn

from ._algorithms._apso import APSO
from ._algorithms._common import check_generator, rebuild, scores, update_best, worst_fitness
from ._algorithms._es import ESState, OpenAIES, quantized_sum
from ._fitness import centered_ranks
from ._algorithms._ga import GeneticAlgorithm
from ._algorithms._hybrid import Hybrid, HybridState
from ._algorithms._pbt import PBT, PBTState
from ._distributed import Shard, _all_reduce, _device_of, block_sizes, gather_fitness, member, take, world
from ._errors import describe
from ._module import particle
from ._particle import Particle, build
from ._population import random_population


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
        return ShardedAPSOState(sh, member(sh, 0), worst_fitness(self.algo.maximize, _device_of(sh.local)), 0)

    def tell(self, state: ShardedAPSOState, local_fitness: Any, *, generator: torch.Generator | None = None) -> ShardedAPSOState:
        check_generator(generator, "ShardedAPSO.tell")
        a, sh = self.algo, state.shard
        n = sh.size
        f, score = scores(gather_fitness(sh, local_fitness), n, "ShardedAPSO.tell", maximize=a.maximize)
        best, best_fitness = update_best(
            state.best, state.best_fitness, lambda i: member(sh, i), f, score, maximize=a.maximize
        )
        noise = sh.block(random_population(best, n, generator=generator))
        moved = a._move(sh.local, best, noise, state.generation)
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
            local = self._blend(sh.replace(local), a._blend_fitness(losses, local_fitness), generator)
        return ShardedHybridState(sh.replace(local), new.opt_state, new.count), losses

    def _blend(self, sh: Shard, local_fitness: Any, generator: torch.Generator | None) -> Particle:
        """``Hybrid.blend`` on the local rows: the best member is broadcast, the subset mask
        drawn for all ``N`` and sliced."""
        a = self.algo
        best, mask = a._choose(gather_fitness(sh, local_fitness), sh.size, generator, "ShardedHybrid.blend")
        return a._blend_toward(sh.local, member(sh, best), sh.block(mask).to(_device_of(sh.local)))


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
        return ShardedGAState(sh, member(sh, 0), worst_fitness(self.algo.maximize, _device_of(sh.local)), 0)

    def tell(self, state: ShardedGAState, local_fitness: Any, *, generator: torch.Generator | None = None) -> ShardedGAState:
        check_generator(generator, "ShardedGA.tell")
        ga, sh = self.algo, state.shard
        n = sh.size
        ga._check_sizes(n)
        f, score = scores(gather_fitness(sh, local_fitness), n, "ShardedGA.tell", maximize=ga.maximize)
        best, best_fitness = update_best(
            state.best, state.best_fitness, lambda i: member(sh, i), f, score, maximize=ga.maximize
        )
        dev = _device_of(sh.local)
        elites, parents, crossed = ga._select(score, generator, device=dev)
        # rows of the next generation: elites first, then children (global positions)
        first = take(sh, torch.cat([elites, parents[0]]).cpu()).local.tensors
        second = take(sh, torch.cat([elites, parents[1]]).cpu()).local.tensors
        lo, hi = sh.offset, sh.offset + sh.sizes[sh.world.rank]
        n_elite_local = max(0, min(hi, ga.elitism) - lo)
        # local children, as child indices (none where the whole block is elites)
        rows = slice(max(lo, ga.elitism) - ga.elitism, max(hi, ga.elitism) - ga.elitism)

        def breed(i: int, t: torch.Tensor) -> torch.Tensor:
            pa, pb = first[i][n_elite_local:], second[i][n_elite_local:]
            child = ga._breed(pa, pb, crossed, generator, device=dev, rows=rows)
            return torch.cat([first[i][:n_elite_local], child])

        local = rebuild(sh.local, breed, population=len(sh.local))
        return ShardedGAState(sh.replace(local), best, best_fitness, state.generation + 1)


# ---------------------------------------------------------------------------
# OpenAI-ES: only N fitness values cross ranks
# ---------------------------------------------------------------------------


class ShardedESState(NamedTuple):
    """``ESState`` (replicated on every rank: mean, optimiser state, best, base seed; ``noise``
    holds the LOCAL members' rows only) and the layout."""

    es: ESState
    sizes: tuple[int, ...]


@attrs.frozen
class ShardedES:
    """OpenAI-ES with the evaluation sharded: every rank draws one base seed from the shared
    generator and only its own members' noise (per-member streams, ``OpenAIES.ask``);
    ``tell`` gathers the ``N`` fitness values and all-reduces the exact fixed-point sums
    ``sum_i r_i eps_i`` (``P`` int64 values), so the mean update is the single-process one bit
    for bit; the best member is redrawn from its stream on every rank (no parameter traffic)."""

    algo: OpenAIES

    def init(self, mean: Particle, *, group: Any = None) -> ShardedESState:
        w = world(group)
        return ShardedESState(self.algo.init(mean), block_sizes(self.algo.population_size, w.size))

    def ask(self, state: ShardedESState, *, generator: torch.Generator | None = None, group: Any = None) -> tuple[Shard, ShardedESState]:
        w = world(group)
        off = sum(state.sizes[: w.rank])
        local, asked = self.algo._ask_rows(state.es, range(off, off + state.sizes[w.rank]), generator=generator)
        return Shard(local, state.sizes, w), state._replace(es=asked)

    def tell(self, state: ShardedESState, sh: Shard, local_fitness: Any) -> ShardedESState:
        a, es = self.algo, state.es
        a._check_asked(es)
        f = gather_fitness(sh, local_fitness)
        n = a.population_size
        f, score = scores(f, n, "ShardedES.tell", maximize=a.maximize)
        shaped = centered_ranks(f, maximize=a.maximize)
        local = quantized_sum(es.noise, sh.block(shaped), n)
        flat = torch.cat([q.reshape(-1) for q in local]) if local else torch.zeros(0, dtype=torch.int64)
        _all_reduce(sh.world, flat, op="all_reduce(es)")
        total, off = [], 0
        for q in local:
            total.append(flat[off:off + q.numel()].view(q.shape))
            off += q.numel()
        return state._replace(es=a._move(es, f, score, lambda i: a._member(es, i), total))


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
    return build(p.species, [torch.empty(n, 0, device=device)])


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
        st = self.algo.init(_index_population(sh.size, _device_of(sh.local)), hyperparams)
        return ShardedPBTState(sh, st.hyperparams, st.source, 0)

    def exploit_explore(
        self, state: ShardedPBTState, local_fitness: Any, *, generator: torch.Generator | None = None
    ) -> ShardedPBTState:
        sh = state.shard
        f = gather_fitness(sh, local_fitness)
        st = PBTState(_index_population(sh.size, _device_of(sh.local)), state.hyperparams, state.source, state.generation)
        new = self.algo.exploit_explore(st, f, generator=generator)
        moved = take(sh, new.source.cpu()).local.tensors
        local = rebuild(sh.local, lambda i, t: moved[i], population=len(sh.local))
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

