"""A genetic algorithm over a population: tournament selection, crossover, Gaussian mutation, elitism."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._particle import Particle
from ._common import (
    check_bool,
    check_generator,
    check_int,
    check_real,
    draw,
    member_view,
    rebuild,
    require_population,
    scores,
    update_best,
    worst_fitness,
)


class GAState(NamedTuple):
    """The population of generation ``generation`` (a pytree).

    Attributes:
        population: the ``N`` members to evaluate next.
        best: the best member seen so far (single particle).
        best_fitness: its fitness (0-d float64; the worst value before the first ``tell``).
        generation: how many times ``tell`` has bred a new population.
    """

    population: Particle
    best: Particle
    best_fitness: torch.Tensor
    generation: int


_CROSSOVERS = ("uniform", "blend", "none")
_GRANULARITIES = ("tensor", "element")


def _v_int0(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, f"GeneticAlgorithm: {attribute.name}", low=0)


def _v_int1(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, f"GeneticAlgorithm: {attribute.name}", low=1)


def _v_unit(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"GeneticAlgorithm: {attribute.name}", low=0.0, high=1.0)


def _v_nonneg(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"GeneticAlgorithm: {attribute.name}", low=0.0)


def _v_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, f"GeneticAlgorithm: {attribute.name}")


def _v_choice(choices: tuple[str, ...]) -> Callable:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"GeneticAlgorithm: {attribute.name} expects one of {list(choices)}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class GeneticAlgorithm:
    """A generational GA over a whole population, one stacked op per tensor.

    Each ``tell`` breeds ``N`` new members from the evaluated ones:

    1. **elitism**: the ``elitism`` best members are copied unchanged into
       the first slots;
    2. **tournament selection**: for each of the other ``N - elitism``
       children, two parents, each the fittest of ``tournament_size``
       members drawn uniformly with replacement;
    3. **crossover** (with probability ``crossover_rate`` per child, else the
       child is a copy of its first parent): ``"uniform"`` takes each piece
       from either parent with probability 1/2; ``"blend"`` takes
       ``A + u (B - A)`` with ``u ~ U(-blend_alpha, 1 + blend_alpha)``
       (BLX-alpha); a *piece* is a whole tensor (``granularity="tensor"``:
       one draw per child per parameter, so layers stay intact) or one
       element (``"element"``); ``"none"`` copies the first parent;
    4. **Gaussian mutation**: each element gets ``N(0, mutation_std**2)``
       noise with probability ``mutation_rate``.

    Non-operational parameters are left as they are; fitness follows the
    package convention (higher is better unless ``maximize=False``; NaN is
    the worst and never wins a tournament against a number).

    Args (keyword-only):
        tournament_size: >= 1 (1: parents drawn uniformly at random).
        crossover: ``"uniform"``, ``"blend"`` or ``"none"``.
        granularity: ``"tensor"`` or ``"element"``.
        crossover_rate: in [0, 1].
        blend_alpha: >= 0, widens the blend interval.
        mutation_std: >= 0.
        mutation_rate: in [0, 1].
        elitism: 0 <= elitism <= N.
        maximize: higher fitness is better (default) or lower.

    Example:
        >>> ga = GeneticAlgorithm(tournament_size=3, crossover="blend", mutation_std=0.05)
        >>> state = ga.init(pop)
        >>> for _ in range(50):
        ...     state, fitness = ga.step(state, fitness_fn, generator=g)   # fitness_fn: pop -> [N]
    """

    tournament_size: int = attrs.field(default=3, validator=_v_int1)
    crossover: str = attrs.field(default="uniform", validator=_v_choice(_CROSSOVERS))
    granularity: str = attrs.field(default="tensor", validator=_v_choice(_GRANULARITIES))
    crossover_rate: float = attrs.field(default=0.9, validator=_v_unit)
    blend_alpha: float = attrs.field(default=0.0, validator=_v_nonneg)
    mutation_std: float = attrs.field(default=0.1, validator=_v_nonneg)
    mutation_rate: float = attrs.field(default=1.0, validator=_v_unit)
    elitism: int = attrs.field(default=1, validator=_v_int0)
    maximize: bool = attrs.field(default=True, validator=_v_flag)

    def init(self, population: Particle) -> GAState:
        """The first generation: ``population`` (checks ``elitism <= N``)."""
        n = require_population(population, "GeneticAlgorithm.init")
        self._check_sizes(n)
        device = population.tensors[0].device if population.tensors else None
        return GAState(population, population[0].clone(), worst_fitness(self.maximize, device), 0)

    def _check_sizes(self, n: int) -> None:
        if self.elitism > n:
            raise ValueError(f"GeneticAlgorithm: elitism expects at most the population size {n}, got {self.elitism}")

    def ask(self, state: GAState) -> Particle:
        """The members to evaluate: ``state.population``."""
        return state.population

    def tell(self, state: GAState, fitness: Any, *, generator: torch.Generator | None = None) -> GAState:
        """Record the fitness of ``state.population`` and breed the next generation.

        Raises:
            PopulationSizeError: ``fitness`` is not of shape ``[N]``.
            ValueError: ``fitness`` is NaN everywhere.
        """
        check_generator(generator, "GeneticAlgorithm.tell")
        pop = state.population
        n = require_population(pop, "GeneticAlgorithm.tell")
        self._check_sizes(n)
        f, score = scores(fitness, n, "GeneticAlgorithm.tell", maximize=self.maximize)
        best, best_fitness = update_best(state.best, state.best_fitness, pop, f, score, maximize=self.maximize)
        dev = pop.tensors[0].device if pop.tensors else torch.device("cpu")
        elites, (a, b), crossed = self._select(score, generator, device=dev)

        def breed(i: int, t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[elites], self._breed(t[a], t[b], crossed, generator, device=dev)])

        return GAState(rebuild(pop, breed, population=n), best, best_fitness, state.generation + 1)

    def _select(
        self, score: torch.Tensor, generator: torch.Generator | None, *, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Elitism, tournaments and the crossover coin for a generation: the draws of ``tell``
        that come before breeding.

        Args:
            score: ``[N]`` float64, higher is better, NaN already the worst (``scores``).
            generator: draws ``[2, M, tournament_size]`` contestants, then ``[M]`` coins
                (``M = N - elitism`` children).

        Returns:
            ``(elites [elitism], parents [2, M], crossed [M] bool)``: indices of the members
            copied unchanged, of each child's two parents, and which children cross over;
            all on ``device``.
        """
        n = score.shape[0]
        m = n - self.elitism
        elites = torch.topk(score, self.elitism, sorted=True).indices
        # tournaments: [2, m, size] contestants, the best of each row wins
        score = score.to(device)
        contestants = draw("randint", (2, m, self.tournament_size), generator, device=device, high=n)
        wins = score[contestants].argmax(-1, keepdim=True)
        parents = contestants.gather(-1, wins).squeeze(-1)
        crossed = draw("rand", (m,), generator, device=device) < self.crossover_rate
        return elites.to(device), parents, crossed

    def _breed(
        self,
        pa: torch.Tensor,
        pb: torch.Tensor,
        crossed: torch.Tensor,
        generator: torch.Generator | None,
        *,
        device: Any,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        """Crossover and mutation of one parameter for rows ``rows`` of the ``M`` children.

        Every draw is made for all ``M = len(crossed)`` children (so the generator
        advances as in ``tell``) and the ``rows`` are kept: a shard breeds its own
        children with the same numbers as the whole population.

        Args:
            pa, pb: the first and second parent of each child in ``rows`` (``[k, ...]``).
            crossed: ``[M]`` bool from ``_select``.
            rows: which children ``pa``/``pb`` hold (all of them by default).

        Returns:
            The ``k`` children, ``[k, ...]``.
        """
        m = crossed.shape[0]
        full = (m, *pa.shape[1:])
        if self.crossover == "none" or m == 0:
            child = pa
        else:
            shape = full if self.granularity == "element" else (m, *([1] * (pa.dim() - 1)))
            crossed = crossed[rows]
            if self.crossover == "uniform":
                take_b = (draw("rand", shape, generator, dtype=pa.dtype, device=device) < 0.5)[rows]
                child = torch.where(take_b & member_view(crossed, pa).bool(), pb, pa)
            else:
                lo = -self.blend_alpha
                u = draw("rand", shape, generator, dtype=pa.dtype, device=device) * (1 + 2 * self.blend_alpha) + lo
                u = u[rows] * member_view(crossed, pa)
                child = pa + u * (pb - pa)
        if self.mutation_std and m:
            noise = draw("randn", full, generator, dtype=pa.dtype, device=device) * self.mutation_std
            if self.mutation_rate < 1.0:
                noise = noise * (draw("rand", full, generator, dtype=pa.dtype, device=device) < self.mutation_rate)
            child = child + noise[rows]
        return child

    def step(
        self, state: GAState, fitness_fn: Callable[[Particle], Any], *, generator: torch.Generator | None = None
    ) -> tuple[GAState, torch.Tensor]:
        """``ask``, evaluate ``fitness_fn(population) -> [N]``, ``tell``; returns the new
        state and the fitness of the members just evaluated."""
        pop = self.ask(state)
        fitness = fitness_fn(pop)
        return self.tell(state, fitness, generator=generator), fitness
