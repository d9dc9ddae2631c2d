"""Differential evolution (Storn & Price 1997): rand/1/bin and current-to-best/1/bin.

For every member ``x_i`` (all at once, one stacked op per tensor), with
``r1, r2, r3`` distinct members other than ``i`` drawn uniformly, ``F`` the
differential weight and ``x_best`` the best parent::

    rand/1:            v_i = x_r1 + F (x_r2 - x_r3)
    current-to-best/1: v_i = x_i + F (x_best - x_i) + F (x_r1 - x_r2)

binomial crossover: the trial ``t_i`` takes ``v_i``'s value where
``U(0, 1) < CR`` and at one position ``j_rand`` drawn uniformly over all of
the member's searched values (so at least one value comes from ``v_i``),
``x_i``'s elsewhere; then the bounds. Selection, member by member: ``t_i``
replaces ``x_i`` when its fitness is at least as good (NaN never is).

The first ``ask`` returns the initial population itself (brought inside
the bounds), to be evaluated; every later one returns the trials.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import torch

from .._checks import check_real
from .._errors import PopulationSizeError
from .._particle import Particle, assemble, build, lincomb, operational
from ._base import (Algorithm, Example, bits_dtype, copy_rows_, draw_seed, scratch_like, select_rows,
                    workspace)
from ._common import maximize_field, v_unit
from ._space import BOUND_HANDLING, check_bounds, enforce_bounds

# ---------------------------------------------------------------------------
# pieces shared by DE, PSO and NSGA2
# ---------------------------------------------------------------------------


def bounds_field(name: str) -> Any:
    """An attrs field ``bounds``: None or ``(low, high)`` (numbers, 0-d tensors or single
    particles), normalised by ``_space.check_bounds`` at construction."""
    return attrs.field(default=None, converter=lambda v: check_bounds(v, f"{name}: bounds"))


def handling_field(name: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in BOUND_HANDLING:
            raise ValueError(f"{name}: bound_handling expects one of {list(BOUND_HANDLING)}, got {value!r}")
        if value == "reflect" and instance.bounds is not None:
            lo, hi = instance.bounds
            if isinstance(lo, float) and isinstance(hi, float) and not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{name}: bound_handling='reflect' expects finite bounds, got ({lo}, {hi})")

    return attrs.field(default="clip", validator=check)


def check_bounds_species(bounds: Any, template: Particle, where: str) -> None:
    """Particle bounds must be of the population's species."""
    if bounds is not None:
        check_bounds(bounds, where, template)


_SQRT_HALF = math.sqrt(0.5)  # M_SQRT1_2


def uniform(z: torch.Tensor) -> torch.Tensor:
    """Standard-normal draws turned into U(0, 1) draws (``Phi(z)``) in ``z``'s own buffer (a fresh
    draw the caller owns), kept inside the open interval ``(0, 1)``.

    ``Phi`` is computed as ATen computes ``torch.special.ndtr``, ``(1 + erf(z * M_SQRT1_2)) * 0.5``,
    step by step in place (``ndtr(z, out=z)`` allocates three temporaries of ``z``'s size): the
    same kernels, so the same bits."""
    u = z.mul_(_SQRT_HALF).erf_().add_(1.0).mul_(0.5)
    return u.clamp_(torch.finfo(u.dtype).tiny, 1.0 - torch.finfo(u.dtype).eps / 2)


def own_population(population: Particle, where: str) -> Particle:
    """The initial population as the state's own buffers (``init`` hands kernels a copy)."""
    if not operational(population):
        raise ValueError(f"{where}: expected a population with at least one operational parameter, got none")
    return build(population.species, [t.detach() for t in population.tensors])


def at_least(n: int, low: int, where: str) -> None:
    if n < low:
        raise PopulationSizeError(f"{where}: expected a population of at least {low} members, got {n}")


def distinct_others(n: int, k: int, generator: Any, device: Any) -> torch.Tensor:
    """``[n, k]`` indices: row ``i`` holds ``k`` distinct members, none of them ``i``, uniformly.

    Candidate ``c_j`` is uniform on ``[0, n - 1 - j)``; it is moved past the
    already excluded indices in increasing order (``c += c >= e`` for each
    excluded ``e``, sorted), which maps it uniformly onto the indices not yet used.
    """
    gdev = generator.device if generator is not None else device
    u = torch.rand(n, k, generator=generator, dtype=torch.float64, device=gdev).to(device)
    excluded = torch.arange(n, device=device).unsqueeze(1)
    picks = []
    for j in range(k):
        c = (u[:, j] * (n - 1 - j)).long().clamp_(max=n - 2 - j)
        for e in torch.sort(excluded, dim=1).values.unbind(1):
            c = c + (c >= e).long()
        picks.append(c)
        excluded = torch.cat([excluded, c.unsqueeze(1)], dim=1)
    return torch.stack(picks, dim=1)


