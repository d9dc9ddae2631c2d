"""OpenAI-ES: a Gaussian search distribution around one mean particle, centred-rank fitness shaping."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._errors import describe
from .._optim import GradientTransformation, adam, apply_updates
from .._particle import Particle, _assemble, plan
from .._population import concat
from ._common import (
    check_bool,
    check_generator,
    check_int,
    check_real,
    noise_population,
    member_view,
    require_single,
    scores,
    update_best,
    worst_fitness,
)


class ESState(NamedTuple):
    """The search distribution after ``generation`` updates (a pytree).

    Attributes:
        mean: the centre of the search distribution (a single particle): the answer.
        opt_state: the optimiser's state for ``mean``.
        noise: the standard-normal perturbations of the last ``ask``
            (a population ``[N, ...]``), or None before ``ask``.
        best: the best sampled member so far (single particle).
        best_fitness: its fitness (0-d float64; the worst value before the first ``tell``).
        generation: how many times ``tell`` has moved the mean.
    """

    mean: Particle
    opt_state: Any
    noise: Particle | None
    best: Particle
    best_fitness: torch.Tensor
    generation: int


def centered_ranks(fitness: Any, *, maximize: bool = True) -> torch.Tensor:
    """Fitness shaping: each member's rank mapped linearly onto [-0.5, 0.5], best = +0.5.

    Ranks make an ES invariant to any monotone change of the fitness and
    robust to outliers. Ties are ranked by position; NaN counts as the worst.

    Args:
        fitness: ``[N]`` real values (N >= 1).
        maximize: higher is better (default) or lower.

    Returns:
        ``[N]`` float64 (all zeros for ``N == 1``).

    Example:
        >>> centered_ranks(torch.tensor([3.0, 1.0, 2.0]))
        tensor([ 0.5000, -0.5000,  0.0000], dtype=torch.float64)
    """
    if not isinstance(fitness, torch.Tensor) or fitness.dim() != 1:
        raise TypeError(f"centered_ranks: fitness expects a [N] tensor, got {describe(fitness)}")
    n = fitness.shape[0]
    _, score = scores(fitness, n, "centered_ranks", maximize=maximize)
    order = torch.argsort(score, stable=True)
    ranks = torch.empty(n, dtype=torch.float64, device=score.device)
    ranks[order] = torch.arange(n, dtype=torch.float64, device=score.device)
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=score.device)
    return ranks / (n - 1) - 0.5


def _v_pos(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"OpenAIES: {attribute.name}", low=0.0, low_open=True)


def _v_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, f"OpenAIES: {attribute.name}")


def _v_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, "OpenAIES: population_size", low=2)
    if instance.antithetic and value % 2:
        raise ValueError(f"OpenAIES: population_size expects an even number with antithetic=True, got {value}")


def _v_opt(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, GradientTransformation):
        raise TypeError(f"OpenAIES: optimizer expects a GradientTransformation, got {describe(value)}")


@attrs.frozen(kw_only=True)
class OpenAIES:
    """OpenAI-ES (Salimans et al. 2017): estimate the fitness gradient from Gaussian perturbations.

    ``ask`` samples ``x_i = mean + sigma * eps_i`` (``eps_i ~ N(0, I)``, in
    antithetic pairs ``+eps``/``-eps`` by default); ``tell`` shapes the
    fitness into centred ranks ``r_i`` and moves the mean along
    ``g = sum_i r_i eps_i / (N sigma)`` (the ascent direction of the
    shaped fitness) with ``optimizer`` (which minimises, so it receives
    ``-g``). Only operational parameters are perturbed and moved.

    Fitness follows the package convention: higher is better unless
    ``maximize=False``; NaN is the worst.

    Args (keyword-only):
        population_size: ``N`` samples per generation, >= 2 (even when antithetic).
        sigma: perturbation scale, > 0.
        optimizer: applied to the mean (default ``adam(0.05)``).
        antithetic: mirrored sampling (default True).
        maximize: higher fitness is better (default) or lower.

    Example:
        >>> es = OpenAIES(population_size=32, sigma=0.1, maximize=False)
        >>> state = es.init(p)                       # p: a single particle
        >>> for _ in range(200):
        ...     state, loss = es.step(state, loss_fn, generator=g)   # loss_fn: pop -> [N]
        >>> state.mean
    """

    antithetic: bool = attrs.field(default=True, validator=_v_flag)
    population_size: int = attrs.field(default=32, validator=_v_size)
    sigma: float = attrs.field(default=0.1, validator=_v_pos)
    optimizer: GradientTransformation = attrs.field(factory=lambda: adam(0.05), validator=_v_opt)
    maximize: bool = attrs.field(default=True, validator=_v_flag)

    def init(self, mean: Particle) -> ESState:
        """The initial distribution, centred on ``mean`` (a single particle)."""
        require_single(mean, "OpenAIES.init")
        device = mean.tensors[0].device if mean.tensors else None
        return ESState(mean, self.optimizer.init(mean), None, mean.clone(), worst_fitness(self.maximize, device), 0)

    def ask(self, state: ESState, *, generator: torch.Generator | None = None) -> tuple[Particle, ESState]:
        """Sample ``N`` members around ``state.mean``.

        Returns:
            ``(population, state)``: the members to evaluate and a state that
            remembers their noise for ``tell``.
        """
        check_generator(generator, "OpenAIES.ask")
        n = self.population_size
        if self.antithetic:
            half = noise_population(state.mean, n // 2, generator=generator)
            noise = concat([half, -half])
        else:
            noise = noise_population(state.mean, n, generator=generator)
        return state.mean + self.sigma * noise, state._replace(noise=noise)

    def tell(self, state: ESState, fitness: Any, *, population: Particle | None = None) -> ESState:
        """Move the mean from the fitness of the last ``ask``'s members.

        Args:
            state: the state returned by ``ask``.
            fitness: ``[N]``, one value per member of that population.
            population: that population, only to record the best member
                (recomputed from the noise when None).

        Raises:
            ValueError: ``ask`` was not called first; ``fitness`` is NaN everywhere.
            PopulationSizeError: ``fitness`` is not of shape ``[N]``.
        """
        if state.noise is None:
            raise ValueError("OpenAIES.tell: expected a state returned by ask() (with noise), got one without noise")
        n = len(state.noise)
        f, score = scores(fitness, n, "OpenAIES.tell", maximize=self.maximize)
        pop = population if population is not None else state.mean + self.sigma * state.noise
        best, best_fitness = update_best(state.best, state.best_fitness, pop, f, score, maximize=self.maximize)
        shaped = centered_ranks(f, maximize=self.maximize)
        coef = -shaped / (n * self.sigma)  # descent direction for the optimiser
        sp = state.mean.species
        eps = state.noise.tensors
        results = []
        for i in plan(sp).op:
            t = eps[i]
            results.append((t * member_view(coef, t)).sum(0) if t.is_floating_point() else torch.zeros_like(t[0]))
        grads = Particle._make(sp, _assemble(sp, state.mean.tensors, results, None))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.mean)
        mean = apply_updates(state.mean, updates)
        return ESState(mean, opt_state, None, best, best_fitness, state.generation + 1)

    def step(
        self, state: ESState, fitness_fn: Callable[[Particle], Any], *, generator: torch.Generator | None = None
    ) -> tuple[ESState, torch.Tensor]:
        """``ask``, evaluate ``fitness_fn(population) -> [N]``, ``tell``; returns the new
        state and the fitness of the members just evaluated."""
        pop, asked = self.ask(state, generator=generator)
        fitness = fitness_fn(pop)
        return self.tell(asked, fitness, population=pop), fitness
