"""OpenAI-ES: a Gaussian search distribution around one mean particle, shaped fitness, a sigma schedule.

Noise: each ``ask`` draws ONE base seed ``b`` from the caller's generator
(``draw_seed``); the members' noise comes in blocks of 32 members, each
block from its own stream seeded ``splitmix64(b ^ GOLDEN * j)``; when
antithetic the second half of a block negates the first (the exact rule is
in ``nytorch_fn._algorithms._base.fill_noise``), so a rank of a sharded run
draws only the blocks of its own members and any split gives the same
numbers.

Gradient: ``g = sum_i w_i eps_i / (N sigma)`` with ``w = shaping(score)``,
through ``Collective.weighted_sum``: one matrix product per tensor by default
(a sharded run then matches one process to float rounding), or, with
``exact=True``, an integer fixed-point sum with the same bits for any split
of the members (values rounded to ``2**-24`` of the largest noise value,
weights to ``2**-22`` of the largest weight; about 10x the cost of the
matrix product).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._errors import describe
from .._fitness import centered_ranks, check_shaping, shape_scores
from .._optim import GradientTransformation, adam, apply_updates
from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example, draw_seed, refill_noise
from ._common import maximize_field, v_flag, v_int, v_optional_callable, v_positive
from .._checks import check_real


class ESState(NamedTuple):
    """The search distribution after ``generation`` updates (a pytree).

    Attributes:
        best: the best sampled member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre of the search distribution (a single particle).
        opt_state: the optimiser's state for ``mean``.
        noise: the standard-normal perturbations of the last ``ask`` (a
            population; only the local rows under ``sharded``), or None before.
        population: the members of the last ``ask`` (``mean + sigma * noise``), or None.
        seed: the base seed of the last ``ask`` (0 before the first).
        sigma: the current perturbation scale (after the schedule).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    opt_state: Any
    noise: Particle | None
    population: Particle | None
    seed: int
    sigma: float


def _v_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    v_int(2)(instance, attribute, value)
    if instance.antithetic and value % 2:
        raise ValueError(f"OpenAIES: population_size expects an even number with antithetic=True, got {value}")


def _v_opt(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, GradientTransformation):
        raise TypeError(f"OpenAIES: optimizer expects a GradientTransformation, got {describe(value)}")