def replace_rows(old: list[torch.Tensor], new: list[torch.Tensor], rows: torch.Tensor, in_place: bool,
                 buffers: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Per tensor, ``old`` with the members where ``rows`` (``[n]`` bool) is True taken from
    ``new`` (exact copies of either's values: ``copy_rows_``, which moves the replaced rows
    only), into ``old`` when ``in_place``, else into a copy of it.

    ``buffers``: per tensor, a contiguous scratch tensor of ``new``'s shape (sharing storage
    with neither ``old`` nor ``new``) for ``copy_rows_`` under ``torch.compile`` (the same values)."""
    out = []
    for k, (o, t) in enumerate(zip(old, new)):
        target = o if in_place else o.clone(memory_format=torch.contiguous_format)
        out.append(copy_rows_(target, t, rows, buffers[k] if buffers is not None else None))
    return out


def below_mask_(u: torch.Tensor, c: float) -> torch.Tensor:
    """``u < c`` as an integer mask of ``u``'s element size (-1 where True, else 0), written over
    ``u``'s own buffer (a view of it in the integer dtype is returned; ``u`` then means nothing).

    ``u`` holds non-negative floats (uniform draws) and ``c`` > 0: their bit patterns are ordered
    as their values, so ``u < c`` is ``bits(u) < bits(r)`` for ``r`` = ``c`` rounded to ``u``'s
    dtype (torch compares a tensor with a Python number in the tensor's dtype: the test checks the
    values next to ``r``), and ``(bits(u) - bits(r)) >> (width - 1)`` is the mask: two
    vectorised passes where ``torch.lt`` plus a conversion take three.
    """
    bits = bits_dtype(u)
    r = torch.tensor(c, dtype=u.dtype, device=u.device)
    threshold = int(r.view(bits))
    return u.view(bits).sub_(threshold).bitwise_right_shift_(8 * u.element_size() - 1)


def member_mask(rows: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """A ``[n]`` bool vector shaped ``[n, 1, ...]`` against each tensor."""
    return [rows.view(rows.shape[0], *([1] * (t.dim() - 1))).to(t.device) for t in like]


# ---------------------------------------------------------------------------
# DE
# ---------------------------------------------------------------------------


class DEState(NamedTuple):
    """The parents of DE (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: the parents (this process's members; before the first
            ``tell``, the initial population, not yet evaluated).
        score: ``[N]`` float64, the parents' fitness with higher better and
            NaN as ``-inf`` (the fitness itself, negated when ``maximize=False``).
        evaluated: whether ``population`` has been evaluated (False until the first ``tell``).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle
    score: torch.Tensor
    evaluated: bool


STRATEGIES = ("rand/1/bin", "current-to-best/1/bin")


def _strategy(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in STRATEGIES:
        raise ValueError(f"DE: strategy expects one of {STRATEGIES}, got {value!r}")


def _weight(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"DE: {attribute.name}", low=0.0, high=2.0, low_open=True)


@attrs.frozen(kw_only=True)
class DE(Algorithm):
    """Differential evolution, rand/1/bin or current-to-best/1/bin, on a population of particles.

    ``init(population)`` takes the initial population (``N >= 4`` members;
    e.g. ``uniform_population`` inside the bounds). Members are combined
    tensor by tensor; crossover picks values across all operational
    parameters of a member. Module docstring: the update.

    Args:
        strategy: ``"rand/1/bin"`` (default) or ``"current-to-best/1/bin"``.
        differential_weight: ``F`` in (0, 2] (default 0.5, Storn & Price's starting point).
        crossover_rate: ``CR`` in [0, 1] (default 0.9).
        bounds: None, or ``(low, high)``: numbers, 0-d tensors or single
            particles of the population's species; trials are brought inside
            by ``bound_handling``.
        bound_handling: ``"clip"`` (default) or ``"reflect"``.
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> from nytorch_fn.algorithms import uniform_population
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> g = torch.Generator().manual_seed(0)
        >>> de = DE(bounds=(-5.0, 5.0), maximize=False)
        >>> state = de.init(uniform_population(nf.particle(nn.Linear(4, 2)), 30, -5.0, 5.0, generator=g))
        >>> state, history = de.run(state, loss, 300, generator=g)
        >>> bool(state.best_fitness < 1e-6)
        True
    """

    strategy: str = attrs.field(default="rand/1/bin", validator=_strategy)
    differential_weight: float = attrs.field(default=0.5, validator=_weight)
    crossover_rate: float = attrs.field(default=0.9, validator=v_unit)
    bounds: Any = bounds_field("DE")
    bound_handling: str = handling_field("DE")
    maximize: bool = maximize_field()

    State = DEState
    kind = "population"

    def _check_population(self, n: int) -> None:
        at_least(n, 4, "DE.init")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        pop = own_population(x, "DE.init")
        check_bounds_species(self.bounds, pop[0], "DE.init")
        pop = enforce_bounds(pop, self.bounds, self.bound_handling, donate=True)  # the first parents too
        device = pop.tensors[0].device
        return {"population": pop, "score": torch.full((coll.n,), -math.inf, dtype=torch.float64, device=device),
                "evaluated": False}

    def _ask(self, state: DEState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        pop = state.population
        if not state.evaluated:
            return pop, {}
        n, f = coll.n, self.differential_weight
        device = pop.tensors[0].device
        ws = workspace(donate)  # inside run: the trials and the temporaries reuse the loop's buffers
        idx = coll.block(distinct_others(n, 3, generator, device))
        if self.strategy == "rand/1/bin":
            if ws is None:
                a, b, c = (coll.take(pop, idx[:, j]) for j in range(3))
                mutant = lincomb([1.0, f, -f], [a, b, c], donate=True)  # a is this call's own copy
            else:
                # lincomb's own steps (acc = a * 1.0, then acc += w_k x_k in place) with one
                # buffer for the second and third terms in turn: the same kernels, the same bits
                mutant = coll.take(pop, idx[:, 0], out=ws.pop("de.trials", None))
                acc = operational(mutant)
                torch._foreach_mul_(acc, 1.0)
                for j, w in ((1, f), (2, -f)):
                    term = coll.take(pop, idx[:, j], out=ws.get("de.term"))
                    ws["de.term"] = term
                    torch._foreach_add_(acc, operational(term), alpha=w)
        else:
            best = coll.member(pop, int(torch.argmax(state.score)))
            a, b = (coll.take(pop, idx[:, j]) for j in range(2))
            mutant = lincomb([1.0 - f, f, f, -f], [pop, best, a, b])
        xs, vs = operational(pop), operational(mutant)
        masks = self._crossover_masks(pop, n, generator, coll, ws)
        # the mutant is this call's own buffer: the trial torch.where(mask, mutant, parent) is
        # written into it as an exact bit select (select_rows, with a per-value mask)
        if masks is not None:
            for m, v, x in zip(masks, vs, xs):
                select_rows(m, v, x, v, v)  # the mutant's buffer as the scratch and the result
        trial = vs
        sp = pop.species
        out = build(sp, assemble(sp, pop.tensors, trial, None))
        return enforce_bounds(out, self.bounds, self.bound_handling, donate=True), {}

    def _crossover_masks(self, pop: Particle, n: int, generator: Any, coll: Any,
                         ws: dict | None = None) -> list[torch.Tensor] | None:
        """Per tensor, where the trial takes the mutant's value (None: everywhere, ``CR = 1``), as
        integer masks of the tensor's element size: -1 (every bit set) there, else 0.

        ``u < CR`` with ``u`` uniform in [0, 1) from the members' noise blocks
        (``coll.noise(..., uniform=True)``), compared as torch's ``u < CR`` compares (in ``u``'s
        dtype), and computed on the bit patterns in ``u``'s own buffer: for non-negative floats
        the patterns are ordered as the values, so ``u < CR`` is ``bits(u) < t`` for the
        threshold pattern ``t``, and ``(bits(u) - t) >> (width - 1)`` is the mask; ``j_rand``
        comes from the generator, for all ``N``. ``ws``: the run loop's workspace (the noise
        reuses its buffer).
        """
        cr = self.crossover_rate
        if cr >= 1.0:
            return None
        xs = operational(pop)
        device = xs[0].device
        lay = pop.species.layout()
        sizes = [lay.numel[i] for i in lay.op]
        gdev = generator.device if generator is not None else device
        j_rand = coll.block(torch.randint(0, sum(sizes), (n,), generator=generator, device=gdev).to(device))
        if cr > 0.0:
            z = coll.noise(pop[0], draw_seed(generator), uniform=True,
                           out=ws.get("de.noise") if ws is not None else None)
            if ws is not None:
                ws["de.noise"] = z
            masks = [below_mask_(t, cr) for t in operational(z)]
        else:
            masks = [torch.zeros(x.shape, dtype=bits_dtype(x), device=device) for x in xs]
        off = 0
        rows = torch.arange(j_rand.shape[0], device=device)
        for m, k in zip(masks, sizes):
            hit = (j_rand >= off) & (j_rand < off + k)
            m.view(m.shape[0], -1)[rows[hit], j_rand[hit] - off] = -1
            off += k
        return masks

    def _tell(self, state: DEState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        if not state.evaluated:
            return {"score": score.clone(), "evaluated": True}
        ws = workspace(donate)
        better = score >= state.score  # a trial as good as its parent replaces it; NaN (-inf) never beats a number
        xs = operational(state.population)
        term = operational(scratch_like(ws, "de.term", population)) if ws is not None else None
        kept = replace_rows(xs, operational(population), coll.block(better), in_place=donate, buffers=term)
        if ws is not None and population is not state.population:
            ws["de.trials"] = population  # donated, and now copied from: the next trials' buffers
        sp = state.population.species
        return {
            "population": build(sp, assemble(sp, state.population.tensors, kept, None)),
            "score": torch.where(better, score, state.score),
        }

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(bounds=(-2.0, 2.0)), population=8, exact=True)
