"""Restart strategies for the CMA family: IPOP (Auger and Hansen 2005) and BIPOP (Hansen 2009).

Each wraps one of ``CMAES``, ``SepCMAES``, ``LMMAES`` and follows the
protocol itself: ``init(centre)``, ``ask``, ``tell``, ``step``, ``run``, a
NamedTuple state whose ``best`` is the best member over every run. After
each ``tell`` the running search is checked against the usual termination
criteria (pycma's defaults, below); when one holds, the next ``ask`` starts
a new run from the centre (or ``restart_centre(centre, generator)``) with a
larger population:

- IPOP: ``N_k = N_0 * increase**k`` (``increase = 2``), ``sigma_0`` each time.
- BIPOP: two interlaced regimes sharing the evaluations. The large regime
  runs IPOP's populations with ``sigma_0``; the small regime runs
  ``N_s = floor(N_0 * (N_l / (2 N_0)) ** (U**2))`` members (``N_l`` the last
  large population, ``U ~ U[0, 1)``) with ``sigma_0 * 10 ** (-2 U')``,
  each such run limited to half the evaluations of the last large run.
  After each run, the regime that has used fewer evaluations so far runs
  next (the first run, with ``N_0``, counts as large).

Termination criteria of a run (checked after each generation; ``P``
searched values, ``N`` members, ``g`` generations of the run):

- ``tolfun``: the range of this generation's fitness and of the run's best
  fitness over its last ``10 + ceil(30 P / N)`` generations both below
  ``tolfun`` (at least 10 generations);
- ``tolx``: every standard deviation ``sigma sqrt(C_ii)`` and every
  ``sigma |p_c,i|`` below ``tolx`` (``LMMAES``: ``sigma`` below ``tolx``);
- ``tolupsigma``: ``sigma * max sqrt(eig C) > 1e20 * sigma_0`` (divergence);
- ``conditioncov``: condition number of ``C`` above ``1e14`` (``CMAES``, ``SepCMAES``);
- ``noeffectaxis``: adding ``0.1 sigma`` along the principal axis ``g mod P``
  leaves the mean unchanged (``CMAES``); ``noeffectcoord``: adding
  ``0.2 sigma sqrt(C_ii)`` leaves some coordinate unchanged;
- ``maxiter``: ``g > 100 + 150 (P + 3)**2 / sqrt(N)``;
- ``budget`` (BIPOP's small regime): the run's evaluations reached its limit.

pycma's stagnation criterion (``tolstagnation``) is not implemented.

Population sizes: the state's ``population_size`` is the current run's
``N``; ``ask`` returns that many members. The wrappers tell the protocol's
base the next run's size (``Algorithm._population_after``), which sizes the
``asked`` bookkeeping, and under ``sharded(IPOP(...))`` each rank's block,
for it: restarts work alike on one process and sharded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import torch

from .._errors import describe
from .._particle import Particle
from ._base import Algorithm, Example, probe
from ._cma import CMAES, LMMAES, CMAESState, SepCMAES, SepCMAESState
from ._common import draw, v_flag, v_int, v_nonneg, v_optional_callable, v_positive

_INNER = (CMAES, SepCMAES, LMMAES)


def _v_inner(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, _INNER):
        raise TypeError(
            f"{type(instance).__name__}: algorithm expects a CMAES, SepCMAES or LMMAES, got {describe(value)}"
        )


def _v_increase(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    v_positive(instance, attribute, value)
    if value <= 1:
        raise ValueError(f"{type(instance).__name__}: increase expects a factor > 1, got {value!r}")


def _history_length(d: int, n: int) -> int:
    return 10 + math.ceil(30 * d / n)


def _stub(device: Any) -> torch.Tensor:
    """The inner state's ``asked``: the wrapper's own ``asked`` does the checking."""
    return probe(None, 0, 0, device)


# ---------------------------------------------------------------------------
# termination
# ---------------------------------------------------------------------------


def stop_reason(inner: Any, sigma0: float, history: torch.Tensor, count: int, score: torch.Tensor,
                n: int, *, tolfun: float, tolx: float) -> str:
    """Why the run of ``inner`` (a CMAES/SepCMAES/LMMAES state after ``tell``) should stop, or "".

    ``history`` holds the run's best score per generation (a ring of length
    ``H``, ``count`` written so far), ``score`` this generation's scores.
    """
    g = inner.generation
    d = inner.m.numel()
    sigma = float(inner.sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        return "sigma"
    finite = score[torch.isfinite(score)]
    if count >= 10 and finite.numel() == score.numel():
        h = history[: min(count, history.numel())]
        if float(finite.max() - finite.min()) < tolfun and float(h.max() - h.min()) < tolfun:
            return "tolfun"
    if isinstance(inner, CMAESState):
        var = torch.diagonal(inner.C)
        top = float(inner.D.max())
        if float(inner.D.max() / inner.D.min()) > 1e7:
            return "conditioncov"
    elif isinstance(inner, SepCMAESState):
        var = inner.c.double()
        top = math.sqrt(float(var.max()))
        if float(var.max() / var.min()) > 1e14:
            return "conditioncov"
    else:
        var = None
        top = 1.0
    if var is not None:
        if sigma * math.sqrt(float(var.max())) < tolx and sigma * float(inner.p_c.abs().max()) < tolx:
            return "tolx"
    elif sigma < tolx:
        return "tolx"
    if sigma * top > 1e20 * sigma0:
        return "tolupsigma"
    m = inner.m
    if isinstance(inner, CMAESState):
        i = g % d
        axis = (0.1 * sigma * float(inner.D[i])) * inner.B[:, i]
        if torch.equal(m + axis, m):
            return "noeffectaxis"
    if var is not None and bool((m + 0.2 * sigma * torch.sqrt(var).to(m.dtype) == m).any()):
        return "noeffectcoord"
    if g > 100 + 150 * (d + 3) ** 2 / math.sqrt(n):
        return "maxiter"
    return ""


# ---------------------------------------------------------------------------
# states
# ---------------------------------------------------------------------------


class IPOPState(NamedTuple):
    """The state of ``IPOP`` (a pytree).

    Attributes:
        best: the best member over every run (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: every generation of every run so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        inner: the running search's state (a ``CMAESState``, ``SepCMAESState``
            or ``LMMAESState``; its ``generation`` counts this run's generations;
            its own ``best`` is the run's centre and its ``best_fitness`` NaN: the
            wrapper keeps the best).
        centre: the initial centre (each run starts from it, or from
            ``restart_centre``).
        population_size: ``N`` of the current run.
        sigma: the current run's step size (a copy of ``inner.sigma``, 0-d float64).
        sigma0: the current run's initial step size.
        restarts: runs finished so far.
        evaluations: members evaluated over every run; run_evaluations: in this run.
        history: ``[H]`` float64, this run's best score per generation (a ring, ``H`` fixed at ``init``).
        reason: why the last run stopped ("" before the first restart).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    inner: Any
    centre: Particle
    population_size: int
    sigma: torch.Tensor
    sigma0: float
    restarts: int
    evaluations: int
    run_evaluations: int
    history: torch.Tensor
    reason: str