def _v_shaping(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_shaping(value, "OpenAIES")


def _v_decay(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, "OpenAIES: sigma_decay", low=0.0, high=1.0, low_open=True)


def _v_limit(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, "OpenAIES: sigma_limit", low=0.0)


@attrs.frozen(kw_only=True)
class OpenAIES(Algorithm):
    """OpenAI-ES (Salimans et al. 2017): estimate the fitness gradient from Gaussian perturbations.

    ``ask`` samples ``x_i = mean + sigma_t * eps_i`` (``eps_i ~ N(0, I)``, in
    antithetic pairs by default); ``tell`` shapes the scores
    (``shaping``, centred ranks by default) into weights ``w_i`` and moves the
    mean along ``g = sum_i w_i eps_i / (N sigma_t)`` with ``optimizer`` (which
    minimises, so it receives ``-g``); then the schedule updates sigma:
    ``sigma_{t+1} = max(sigma_t * sigma_decay, sigma_limit)`` (evosax's rule),
    or ``sigma * sigma_schedule(t + 1)`` when a schedule callable is given.
    Only operational parameters are perturbed and moved.

    Args:
        population_size: ``N`` samples per generation, >= 2 (even when antithetic).
        sigma: initial perturbation scale, > 0.
        optimizer: applied to the mean (default ``adam(0.05)``).
        antithetic: mirrored sampling (default True).
        shaping: score -> weights (``centered_ranks``, ``z_score``, ``normalized``,
            ``identity``, ``compose(...)``).
        sigma_decay: factor per generation, in (0, 1] (default 1: constant).
        sigma_limit: lower bound of the decayed sigma, >= 0.
        sigma_schedule: ``generation -> factor`` on the initial sigma (instead of
            decay/limit), or None.
        exact: sum the gradient exactly (same bits under any sharding), see the module.
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> g = torch.Generator().manual_seed(0)
        >>> es = OpenAIES(population_size=32, sigma=0.1, sigma_decay=0.99, maximize=False)
        >>> state = es.init(nf.particle(nn.Linear(2, 1)).randn(generator=g))   # the initial mean
        >>> state, history = es.run(state, loss, 200, generator=g)
        >>> state.generation, history.sigma.shape, bool(loss(nf.stack([state.mean]))[0] < 0.01)
        (200, torch.Size([200]), True)
    """

    State = ESState
    kind = "distribution"

    antithetic: bool = attrs.field(default=True, validator=v_flag)
    population_size: int = attrs.field(default=32, validator=_v_size)
    sigma: float = attrs.field(default=0.1, validator=v_positive)
    optimizer: GradientTransformation = attrs.field(factory=lambda: adam(0.05), validator=_v_opt)
    shaping: Callable = attrs.field(default=centered_ranks, validator=_v_shaping)
    sigma_decay: float = attrs.field(default=1.0, validator=_v_decay)
    sigma_limit: float = attrs.field(default=0.0, validator=_v_limit)
    sigma_schedule: Callable | None = attrs.field(
        default=None, validator=v_optional_callable("a callable generation -> factor")
    )
    exact: bool = attrs.field(default=False, validator=v_flag)
    maximize: bool = maximize_field()

    def __attrs_post_init__(self) -> None:
        if self.sigma_schedule is not None and (self.sigma_decay != 1.0 or self.sigma_limit != 0.0):
            raise ValueError("OpenAIES: expected either sigma_schedule or sigma_decay/sigma_limit, got both")

    def _sigma_at(self, generation: int, current: float) -> float:
        if self.sigma_schedule is None:
            return max(current * self.sigma_decay, self.sigma_limit)
        factor = self.sigma_schedule(generation)
        value = check_real(factor, "OpenAIES: sigma_schedule(generation)", low=0.0, low_open=True) * self.sigma
        return value

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        sigma = self.sigma if self.sigma_schedule is None else self._sigma_at(0, self.sigma)
        return {"mean": x, "opt_state": self.optimizer.init(x), "noise": None, "population": None,
                "seed": 0, "sigma": float(sigma)}

    def _ask(self, state: ESState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        seed = draw_seed(generator)
        mean, sigma = state.mean, state.sigma
        noise = None
        if donate and state.noise is not None and state.noise.population_size == coll.local_n:
            noise = refill_noise(state.noise, seed, coll.rows, self.antithetic, n=coll.n)
        if noise is None:
            noise = coll.noise(mean, seed, antithetic=self.antithetic)
        eps = operational(noise)
        ms = operational(mean)
        old = state.population
        reuse = donate and old is not None and old.population_size == coll.local_n
        if reuse and old is not None:
            outs = operational(old)
            results = [torch.add(m, e, alpha=sigma, out=o) for m, e, o in zip(ms, eps, outs)]
        else:
            results = [torch.add(m, e, alpha=sigma) for m, e in zip(ms, eps)]
        sp = mean.species
        pop = build(sp, assemble(sp, mean.tensors, results, coll.local_n))
        return pop, {"noise": noise, "population": pop, "seed": seed}

    def _tell(self, state: ESState, population: Particle, score: torch.Tensor, *, generator: Any,
              coll: Any, donate: bool) -> dict:
        n, sigma = coll.n, state.sigma
        assert state.noise is not None  # tell follows an ask
        w = shape_scores(self.shaping, score, "OpenAIES.tell")
        total = coll.weighted_sum(state.noise, coll.block(w), exact=self.exact, like=state.mean)
        grads = total * (-1.0 / (n * sigma))  # the descent direction for the optimiser: -g
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.mean, donate=donate)
        mean = apply_updates(state.mean, updates, donate=donate)
        return {"mean": mean, "opt_state": opt_state,
                "sigma": float(self._sigma_at(state.generation + 1, sigma))}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=10, sigma=0.1, sigma_decay=0.9, sigma_limit=0.05, exact=True))
