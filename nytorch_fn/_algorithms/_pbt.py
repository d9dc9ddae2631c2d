"""Population-based training (Jaderberg et al. 2017): exploit and explore over per-member hyperparameters."""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import attrs
import torch

from .._errors import PopulationSizeError, describe
from .._particle import Particle
from ._common import (
    check_bool,
    check_generator,
    check_real,
    draw,
    rebuild,
    require_population,
    scores,
)


class PBTState(NamedTuple):
    """A population and its per-member hyperparameters (a pytree).

    Attributes:
        population: ``N`` members.
        hyperparams: a dict ``name -> [N] float tensor`` (e.g. ``{"lr": ...}``).
        source: ``[N]`` int64: the member each one was copied from by the last
            ``exploit_explore`` (``arange(N)`` when nothing was copied). Use it
            to carry other per-member state along, e.g.
            ``opt_state.momentum[state.source]``.
        generation: how many times ``exploit_explore`` ran.
    """

    population: Particle
    hyperparams: dict
    source: torch.Tensor
    generation: int


def _v_fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, "PBT: fraction", low=0.0, high=0.5, low_open=True)


def _v_factors(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not value:
        raise TypeError(f"PBT: perturb_factors expects a non-empty tuple of positive numbers, got {describe(value)}")
    for v in value:
        check_real(v, "PBT: perturb_factors", low=0.0, low_open=True, high=math.inf, high_open=True)


def _v_bounds(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"PBT: bounds expects a mapping name -> (low, high), got {describe(value)}")
    for k, v in value.items():
        if not (isinstance(v, tuple) and len(v) == 2):
            raise TypeError(f"PBT: bounds[{k!r}] expects a (low, high) tuple, got {describe(v)}")
        lo = check_real(v[0], f"PBT: bounds[{k!r}] low")
        hi = check_real(v[1], f"PBT: bounds[{k!r}] high")
        if lo > hi:
            raise ValueError(f"PBT: bounds[{k!r}] expects low <= high, got {v!r}")


def _v_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, f"PBT: {attribute.name}")


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _to_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


@attrs.frozen(kw_only=True)
class PBT:
    """Exploit (the worst copy the best) and explore (perturb the copies' hyperparameters).

    ``exploit_explore`` ranks the members by fitness; each of the
    ``m = max(1, floor(fraction * N))`` worst members copies the parameters
    and hyperparameters of one of the ``m`` best, chosen uniformly at random
    (truncation selection), then multiplies each of its hyperparameters by a
    factor drawn uniformly from ``perturb_factors`` (clamped to ``bounds``).
    The other members are untouched. Non-operational parameters are left as
    they are (only operational ones are copied between members).

    Training between rounds is yours: any per-member hyperparameter works
    that your step takes as a ``[N]`` tensor, e.g. ``optim.sgd(state.hyperparams["lr"])``.
    Fitness follows the package convention: higher is better unless
    ``maximize=False``; NaN is the worst (a diverged member is replaced first).

    Args (keyword-only):
        fraction: in (0, 0.5]: how much of the population is replaced.
        perturb_factors: positive factors to choose from (default ``(0.8, 1.25)``).
        bounds: ``name -> (low, high)``: clamp a hyperparameter after perturbing.
        maximize: higher fitness is better (default) or lower.

    Example:
        >>> pbt = PBT(fraction=0.25, bounds={"lr": (1e-4, 1.0)})
        >>> state = pbt.init(pop, {"lr": torch.logspace(-3, 0, 16)})
        >>> for round in range(10):
        ...     pop = train(state.population, lr=state.hyperparams["lr"])   # your loop
        ...     state = pbt.exploit_explore(state._replace(population=pop), evaluate(pop), generator=g)
    """

    fraction: float = attrs.field(default=0.25, validator=_v_fraction)
    perturb_factors: tuple = attrs.field(default=(0.8, 1.25), converter=_to_tuple, validator=_v_factors)
    bounds: dict = attrs.field(factory=dict, converter=_to_dict, validator=_v_bounds)
    maximize: bool = attrs.field(default=True, validator=_v_flag)

    def init(self, population: Particle, hyperparams: Mapping[str, Any]) -> PBTState:
        """The initial state: ``hyperparams`` maps names to ``[N]`` float tensors (copied)."""
        n = require_population(population, "PBT.init")
        if n < 2:
            raise ValueError(f"PBT.init: expected a population of at least 2 members, got {n}")
        hp = self._check_hyperparams(hyperparams, n, "PBT.init")
        device = population.tensors[0].device if population.tensors else None
        return PBTState(population, hp, torch.arange(n, device=device), 0)

    def _check_hyperparams(self, hyperparams: Any, n: int, where: str) -> dict:
        if not isinstance(hyperparams, Mapping):
            raise TypeError(f"{where}: hyperparams expects a mapping name -> [N] tensor, got {describe(hyperparams)}")
        out = {}
        for k, v in hyperparams.items():
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                raise TypeError(f"{where}: hyperparams[{k!r}] expects a [N] floating tensor, got {describe(v)}")
            if v.shape != (n,):
                raise PopulationSizeError(
                    f"{where}: hyperparams[{k!r}] expects shape ({n},) for a population of {n}, got {tuple(v.shape)}"
                )
            out[k] = v.detach().clone()
        unknown = [k for k in self.bounds if k not in out]
        if unknown:
            raise ValueError(f"{where}: bounds name hyperparameters {unknown}, expected among {sorted(out)}")
        return out

    def exploit_explore(self, state: PBTState, fitness: Any, *, generator: torch.Generator | None = None) -> PBTState:
        """One round: the worst ``m`` members copy randomly chosen best ``m`` and perturb.

        Draws (in this order, from ``generator``): the donor of each replaced
        member, then one factor index per replaced member for each
        hyperparameter in sorted name order.

        Raises:
            PopulationSizeError: ``fitness`` or a hyperparameter is not ``[N]``.
            ValueError: ``fitness`` is NaN everywhere.
        """
        check_generator(generator, "PBT.exploit_explore")
        pop = state.population
        n = require_population(pop, "PBT.exploit_explore")
        hp = self._check_hyperparams(state.hyperparams, n, "PBT.exploit_explore")
        _, score = scores(fitness, n, "PBT.exploit_explore", maximize=self.maximize)
        device = pop.tensors[0].device if pop.tensors else torch.device("cpu")
        m = max(1, int(self.fraction * n))
        order = torch.argsort(score.to(device), descending=True, stable=True)
        top, bottom = order[:m], order[n - m:]
        donors = top[draw("randint", (m,), generator, device=device, high=m)]
        source = torch.arange(n, device=device)
        source[bottom] = donors
        new_pop = rebuild(pop, lambda i, t: t[source], population=n)
        factors = torch.tensor(self.perturb_factors, dtype=torch.float64, device=device)
        new_hp = {}
        for k in sorted(hp):
            v = hp[k][source]
            pick = factors[draw("randint", (m,), generator, device=device, high=len(factors))]
            v[bottom] = (v[bottom].double() * pick).to(v.dtype)
            if k in self.bounds:
                lo, hi = self.bounds[k]
                v = v.clamp(lo, hi)
            new_hp[k] = v
        new_hp = {k: new_hp[k] for k in hp}  # keep the caller's order
        return PBTState(new_pop, new_hp, source, state.generation + 1)
