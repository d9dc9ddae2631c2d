"""The legacy docs' hybrid loop: gradient descent for every member, periodic blending toward the best."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, cast

import attrs
import torch

from .._errors import describe
from .._optim import GradientTransformation, apply_updates, sgd
from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example
from ._common import device_of, draw, in_place_ok, maximize_field, v_callable, v_int, v_optional_callable, v_unit


class HybridState(NamedTuple):
    """The population after ``steps`` gradient steps (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: ``N`` members (``[N, ...]`` per tensor): after ``tell``, the
            blended members (the next ``ask`` trains them).
        opt_state: the optimiser's state for the whole population.
        steps: gradient steps taken so far.
        losses: ``[N]`` each member's loss at the last gradient step (before
            its update; zeros before the first).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle
    opt_state: Any
    steps: int
    losses: torch.Tensor


def _v_optimizer(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, GradientTransformation):
        raise TypeError(
            f"Hybrid: optimizer expects a GradientTransformation (e.g. nytorch_fn.optim.sgd(0.1)), got {describe(value)}"
        )


def _v_in_dims(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or any(v not in (0, None) for v in value):
        raise TypeError(f"Hybrid: in_dims expects None or a tuple of 0 (per member) / None (shared), got {value!r}")


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class Hybrid(Algorithm):
    """Gradient descent for every member at once, plus periodic blending toward the best.

    How it fits the protocol: the gradient is a hyperparameter. ``ask`` trains:
    ``every`` optimiser steps for every member, each computing all members'
    gradients of ``loss`` in one ``torch.func.vmap(torch.func.grad_and_value(loss))``
    call on a batch drawn by ``batches(generator)``, and returns the trained
    population; you evaluate it (``fitness``, e.g. validation accuracy, higher
    is better unless ``maximize=False``); ``tell`` blends a random subset of
    ``subset`` distinct members toward this generation's best member:
    ``W_i <- alpha W_best + (1 - alpha) W_i`` (the others, every
    non-operational parameter and the optimiser state are kept). NaN fitness
    (a diverged member) is the worst.

    Args:
        loss: ``loss(member, *batch) -> 0-d tensor``, written for ONE member.
        optimizer: a ``GradientTransformation`` (default ``sgd(0.1)``).
        batches: ``batches(generator) -> tuple`` of batch arguments for one
            gradient step (draw minibatch indices from the generator), or None
            when ``loss`` takes the member only.
        in_dims: None (every batch argument shared) or a tuple with ``0`` for an
            argument with a leading ``N`` (one batch per member) and None for a
            shared one. Under ``sharded`` the per-member ones are cut to the
            local rows.
        every: gradient steps per generation, >= 1 (``k`` in the legacy docs).
        subset: members blended per generation, 1 <= subset <= N.
        alpha: weight of the best member in the blend, in [0, 1].
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> from nytorch_fn import optim
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(256, 2, generator=g)
        >>> y = x @ torch.tensor([[2.0], [-1.0]]) + 0.5     # a linear target
        >>> def loss(member, xb, yb):                   # ONE member, one batch -> 0-d loss
        ...     return ((nf.apply(member, xb) - yb) ** 2).mean()
        >>> def batches(g):                             # a minibatch of 32 for each of the 8 members
        ...     idx = torch.randint(0, 256, (8, 32), generator=g)
        ...     return x[idx], y[idx]
        >>> def val_loss(pop):                          # [N]: every member on all the data
        ...     return ((nf.vmap_apply(pop, x) - y) ** 2).mean((1, 2))
        >>> hybrid = Hybrid(loss=loss, optimizer=optim.adam(0.05), batches=batches, in_dims=(0, 0),
        ...                 every=10, subset=4, alpha=0.5, maximize=False)
        >>> state = hybrid.init(nf.init_population(nn.Linear(2, 1), 8, generator=g))
        >>> state, history = hybrid.run(state, val_loss, 20, generator=g)   # 200 gradient steps
        >>> state.steps, bool(val_loss(state.population).max() < 0.01)
        (200, True)
    """

    State = HybridState
    kind = "population"

    loss: Callable = attrs.field(validator=v_callable("a callable loss(member, *batch) -> 0-d tensor"))
    optimizer: GradientTransformation = attrs.field(factory=lambda: sgd(0.1), validator=_v_optimizer)
    batches: Callable | None = attrs.field(
        default=None, validator=v_optional_callable("a callable batches(generator) -> tuple")
    )
    in_dims: tuple | None = attrs.field(default=None, converter=_to_tuple, validator=_v_in_dims)
    every: int = attrs.field(default=10, validator=v_int(1))
    subset: int = attrs.field(default=1, validator=v_int(1))
    alpha: float = attrs.field(default=0.5, validator=v_unit)
    maximize: bool = maximize_field()

    def _check_population(self, n: int) -> None:
        if self.subset > n:
            raise ValueError(f"Hybrid: subset expects at most the population size {n}, got subset={self.subset}")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        losses = torch.zeros(coll.local_n, dtype=torch.float64, device=device_of(x))
        return {"population": x, "opt_state": self.optimizer.init(x), "steps": 0, "losses": losses}

    def _batch(self, generator: Any, coll: Any) -> tuple[tuple, tuple]:
        batch = self.batches(generator) if self.batches is not None else ()
        if not isinstance(batch, tuple):
            raise TypeError(f"Hybrid: batches(generator) expects to return a tuple of arguments, got {describe(batch)}")
        dims = self.in_dims if self.in_dims is not None else (None,) * len(batch)
        if len(dims) != len(batch):
            raise ValueError(f"Hybrid: in_dims expects {len(batch)} entries (one per batch argument), got {self.in_dims!r}")
        batch = tuple(coll.block(b) if d == 0 else b for b, d in zip(batch, dims))
        return batch, (0, *dims)

    def _ask(self, state: HybridState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        pop, opt_state, losses = state.population, state.opt_state, state.losses
        n = coll.local_n
        own = donate
        for _ in range(self.every):
            batch, dims = self._batch(generator, coll)
            grads, value = torch.func.vmap(torch.func.grad_and_value(self.loss), in_dims=dims)(pop, *batch)
            if not isinstance(value, torch.Tensor) or value.shape != (n,):
                raise ValueError(f"Hybrid: loss expects to return a 0-d tensor per member, got {describe(value)}")
            updates, opt_state = self.optimizer.update(grads, opt_state, pop, donate=own)
            pop = apply_updates(pop, updates, donate=own)
            losses = value.detach().to(torch.float64)
            own = True  # from here on the loop owns the population and the optimiser state
        return pop, {"population": pop, "opt_state": opt_state, "steps": state.steps + self.every,
                     "losses": losses}

    def _tell(self, state: HybridState, population: Particle, score: torch.Tensor, *, generator: Any,
              coll: Any, donate: bool) -> dict:
        n = coll.n
        chosen = draw("randperm", None, generator, device="cpu", high=n)[: self.subset]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[chosen] = True
        toward = coll.member(population, int(torch.argmax(score))).tensors
        local = coll.block(mask).to(device_of(population))
        alpha = self.alpha
        sp = population.species
        lay = sp.layout()
        xs = operational(population)
        # only the chosen rows change: each is alpha * best + (1 - alpha) * row, the same
        # elementwise expression as on the whole tensor (so the same bits), written into the
        # population when it is donated (else into one copy)
        rows = torch.nonzero(local).squeeze(1)
        in_place = in_place_ok(population, donate)
        results = []
        for i, t in zip(lay.op, xs):
            out = t if in_place else t.clone()
            if rows.numel():
                out[rows] = alpha * toward[i] + (1 - alpha) * t[rows]
            results.append(out)
        return {"population": build(sp, assemble(sp, population.tensors, results, None))}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(loss=_example_loss, optimizer=sgd(0.05, momentum=0.9), every=2, subset=3, alpha=0.5),
                       population=8)


def _example_loss(p: Particle) -> torch.Tensor:
    """``sum (w - 0.5)^2`` over the operational floating parameters of one member (the protocol tests)."""
    return cast(torch.Tensor, sum(((t.double() - 0.5) ** 2).sum() for t in operational(p)))
