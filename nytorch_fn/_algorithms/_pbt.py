"""Population-based training (Jaderberg et al. 2017): exploit and explore over per-member hyperparameters."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, cast

import attrs
import torch

from .._checks import check_real
from .._errors import PopulationSizeError, describe
from .._particle import Particle, operational
from ._base import Algorithm, Example, workspace
from ._common import device_of, draw, maximize_field, v_optional_callable


class PBTState(NamedTuple):
    """A population and its per-member hyperparameters (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: ``N`` members; after ``tell``, the exploited ones (the next
            ``ask`` trains them).
        hyperparams: ``name -> [N]`` float64 tensor, each member's values (drawn
            by ``init`` inside the ranges of ``PBT.hyperparams``).
        source: ``[N]`` int64: the member each one was copied from by the last
            ``tell`` (``arange(N)`` before the first). Use it to carry other
            per-member state along, e.g. ``momentum[state.source]``.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle
    hyperparams: dict
    source: torch.Tensor


def _check_space(value: Any) -> dict:
    if not isinstance(value, Mapping) or not value:
        raise TypeError(
            f"PBT: hyperparams expects a non-empty mapping name -> (low, high) or (low, high, 'log'), got {describe(value)}"
        )
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise TypeError(f"PBT: hyperparams expects str names, got {describe(k)}")
        if not (isinstance(v, tuple) and len(v) in (2, 3)):
            raise TypeError(f"PBT: hyperparams[{k!r}] expects (low, high) or (low, high, 'log'), got {describe(v)}")
        lo = check_real(v[0], f"PBT: hyperparams[{k!r}] low")
        hi = check_real(v[1], f"PBT: hyperparams[{k!r}] high")
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"PBT: hyperparams[{k!r}] expects finite low <= high, got {v!r}")
        scale = v[2] if len(v) == 3 else "linear"
        if scale not in ("linear", "log"):
            raise ValueError(f"PBT: hyperparams[{k!r}] expects the scale 'linear' or 'log', got {scale!r}")
        if scale == "log" and lo <= 0:
            raise ValueError(f"PBT: hyperparams[{k!r}] on a log scale expects low > 0, got {lo}")
        out[k] = (lo, hi, scale)
    return out


