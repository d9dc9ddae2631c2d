"""Accelerated particle swarm optimisation (APSO), as in the legacy nytorch docs."""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs
import torch

from .._particle import Particle, lincomb
from ._base import Algorithm, Example, draw_seed, refill_noise
from ._common import maximize_field, v_decay, v_nonneg, v_unit
from ._space import check_bounds, check_handling, enforce_bounds


class APSOState(NamedTuple):
    """The swarm after ``generation`` moves (a pytree).

    Attributes:
        best: the global best ``W_g`` so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: the ``N`` members to evaluate next (``[N, ...]`` per tensor).
        noise: the ``W_r`` of the last move (a population), or None before the
            first; kept so that a donated ``tell`` draws the next one into it.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle
    noise: Particle | None = None


def _v_bounds(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bounds(value, f"{type(instance).__name__}: bounds")


def _v_handling(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_handling(value, type(instance).__name__)


@attrs.frozen(kw_only=True)
class APSO(Algorithm):
    """Accelerated PSO: every member moves toward the global best, plus noise.

    ``W_i <- (1 - beta) W_i + beta W_g + alpha_t W_r`` for every member at once
    (``nf.lincomb``, one pass per term), where ``W_g`` is the best member seen
    so far, ``W_r`` member ``i``'s standard-normal particle from the noise
    blocks (``Collective.noise``; one base seed per generation from the
    generator) and ``alpha_t = alpha * alpha_decay ** t`` at generation ``t``;
    then ``bounds`` are enforced. Only operational parameters move.

    Args:
        alpha: noise scale, >= 0.
        beta: attraction to the global best, in [0, 1].
        alpha_decay: per-generation factor on ``alpha``, in (0, 1].
        bounds: ``(low, high)`` (numbers or particles) or None.
        bound_handling: ``"clip"`` or ``"reflect"``.
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> g = torch.Generator().manual_seed(0)
        >>> apso = APSO(alpha=0.3, beta=0.5, alpha_decay=0.9, maximize=False)
        >>> state = apso.init(nf.random_population(nf.particle(nn.Linear(2, 1)), 16, generator=g))
        >>> state, history = apso.run(state, loss, 60, generator=g)
        >>> state.generation, state.best.population_size, bool(state.best_fitness < 1e-3)
        (60, None, True)
    """

    State = APSOState
    kind = "population"

    alpha: float = attrs.field(default=0.2, validator=v_nonneg)
    beta: float = attrs.field(default=0.5, validator=v_unit)
    alpha_decay: float = attrs.field(default=1.0, validator=v_decay)
    bounds: Any = attrs.field(default=None, validator=_v_bounds)
    bound_handling: str = attrs.field(default="clip", validator=_v_handling)
    maximize: bool = maximize_field()

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        bounds = check_bounds(self.bounds, "APSO", x)
        return {"population": enforce_bounds(x, bounds, self.bound_handling, donate=True), "noise": None}

    def _ask(self, state: APSOState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        return state.population, {}

    def _tell(self, state: APSOState, population: Particle, score: torch.Tensor, *, generator: Any,
              coll: Any, donate: bool) -> dict:
        # ``state.best`` already holds this generation's best (the base records it first)
        best = state.best
        alpha_t = self.alpha * self.alpha_decay ** state.generation
        noise = state.noise
        if alpha_t:
            seed = draw_seed(generator)
            fresh = None
            if donate and noise is not None and noise.population_size == coll.local_n:
                fresh = refill_noise(noise, seed, coll.rows, False, n=coll.n)  # into the buffer this state owns
            noise = fresh if fresh is not None else coll.noise(best, seed)
            moved = lincomb([1.0 - self.beta, self.beta, alpha_t], [population, best, noise], donate=donate)
        else:
            moved = lincomb([1.0 - self.beta, self.beta], [population, best], donate=donate)
        moved = enforce_bounds(moved, check_bounds(self.bounds, "APSO", best), self.bound_handling, donate=True)
        return {"population": moved, "noise": noise}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(alpha=0.3, beta=0.4, alpha_decay=0.9, bounds=(-3.0, 3.0)), population=8)

