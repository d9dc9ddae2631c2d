"""Accelerated particle swarm optimisation (APSO), as in the legacy nytorch docs."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._particle import Particle
from .._population import random_population
from ._common import (
    check_bool,
    check_generator,
    check_real,
    require_population,
    scores,
    update_best,
    worst_fitness,
)


class APSOState(NamedTuple):
    """The swarm after ``generation`` moves (a pytree).

    Attributes:
        population: the ``N`` members to evaluate next (``[N, ...]`` per tensor).
        best: the best member seen so far (a single particle; before the first
            ``tell`` a copy of member 0 with fitness ``best_fitness`` = worst).
        best_fitness: its fitness, a 0-d float64 tensor (``-inf``/``+inf`` before
            the first ``tell``).
        generation: how many times ``tell`` has moved the swarm.
    """

    population: Particle
    best: Particle
    best_fitness: torch.Tensor
    generation: int


def _check_alpha(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"APSO: {attribute.name}", low=0.0)


def _check_unit(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"APSO: {attribute.name}", low=0.0, high=1.0)


def _check_decay(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"APSO: {attribute.name}", low=0.0, high=1.0, low_open=True)


def _check_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, f"APSO: {attribute.name}")


@attrs.frozen
class APSO:
    """Accelerated PSO: every member moves toward the global best, plus noise.

    ``W_i <- (1 - beta) W_i + beta W_g + alpha_t W_r`` for every member at once,
    where ``W_g`` is the best member seen so far, ``W_r`` a standard-normal
    particle drawn per member, and ``alpha_t = alpha * alpha_decay ** t`` at
    generation ``t``. Only operational parameters move (particle arithmetic);
    the others are left as they are.

    The hyperparameters live here (immutable, keyword-only); the evolving
    values live in an ``APSOState``. Fitness follows the package convention:
    higher is better unless ``maximize=False``; NaN is the worst.

    Args:
        alpha: noise scale, >= 0.
        beta: attraction to the global best, in [0, 1].
        alpha_decay: per-generation factor on ``alpha``, in (0, 1].
        maximize: higher fitness is better (default) or lower.

    Example:
        >>> apso = APSO(alpha=0.3, beta=0.5, alpha_decay=0.95, maximize=False)
        >>> state = apso.init(nf.random_population(p, 32, generator=g))
        >>> for _ in range(100):
        ...     state, loss = apso.step(state, loss_fn, generator=g)   # loss_fn: pop -> [N]
        >>> state.best, state.best_fitness
    """

    alpha: float = attrs.field(default=0.2, kw_only=True, validator=_check_alpha)
    beta: float = attrs.field(default=0.5, kw_only=True, validator=_check_unit)
    alpha_decay: float = attrs.field(default=1.0, kw_only=True, validator=_check_decay)
    maximize: bool = attrs.field(default=True, kw_only=True, validator=_check_flag)

    def init(self, population: Particle) -> APSOState:
        """The initial swarm: ``population`` (``N >= 1`` members), no best yet."""
        require_population(population, "APSO.init")
        device = population.tensors[0].device if population.tensors else None
        return APSOState(population, population[0].clone(), worst_fitness(self.maximize, device), 0)

    def ask(self, state: APSOState) -> Particle:
        """The members to evaluate: ``state.population``."""
        return state.population

    def tell(self, state: APSOState, fitness: Any, *, generator: torch.Generator | None = None) -> APSOState:
        """Record the fitness of ``state.population`` and move the swarm.

        Args:
            state: from ``init`` or a previous ``tell``.
            fitness: ``[N]``, one value per member of ``state.population``.
            generator: draws ``W_r`` (torch's global RNG when None).

        Returns:
            A new state; ``state`` is left as it was.

        Raises:
            PopulationSizeError: ``fitness`` is not of shape ``[N]``.
            ValueError: ``fitness`` is NaN everywhere.
        """
        check_generator(generator, "APSO.tell")
        pop = state.population
        n = require_population(pop, "APSO.tell")
        f, score = scores(fitness, n, "APSO.tell", maximize=self.maximize)
        best, best_fitness = update_best(state.best, state.best_fitness, pop, f, score, maximize=self.maximize)
        noise = random_population(best, n, generator=generator)
        return APSOState(self._move(pop, best, noise, state.generation), best, best_fitness, state.generation + 1)

    def _move(self, population: Particle, best: Particle, noise: Particle, generation: int) -> Particle:
        """``(1 - beta) W_i + beta W_g + alpha_t W_r``: the move of ``tell``, for any rows.

        Args:
            population: the members to move (``[k, ...]``; all ``N`` or a shard's block).
            best: ``W_g``, a single particle.
            noise: ``W_r`` for the same ``k`` members (standard normal).
            generation: ``t`` in ``alpha_t = alpha * alpha_decay ** t``.
        """
        alpha_t = self.alpha * self.alpha_decay ** generation
        moved = (1.0 - self.beta) * population + self.beta * best
        if alpha_t:
            moved = moved + alpha_t * noise
        return moved

    def step(
        self, state: APSOState, fitness_fn: Callable[[Particle], Any], *, generator: torch.Generator | None = None
    ) -> tuple[APSOState, torch.Tensor]:
        """``ask``, evaluate ``fitness_fn(population) -> [N]``, ``tell``; returns the new
        state and the fitness of the members just evaluated."""
        pop = self.ask(state)
        fitness = fitness_fn(pop)
        return self.tell(state, fitness, generator=generator), fitness
