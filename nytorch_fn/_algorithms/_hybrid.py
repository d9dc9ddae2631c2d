"""The legacy docs' hybrid loop: gradient descent for every member, periodic blending toward the best."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._errors import describe
from .._optim import GradientTransformation, apply_updates
from .._particle import Particle
from ._common import (
    check_bool,
    check_generator,
    check_int,
    check_real,
    draw,
    rebuild,
    require_population,
    scores,
)


class HybridState(NamedTuple):
    """The population after ``count`` gradient steps (a pytree).

    Attributes:
        population: ``N`` members (``[N, ...]`` per tensor).
        opt_state: the optimiser's state for the whole population.
        count: gradient steps taken so far.
    """

    population: Particle
    opt_state: Any
    count: int


def _check_optimizer(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, GradientTransformation):
        raise TypeError(
            f"Hybrid: optimizer expects a GradientTransformation (e.g. nytorch_fn.optim.sgd(0.1)), got {describe(value)}"
        )


def _check_every(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, "Hybrid: every", low=1)


def _check_subset(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, "Hybrid: subset", low=1)


def _check_alpha(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, "Hybrid: alpha", low=0.0, high=1.0)


def _check_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, f"Hybrid: {attribute.name}")


@attrs.frozen
class Hybrid:
    """Gradient descent for every member at once, plus periodic blending toward the best.

    Each ``step`` computes every member's gradient of ``loss_fn`` in one
    ``torch.func.vmap(torch.func.grad_and_value(loss_fn))`` call and applies
    ``optimizer`` to the whole population. After every ``every``-th step, a
    random subset of ``subset`` distinct members is blended toward the best
    member: ``W_i <- alpha W_best + (1 - alpha) W_i`` (the others, and every
    non-operational parameter, are left alone; the optimiser state is kept).

    The best member is the one with the highest fitness. ``fitness`` passed to
    ``step`` (e.g. validation accuracy, ``[N]``) decides; without it the
    fitness is ``-loss`` on the step's batch, i.e. the lowest loss is best.
    NaN fitness (a diverged member) is the worst.

    Args:
        optimizer: a ``GradientTransformation`` (``nytorch_fn.optim.sgd``, ``adam``).
        every: blend after every ``every``-th step (``k`` in the legacy docs), >= 1.
        subset: how many members are blended, 1 <= subset <= N.
        alpha: weight of the best member in the blend, in [0, 1].
        maximize: for a ``fitness`` given to ``step``: higher is better
            (default) or lower.

    Example:
        >>> hybrid = Hybrid(optim.sgd(0.1), every=10, subset=4, alpha=0.5)
        >>> state = hybrid.init(nf.init_population(net, 16, generator=g))
        >>> def loss_fn(p, x, y):   # one member, one batch -> 0-d loss
        ...     return F.cross_entropy(nf.apply(p, x), y)
        >>> for x, y in batches:
        ...     state, losses = hybrid.step(state, loss_fn, x, y, generator=g)   # losses: [N]
    """

    optimizer: GradientTransformation = attrs.field(validator=_check_optimizer)
    every: int = attrs.field(default=10, kw_only=True, validator=_check_every)
    subset: int = attrs.field(default=1, kw_only=True, validator=_check_subset)
    alpha: float = attrs.field(default=0.5, kw_only=True, validator=_check_alpha)
    maximize: bool = attrs.field(default=True, kw_only=True, validator=_check_flag)

    def init(self, population: Particle) -> HybridState:
        """The initial state; checks ``subset <= N``."""
        n = require_population(population, "Hybrid.init")
        self._check_subset(n)
        return HybridState(population, self.optimizer.init(population), 0)

    def _check_subset(self, n: int) -> None:
        if self.subset > n:
            raise ValueError(
                f"Hybrid: subset expects at most the population size {n}, got subset={self.subset}"
            )

    def gradient_step(
        self, state: HybridState, loss_fn: Callable[..., torch.Tensor], *batch: Any, in_dims: Any = None
    ) -> tuple[HybridState, torch.Tensor]:
        """One optimiser step for every member; no blending. Returns ``(state, losses [N])``.

        ``loss_fn(member, *batch) -> 0-d tensor`` is written for one member
        (a single particle). ``in_dims``: None (every batch argument shared by
        all members) or a tuple with 0 for a per-member argument (leading ``N``).
        """
        pop = state.population
        n = require_population(pop, "Hybrid.step")
        dims = (0, *(in_dims if in_dims is not None else (None,) * len(batch)))
        if len(dims) != len(batch) + 1:
            raise ValueError(f"Hybrid.step: in_dims expects {len(batch)} entries (one per batch argument), got {in_dims!r}")
        grads, losses = torch.func.vmap(torch.func.grad_and_value(loss_fn), in_dims=dims)(pop, *batch)
        if not isinstance(losses, torch.Tensor) or losses.shape != (n,):
            raise ValueError(f"Hybrid.step: loss_fn expects to return a 0-d tensor per member, got {describe(losses)}")
        updates, opt_state = self.optimizer.update(grads, state.opt_state, pop)
        return HybridState(apply_updates(pop, updates), opt_state, state.count + 1), losses.detach()

    def blend(
        self, population: Particle, fitness: Any, *, generator: torch.Generator | None = None
    ) -> Particle:
        """``alpha W_best + (1 - alpha) W_i`` for ``subset`` distinct members drawn at random.

        Args:
            population: ``N`` members.
            fitness: ``[N]``; the best member is the highest (``maximize``), NaN the worst.
            generator: draws the subset (``torch.randperm``).
        """
        check_generator(generator, "Hybrid.blend")
        n = require_population(population, "Hybrid.blend")
        best, mask = self._choose(fitness, n, generator, "Hybrid.blend")
        device = population.tensors[0].device if population.tensors else None
        return self._blend_toward(population, population[best], mask.to(device))

    def _choose(
        self, fitness: Any, n: int, generator: torch.Generator | None, where: str
    ) -> tuple[int, torch.Tensor]:
        """Who blends toward whom: ``(index of the best member, [N] bool mask of the subset)``.

        The mask is on the CPU; the subset is drawn with one ``randperm(N)`` from ``generator``.
        """
        self._check_subset(n)
        _, score = scores(fitness, n, where, maximize=self.maximize)
        best = int(torch.argmax(score))
        chosen = draw("randperm", None, generator, device="cpu", high=n)[: self.subset]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[chosen] = True
        return best, mask

    def _blend_toward(self, population: Particle, best: Particle, mask: torch.Tensor) -> Particle:
        """``alpha W_best + (1 - alpha) W_i`` where ``mask`` is set, ``W_i`` elsewhere.

        Args:
            population: ``k`` members (all ``N`` or a shard's block).
            best: ``W_best``, a single particle.
            mask: ``[k]`` bool on the population's device.
        """
        k, alpha, toward = len(mask), self.alpha, best.tensors

        def move(i: int, t: torch.Tensor) -> torch.Tensor:
            m = mask.view(k, *([1] * (t.dim() - 1)))
            return torch.where(m, alpha * toward[i] + (1 - alpha) * t, t)

        return rebuild(population, move, population=k)

    def _blend_fitness(self, losses: torch.Tensor, fitness: Any) -> Any:
        """The fitness that picks the best for a blend: ``fitness`` if given, else from the losses."""
        if fitness is not None:
            return fitness
        return -losses if self.maximize else losses

    def step(
        self,
        state: HybridState,
        loss_fn: Callable[..., torch.Tensor],
        *batch: Any,
        fitness: Any = None,
        in_dims: Any = None,
        generator: torch.Generator | None = None,
    ) -> tuple[HybridState, torch.Tensor]:
        """A gradient step for every member, then (every ``every``-th step) a blend.

        Args:
            state: from ``init`` or a previous ``step``.
            loss_fn: ``loss_fn(member, *batch) -> 0-d tensor`` for one member.
            *batch: inputs, shared by all members unless ``in_dims`` says otherwise.
            fitness: ``[N]`` fitness used to pick the best for the blend
                (evaluated before this step's update); None: ``-losses``.
            in_dims: see ``gradient_step``.
            generator: draws the blended subset.

        Returns:
            ``(state, losses)``: the new state and each member's loss before
            the update, ``[N]``.
        """
        check_generator(generator, "Hybrid.step")
        new, losses = self.gradient_step(state, loss_fn, *batch, in_dims=in_dims)
        if new.count % self.every == 0:
            f = self._blend_fitness(losses, fitness)
            new = new._replace(population=self.blend(new.population, f, generator=generator))
        return new, losses
