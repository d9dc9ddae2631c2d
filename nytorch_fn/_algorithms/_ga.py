"""A genetic algorithm over a population: tournament selection, crossover, Gaussian mutation, elitism."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import torch

from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example, draw_seed, scratch_tensor, workspace
from ._common import device_of, draw, maximize_field, member_view, v_choice, v_int, v_nonneg, v_unit
from ._space import check_bounds, check_handling, enforce_bounds

_SQRT_HALF = math.sqrt(0.5)  # M_SQRT1_2


def _ndtr_(z: torch.Tensor) -> torch.Tensor:
    """``torch.special.ndtr(z)`` written into ``z``: ATen's own steps, ``(1 + erf(z * M_SQRT1_2)) * 0.5``."""
    return z.mul_(_SQRT_HALF).erf_().add_(1.0).mul_(0.5)


class GAState(NamedTuple):
    """The population of generation ``generation`` (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: the ``N`` members to evaluate next.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle


_CROSSOVERS = ("uniform", "blend", "none")
_GRANULARITIES = ("element", "tensor")


def _v_bounds(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bounds(value, "GeneticAlgorithm: bounds")


def _v_handling(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_handling(value, "GeneticAlgorithm")


@attrs.frozen(kw_only=True)
class GeneticAlgorithm(Algorithm):
    """A generational GA over a whole population, one stacked op per tensor.

    Each ``tell`` breeds ``N`` new members from the evaluated ones:

    1. **elitism**: the ``elitism`` best members (ties: the lowest index) are
       copied unchanged into the first slots;
    2. **tournament selection**: for each of the other ``M = N - elitism``
       children, two parents, each the fittest of ``tournament_size`` members
       drawn uniformly with replacement (ties: the first drawn);
    3. **crossover** (with probability ``crossover_rate`` per child, else the
       child is a copy of its first parent ``A``): ``"uniform"`` takes each
       piece from ``B`` with probability 1/2; ``"blend"`` takes
       ``A + u (B - A)`` with ``u ~ U(-blend_alpha, 1 + blend_alpha)`` per
       piece (BLX-alpha); ``"none"`` copies ``A``. A *piece* is one element
       (``granularity="element"``, the default: it mixes a one-tensor species
       too) or a whole tensor (``"tensor"``: layers stay intact);
    4. **Gaussian mutation**: each element gets ``N(0, mutation_std**2)`` noise
       with probability ``mutation_rate``; then ``bounds`` are enforced.

    Draws, in order: ``[2, M, tournament_size]`` contestants (``randint``),
    ``[M]`` crossover coins (``rand``), for ``"tensor"`` granularity ``[M, T]``
    pieces (``rand``, ``T`` operational tensors), then base seeds
    (``draw_seed``) for the per-child element noise of crossover, mutation
    noise and mutation mask (``Collective.noise``: child ``j`` is row ``j`` of
    the noise blocks; a uniform ``u`` is ``Phi(z)`` of a normal ``z``), so under
    ``sharded`` each rank draws only its own children's elements.

    Args:
        tournament_size: >= 1 (1: parents drawn uniformly at random).
        crossover: ``"uniform"``, ``"blend"`` or ``"none"``.
        granularity: ``"element"`` or ``"tensor"``.
        crossover_rate: in [0, 1].
        blend_alpha: >= 0, widens the blend interval.
        mutation_std: >= 0.
        mutation_rate: in [0, 1].
        elitism: 0 <= elitism <= N.
        bounds: ``(low, high)`` (numbers or particles) or None.
        bound_handling: ``"clip"`` or ``"reflect"``.
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> from nytorch_fn.algorithms import uniform_population
        >>> def fitness(pop):                           # [N]: minus the squared distance to 1
        ...     return -sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> g = torch.Generator().manual_seed(0)
        >>> ga = GeneticAlgorithm(tournament_size=3, crossover="blend", mutation_std=0.05, bounds=(-5, 5))
        >>> pop = uniform_population(nf.particle(nn.Linear(2, 1)), 32, -5.0, 5.0, generator=g)
        >>> state, history = ga.run(ga.init(pop), fitness, 50, generator=g)
        >>> state.generation, bool(state.best_fitness > -0.01)
        (50, True)
    """

    State = GAState
    kind = "population"

    tournament_size: int = attrs.field(default=3, validator=v_int(1))
    crossover: str = attrs.field(default="uniform", validator=v_choice(_CROSSOVERS))
    granularity: str = attrs.field(default="element", validator=v_choice(_GRANULARITIES))
    crossover_rate: float = attrs.field(default=0.9, validator=v_unit)
    blend_alpha: float = attrs.field(default=0.0, validator=v_nonneg)
    mutation_std: float = attrs.field(default=0.1, validator=v_nonneg)
    mutation_rate: float = attrs.field(default=1.0, validator=v_unit)
    elitism: int = attrs.field(default=1, validator=v_int(0))
    bounds: Any = attrs.field(default=None, validator=_v_bounds)
    bound_handling: str = attrs.field(default="clip", validator=_v_handling)
    maximize: bool = maximize_field()

    def _check_population(self, n: int) -> None:
        if self.elitism > n:
            raise ValueError(f"GeneticAlgorithm: elitism expects at most the population size {n}, got {self.elitism}")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        return {"population": enforce_bounds(x, check_bounds(self.bounds, "GeneticAlgorithm", x),
                                             self.bound_handling, donate=True)}

    def _ask(self, state: GAState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        return state.population, {}

    def _tell(self, state: GAState, population: Particle, score: torch.Tensor, *, generator: Any,
              coll: Any, donate: bool) -> dict:
        n, e = coll.n, self.elitism
        m = n - e
        dev = device_of(population)
        elites = torch.argsort(score, descending=True, stable=True)[:e]
        contestants = draw("randint", (2, m, self.tournament_size), generator, device="cpu", high=n)
        wins = score.cpu()[contestants].argmax(-1, keepdim=True)
        parents = contestants.gather(-1, wins).squeeze(-1)  # [2, m] global indices
        crossed = draw("rand", (m,), generator, device="cpu") < self.crossover_rate
        xs = operational(population)
        pieces = None
        if self.crossover != "none" and self.granularity == "tensor" and m:
            pieces = draw("rand", (m, len(xs)), generator, device="cpu", dtype=torch.float64)
        element = self.crossover != "none" and self.granularity == "element" and m
        seed_x = draw_seed(generator) if element else 0
        seed_m = draw_seed(generator) if self.mutation_std and m else 0
        seed_r = draw_seed(generator) if self.mutation_std and m and self.mutation_rate < 1.0 else 0

        rows = torch.arange(coll.rows.start, coll.rows.stop)
        child = rows - e  # child index of each local row (negative: an elite slot)
        is_elite = child < 0
        cidx = child.clamp(min=0)
        if m == 0:
            first = elites[rows]
        else:
            elite_of_row = elites[rows.clamp(max=e - 1)] if e else rows
            first = torch.where(is_elite, elite_of_row, parents[0][cidx])
        ws = workspace(donate)  # inside run: children, partners, noise and masks reuse the loop's buffers
        a = coll.take(population, first, out=ws.pop("ga.children", None) if ws is not None else None)
        b = None
        if self.crossover != "none" and m:
            b = coll.take(population, parents[1][cidx], out=ws.get("ga.partners") if ws is not None else None)
            if ws is not None:
                ws["ga.partners"] = b
        active = (~is_elite) & (crossed[cidx] if m else torch.zeros_like(is_elite))
        template = state.best

        def noise(key: str, seed: int) -> Particle:
            z = coll.noise(template, seed, out=ws.get(key) if ws is not None else None)
            if ws is not None:
                ws[key] = z
            return z

        def mask(key: str, like: torch.Tensor) -> torch.Tensor | None:
            return scratch_tensor(ws, key, like.shape, torch.bool, like.device) if ws is not None else None

        z_x = noise("ga.noise_x", seed_x) if element else None
        z_m = noise("ga.noise_m", seed_m) if seed_m else None
        z_r = noise("ga.noise_r", seed_r) if seed_r else None
        mutate = ~is_elite
        # a, b and the noise are this call's own buffers: every step below writes into them in
        # place, each the very kernel of the plain expression in the comment beside it
        results = []
        for k, i in enumerate(population.species.layout().op):
            ta = a.tensors[i]
            if not ta.is_floating_point():
                results.append(ta)
                continue
            act = member_view(active.to(dev), ta).bool()
            if b is None:  # no crossover, or every member an elite (elitism == N): no partners
                pass
            elif self.crossover == "uniform":
                tb = b.tensors[i]
                if element:
                    assert z_x is not None
                    take_b = torch.lt(z_x.tensors[i], 0, out=mask(f"ga.take{k}", ta))  # z_x < 0
                    take_b.bitwise_and_(act)  # take_b & act
                else:
                    assert pieces is not None
                    take_b = member_view((pieces[cidx, k] < 0.5).to(dev), ta).bool() & act
                torch.where(take_b, tb, ta, out=ta)  # where(take_b & act, tb, ta)
            elif self.crossover == "blend":
                tb = b.tensors[i]
                lo, width = -self.blend_alpha, 1 + 2 * self.blend_alpha
                if element:
                    assert z_x is not None
                    u = _ndtr_(z_x.tensors[i]).mul_(width).add_(lo)  # ndtr(z_x) * width + lo
                    torch.mul(u, tb.sub_(ta), out=u)  # u * (tb - ta)
                    step = torch.add(ta, u, out=u)  # ta + u * (tb - ta)
                else:
                    assert pieces is not None
                    u = member_view((pieces[cidx, k] * width + lo).to(dev), ta)
                    step = torch.add(ta, torch.mul(u, tb.sub_(ta), out=tb), out=tb)
                torch.where(act, step, ta, out=ta)  # where(act, ta + u * (tb - ta), ta)
            if z_m is not None:
                noise_t = z_m.tensors[i].mul_(self.mutation_std)  # z_m * mutation_std
                if z_r is not None:
                    keep = torch.lt(_ndtr_(z_r.tensors[i]), self.mutation_rate, out=mask(f"ga.keep{k}", ta))
                    noise_t.mul_(keep)  # noise * (ndtr(z_r) < mutation_rate)
                noise_t.mul_(member_view(mutate.to(dev), ta))  # noise * mutate
                ta.add_(noise_t)  # out + noise
            results.append(ta)
        sp = population.species
        children = build(sp, assemble(sp, a.tensors, results, None))
        bounds = check_bounds(self.bounds, "GeneticAlgorithm", template)
        if ws is not None and population is state.population:
            ws["ga.children"] = population  # donated, and now copied from: the next children's buffers
        return {"population": enforce_bounds(children, bounds, self.bound_handling, donate=True)}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(tournament_size=2, crossover="blend", blend_alpha=0.2, mutation_rate=0.5,
                           elitism=3, bounds=(-4.0, 4.0), bound_handling="reflect"), population=10)