def _to_space(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


def _v_space(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _check_space(value)


def _v_fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, "PBT: fraction", low=0.0, high=0.5, low_open=True)


def _v_factors(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not value:
        raise TypeError(f"PBT: perturb_factors expects a non-empty tuple of positive numbers, got {describe(value)}")
    for v in value:
        check_real(v, "PBT: perturb_factors", low=0.0, low_open=True, high=math.inf, high_open=True)


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class PBT(Algorithm):
    """Exploit (the worst copy the best) and explore (perturb the copies' hyperparameters).

    How it fits the protocol: ``init`` draws each member's hyperparameters
    inside ``hyperparams`` (uniformly, or log-uniformly for ``"log"``) into the
    state; ``ask`` trains: ``train(population, hyperparams, generator)`` with
    each member's values (``[N]`` tensors, e.g. ``optim.sgd(hp["lr"])``) and
    returns the trained population; you evaluate it; ``tell`` ranks the
    members by fitness and each of the ``m = max(1, floor(fraction * N))``
    worst copies the parameters and hyperparameters of one of the ``m`` best,
    chosen uniformly at random (truncation selection), then multiplies each
    of its hyperparameters by a factor drawn uniformly from
    ``perturb_factors``, clamped into its range. The others are untouched.
    Only operational parameters are copied between members. NaN fitness (a
    diverged member) is the worst: it is replaced first.

    Draws: ``init``: one ``rand([N])`` per hyperparameter in sorted name order;
    ``tell``: the donor of each replaced member (``randint([m])``), then one
    factor index per replaced member (``randint([m])``) per hyperparameter in
    sorted name order.

    Args:
        hyperparams: ``name -> (low, high)`` or ``(low, high, "log")``.
        train: ``train(population, hyperparams, generator) -> population``, one
            round of training with per-member hyperparameters, or None (``ask``
            returns the population as it is). Under ``sharded`` it gets this
            rank's members and their hyperparameters.
        fraction: in (0, 0.5]: how much of the population is replaced.
        perturb_factors: positive factors to choose from (default ``(0.8, 1.25)``).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def member_loss(p):                         # ONE member -> 0-d: the squared distance to 1
        ...     return sum(((t - 1) ** 2).sum() for t in p.tensors)
        >>> def train(pop, hp, g):                      # five SGD steps per member with its own lr
        ...     for _ in range(5):
        ...         pop = pop - torch.func.vmap(torch.func.grad(member_loss))(pop) * hp["lr"]
        ...     return pop
        >>> def fitness(pop):                           # [N], higher is better
        ...     return -torch.func.vmap(member_loss)(pop)
        >>> g = torch.Generator().manual_seed(0)
        >>> pbt = PBT(hyperparams={"lr": (1e-4, 0.4, "log")}, train=train, fraction=0.25)
        >>> state = pbt.init(nf.random_population(nf.particle(nn.Linear(2, 1)), 8, generator=g), generator=g)
        >>> lr0 = state.hyperparams["lr"]
        >>> state, history = pbt.run(state, fitness, 10, generator=g)
        >>> state.hyperparams["lr"].shape, bool(state.hyperparams["lr"].min() > lr0.min())   # the small rates are gone
        (torch.Size([8]), True)
    """

    State = PBTState
    kind = "population"

    hyperparams: dict = attrs.field(converter=_to_space, validator=_v_space)
    train: Callable | None = attrs.field(
        default=None, validator=v_optional_callable("a callable train(population, hyperparams, generator) -> population")
    )
    fraction: float = attrs.field(default=0.25, validator=_v_fraction)
    perturb_factors: tuple = attrs.field(default=(0.8, 1.25), converter=_to_tuple, validator=_v_factors)
    maximize: bool = maximize_field()

    def _check_population(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"PBT.init: expected a population of at least 2 members, got {n}")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        space = _check_space(self.hyperparams)
        dev = device_of(x)
        hp = {}
        for k in sorted(space):
            lo, hi, scale = space[k]
            u = draw("rand", (coll.n,), generator, device=dev, dtype=torch.float64)
            if scale == "log":
                v = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
            else:
                v = lo + u * (hi - lo)
            hp[k] = coll.block(v.clamp(lo, hi)).clone()
        hp = {k: hp[k] for k in space}  # the caller's order
        source = torch.arange(coll.rows.start, coll.rows.stop, device=dev)
        return {"population": x, "hyperparams": hp, "source": source}

    def _ask(self, state: PBTState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        if self.train is None:
            return state.population, {}
        pop = self.train(state.population, dict(state.hyperparams), generator)
        if not isinstance(pop, Particle) or pop.species is not state.population.species or len(pop) != coll.local_n:
            raise TypeError(
                f"PBT: train expects to return a population of {coll.local_n} of the same species, got {describe(pop)}"
            )
        return pop, {"population": pop}

    def _tell(self, state: PBTState, population: Particle, score: torch.Tensor, *, generator: Any,
              coll: Any, donate: bool) -> dict:
        n = coll.n
        space = _check_space(self.hyperparams)
        for k, v in state.hyperparams.items():
            if not isinstance(v, torch.Tensor) or v.shape != (coll.local_n,):
                raise PopulationSizeError(
                    f"PBT.tell: hyperparams[{k!r}] expects shape ({coll.local_n},), got {describe(v)}"
                )
        m = max(1, int(self.fraction * n))
        order = torch.argsort(score.cpu(), descending=True, stable=True)
        top, bottom = order[:m], order[n - m:]
        donors = top[draw("randint", (m,), generator, device="cpu", high=m)]
        source = torch.arange(n)
        source[bottom] = donors
        mine = coll.block(source)
        ws = workspace(donate)  # inside run: the new population goes into the buffers of the one before
        new_pop = coll.take(population, mine, out=ws.pop("pbt.population", None) if ws is not None else None)
        if ws is not None:
            ws["pbt.population"] = population  # donated, and now copied from
        factors = torch.tensor(self.perturb_factors, dtype=torch.float64)
        new_hp = {}
        for k in sorted(state.hyperparams):
            v = coll.gather(state.hyperparams[k]).cpu()[source].clone()
            pick = factors[draw("randint", (m,), generator, device="cpu", high=len(factors))]
            v[bottom] = v[bottom].double() * pick
            lo, hi, _ = space[k]
            new_hp[k] = coll.block(v.clamp(lo, hi)).to(state.hyperparams[k].device)
        new_hp = {k: new_hp[k] for k in state.hyperparams}
        return {"population": new_pop, "hyperparams": new_hp, "source": mine.to(state.source.device)}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(hyperparams={"lr": (1e-3, 0.5, "log")}, train=_example_train, fraction=0.25),
                       population=8)


def _example_loss(p: Particle) -> torch.Tensor:
    return cast(torch.Tensor, sum(((t.double() - 0.5) ** 2).sum() for t in operational(p)))


def _example_train(pop: Particle, hp: dict, generator: Any) -> Particle:
    """One SGD step per member with its own learning rate (the protocol tests)."""
    grads = torch.func.vmap(torch.func.grad(_example_loss))(pop)
    return pop - grads * hp["lr"]