class BIPOPState(NamedTuple):
    """The state of ``BIPOP``: ``IPOPState``'s fields, then the two regimes' accounts.

    Attributes:
        large_restarts: large-regime runs started after the first.
        large_evaluations: evaluations used by the large regime.
        small_evaluations: evaluations used by the small regime.
        last_large: evaluations of the last finished large run.
        regime: ``"large"`` or ``"small"`` (the current run).
        run_limit: the current run's evaluation limit (0: none).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    inner: Any
    centre: Particle
    population_size: int
    sigma: torch.Tensor
    sigma0: float
    restarts: int
    evaluations: int
    run_evaluations: int
    history: torch.Tensor
    reason: str
    large_restarts: int
    large_evaluations: int
    small_evaluations: int
    last_large: int
    regime: str
    run_limit: int


# ---------------------------------------------------------------------------
# the wrappers
# ---------------------------------------------------------------------------


def _maximize_default(self: Any) -> bool:
    # runs before the validators: a wrong algorithm is refused by _v_inner right after
    return getattr(self.algorithm, "maximize", True)


@attrs.frozen(kw_only=True)
class IPOP(Algorithm):
    """Restarts with an increasing population (Auger and Hansen 2005) around a CMA-family algorithm.

    Args:
        algorithm: a ``CMAES``, ``SepCMAES`` or ``LMMAES``: the first run's
            population size and ``sigma`` (and every other hyperparameter of every run).
        increase: the population factor per restart (> 1, default 2).
        max_restarts: restarts allowed (default 9); after them the last run goes on.
        tolfun: the fitness-range criterion (default 1e-12).
        tolx: the step-size criterion, in the parameters' units (default 1e-11).
        restart_centre: ``(centre, generator) -> particle``: where each new run
            starts (default: the initial centre).
        maximize: default: the inner algorithm's (this one is used; the inner's is ignored).

    All arguments are keyword-only.

    Examples:
        >>> import math
        >>> from nytorch_fn.algorithms import ravel
        >>> def rastrigin(pop):                         # [N], many local minima, the global one at 0
        ...     x = ravel(pop).double()
        ...     return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)
        >>> g = torch.Generator().manual_seed(0)
        >>> x0 = nf.particle(nn.Linear(2, 1, bias=False)).randn(generator=g) * 3
        >>> ipop = IPOP(algorithm=CMAES(population_size=6, sigma=2.0), maximize=False)
        >>> state = ipop.init(x0)
        >>> for _ in range(300):
        ...     state, loss = ipop.step(state, rastrigin, generator=g)
        >>> state.restarts >= 1, state.population_size == 6 * 2 ** state.restarts
        (True, True)
    """

    algorithm: CMAES | SepCMAES | LMMAES = attrs.field(validator=_v_inner)
    increase: float = attrs.field(default=2.0, validator=_v_increase)
    max_restarts: int = attrs.field(default=9, validator=v_int(0))
    tolfun: float = attrs.field(default=1e-12, validator=v_nonneg)
    tolx: float = attrs.field(default=1e-11, validator=v_nonneg)
    restart_centre: Callable[[Particle, Any], Particle] | None = attrs.field(
        default=None, validator=v_optional_callable("a callable (centre, generator) -> particle"))
    maximize: bool = attrs.field(default=attrs.Factory(_maximize_default, takes_self=True), validator=v_flag)

    State = IPOPState
    kind = "distribution"

    @property
    def population_size(self) -> int:
        """The first run's population size (the inner algorithm's)."""
        return self.algorithm.population_size

    def template(self, x: Particle, *, population_size: int) -> Any:
        """A state shaped like one whose current run has ``population_size`` members.

        It is the ``like=`` for ``nytorch_fn.checkpoint.load`` of a state saved
        after a restart (its ``asked`` bookkeeping has one row per member;
        everything else has the shapes of ``init(x)``'s).

        Args:
            x: the centre the saved run was started from (a single particle of its species).
            population_size: the current run's population size, an int >= 2
                (the saved state's ``population_size``).

        Returns:
            A state of this algorithm with those shapes (its values are ``init(x)``'s).

        Raises:
            ValueError: ``population_size`` is not an int >= 2.

        Examples:
            >>> from nytorch_fn import checkpoint
            >>> def loss(pop):                          # [N]: the squared distance to 1
            ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
            >>> g = torch.Generator().manual_seed(0)
            >>> x0 = nf.particle(nn.Linear(2, 1)).randn(generator=g)
            >>> ipop = IPOP(algorithm=CMAES(population_size=6, sigma=0.5), tolfun=1e-3, maximize=False)
            >>> state, _ = ipop.run(ipop.init(x0), loss, 60, generator=g)
            >>> state.restarts >= 1
            True
            >>> checkpoint.save("ipop.ckpt", {"state": state, "n": state.population_size})
            >>> n = checkpoint.load("ipop.ckpt", like=0, at="n")   # or keep n elsewhere
            >>> like = {"state": ipop.template(x0, population_size=n), "n": 0}
            >>> loaded = checkpoint.load("ipop.ckpt", like=like)["state"]
            >>> loaded.population_size == state.population_size, bool(torch.equal(loaded.sigma, state.sigma))
            (True, True)
        """
        state = self.init(x)
        if isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 2:
            raise ValueError(f"{type(self).__name__}.template: population_size expects an int >= 2, got {population_size!r}")
        return _resized(state._replace(population_size=population_size))  # one process: n rows

    def inner_for(self, state: Any) -> Algorithm:
        """The inner algorithm running now (its population size and initial sigma).

        Args:
            state: a state of this algorithm.

        Returns:
            ``algorithm`` with the current run's ``population_size`` and ``sigma``.
        """
        a = self.algorithm
        if state.population_size == a.population_size and state.sigma0 == a.sigma:
            return a
        return attrs.evolve(a, population_size=state.population_size, sigma=state.sigma0)

    # -- kernels --------------------------------------------------------------------

    def _new_run(self, centre: Particle, n: int, sigma0: float, *, generator: Any, coll: Any) -> Any:
        inner = attrs.evolve(self.algorithm, population_size=n, sigma=sigma0)
        fields = inner._init(centre, generator=generator, coll=coll)
        device = fields["m"].device
        unkept = torch.tensor(math.nan, dtype=torch.float64, device=device)
        return inner.State(best=centre, best_fitness=unkept, generation=0, asked=_stub(device), **fields)

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        a = self.algorithm
        inner = self._new_run(x, a.population_size, float(a.sigma), generator=generator, coll=coll)
        h = _history_length(inner.m.numel(), a.population_size)
        return {
            "inner": inner,
            "centre": x.clone(),
            "population_size": a.population_size,
            "sigma": inner.sigma.clone(),
            "sigma0": float(a.sigma),
            "restarts": 0,
            "evaluations": 0,
            "run_evaluations": 0,
            "history": torch.full((h,), math.nan, dtype=torch.float64, device=inner.m.device),
            "reason": "",
            **self._extra_init(),
        }

    def _extra_init(self) -> dict:
        return {}

    def _population_after(self, fields: dict, n: int) -> int:
        return fields.get("population_size", n)  # a restart's new size, carried by the base

    def _ask(self, state: Any, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        pop, fields = self.inner_for(state)._ask(state.inner, generator=generator, coll=coll, donate=donate)
        return pop, {"inner": state.inner._replace(**fields)}

    def _tell(self, state: Any, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        inner_algo = self.inner_for(state)
        fields = inner_algo._tell(state.inner, population, score, generator=generator, coll=coll, donate=donate)
        inner = state.inner._replace(generation=state.inner.generation + 1, **fields)
        n = state.population_size
        h = state.history if donate else state.history.clone()
        k = state.inner.generation % h.numel()
        h[k] = score.max().to(h.dtype)
        count = inner.generation
        out = {
            "inner": inner,
            "sigma": inner.sigma.clone(),
            "evaluations": state.evaluations + n,
            "run_evaluations": state.run_evaluations + n,
            "history": h,
        }
        reason = stop_reason(inner, state.sigma0, h, count, score, n, tolfun=self.tolfun, tolx=self.tolx)
        reason = self._limit(state, out, reason)
        if reason:
            plan = self._next(state, out, generator)
            if plan is not None:
                out.update(self._restart(state, plan, reason, generator=generator, coll=coll))
        return out

    def _limit(self, state: Any, out: dict, reason: str) -> str:
        return reason

    def _next(self, state: Any, out: dict, generator: Any) -> tuple[int, float, dict] | None:
        """(population size, initial sigma, extra fields) of the next run; None: no restart left."""
        if state.restarts >= self.max_restarts:
            return None
        n = int(round(state.population_size * self.increase))
        return n, float(self.algorithm.sigma), {}

    def _restart(self, state: Any, plan: tuple[int, float, dict], reason: str, *, generator: Any, coll: Any) -> dict:
        n, sigma0, extra = plan
        centre = state.centre
        if self.restart_centre is not None:
            centre = _checked_centre(self.restart_centre(state.centre, generator), state.centre, type(self).__name__)
        inner = self._new_run(centre.clone(), n, sigma0, generator=generator, coll=coll)
        h = torch.full_like(state.history, math.nan)
        return {"inner": inner, "population_size": n, "sigma": inner.sigma.clone(), "sigma0": sigma0,
                "restarts": state.restarts + 1, "run_evaluations": 0, "history": h, "reason": reason, **extra}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(algorithm=CMAES(population_size=6, sigma=0.5)), exact=True)


@attrs.frozen(kw_only=True)
class BIPOP(IPOP):
    """Restarts in two interlaced regimes, large and small populations (Hansen 2009).

    The same fields as ``IPOP`` (module docstring: the regimes).

    Args:
        algorithm: as ``IPOP``'s: the first run's
            population size and ``sigma``.
        increase: the large regime's population factor per restart (> 1, default 2).
        max_restarts: the large regime's restarts allowed (default 9); small runs
            are interlaced for free, within the budget rule.
        tolfun: as ``IPOP``'s.
        tolx: as ``IPOP``'s.
        restart_centre: as ``IPOP``'s.
        maximize: as ``IPOP``'s.

    All arguments are keyword-only.

    Examples:
        >>> import math
        >>> from nytorch_fn.algorithms import ravel
        >>> def rastrigin(pop):                         # [N], many local minima, the global one at 0
        ...     x = ravel(pop).double()
        ...     return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)
        >>> g = torch.Generator().manual_seed(0)
        >>> x0 = nf.particle(nn.Linear(2, 1, bias=False)).randn(generator=g) * 3
        >>> bipop = BIPOP(algorithm=CMAES(population_size=6, sigma=2.0), maximize=False)
        >>> state, history = bipop.run(bipop.init(x0), rastrigin, 300, generator=g)
        >>> state.generation, state.restarts >= 1, state.regime in ("large", "small")
        (300, True, True)
    """

    State = BIPOPState  # type: ignore[assignment]  # a State of its own, with BIPOP's extra fields

    def _extra_init(self) -> dict:
        return {"large_restarts": 0, "large_evaluations": 0, "small_evaluations": 0, "last_large": 0,
                "regime": "large", "run_limit": 0}

    def _limit(self, state: Any, out: dict, reason: str) -> str:
        if not reason and state.run_limit and out["run_evaluations"] >= state.run_limit:
            return "budget"
        return reason

    def _next(self, state: Any, out: dict, generator: Any) -> tuple[int, float, dict] | None:
        used = out["run_evaluations"]
        large, small = state.large_evaluations, state.small_evaluations
        last_large = state.last_large
        if state.regime == "large":
            large += used
            last_large = used
        else:
            small += used
        n0, sigma0 = self.algorithm.population_size, float(self.algorithm.sigma)
        device = state.history.device
        if small < large:  # small runs do not count against max_restarts
            n_large = int(round(n0 * self.increase ** max(state.large_restarts, 1)))
            u = draw("rand", (2,), generator, device=device, dtype=torch.float64).tolist()
            n = max(n0, int(math.floor(n0 * (n_large / (2 * n0)) ** (u[0] ** 2))))
            regime, sigma, limit, restarts = "small", sigma0 * 10 ** (-2 * u[1]), last_large // 2, state.large_restarts
        else:
            if state.large_restarts >= self.max_restarts:
                return None
            restarts = state.large_restarts + 1
            n = int(round(n0 * self.increase**restarts))
            regime, sigma, limit = "large", sigma0, 0
        extra = {"large_restarts": restarts, "large_evaluations": large, "small_evaluations": small,
                 "last_large": last_large, "regime": regime, "run_limit": limit}
        return n, sigma, extra

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(algorithm=CMAES(population_size=6, sigma=0.5)), exact=True)


def _checked_centre(c: Any, like: Particle, where: str) -> Particle:
    if not isinstance(c, Particle) or c.species is not like.species or c.population_size is not None:
        raise TypeError(f"{where}: restart_centre must return a single particle of {like.species!r}, got {describe(c)}")
    return c


def _resized(state: Any) -> Any:
    """``state`` with its ``asked`` bookkeeping sized for its current run (one process)."""
    n = state.population_size
    if int(state.asked[0, 0]) == n:
        return state
    return state._replace(asked=probe(None, n, n, state.asked.device))
