"""NSGA-II (Deb, Pratap, Agarwal & Meyarivan 2002): elitist multi-objective search.

Fitness is ``[N, M]`` (``M >= 2`` objectives; higher is better per objective
unless ``maximize`` says otherwise, per objective or for all). A member
*dominates* another when it is at least as good in every objective and
better in one. Each generation:

1. **Mating**: ``N`` children, each from two parents picked by binary
   tournaments (lower front rank wins, then larger crowding distance, then
   the first drawn).
2. **Simulated binary crossover** (SBX, Deb & Agrawal 1995, distribution
   index ``crossover_eta``): with probability ``crossover_prob`` a child is
   crossed, and then each value with probability 1/2, as
   ``0.5 ((p1 + p2) + s beta (p1 - p2))`` with ``beta`` SBX's spread factor and
   ``s = +-1`` at random: one of the two SBX children per value, so each
   child is drawn alone (children do not come in mirrored pairs, which lets
   any block of members be drawn by itself). Otherwise the child is ``p1``.
3. **Mutation** of each value with probability ``mutation_prob`` (default
   ``1 / d``): *polynomial* (Deb & Goyal 1996, index ``mutation_eta``, the
   bounded form, needs ``bounds``) or *gaussian* (``+ mutation_sigma * N(0, 1)``).
   Then the bounds (``clip`` or ``reflect``).
4. **Environmental selection** from parents and children together (``2N``):
   fast non-dominated sorting into fronts, crowding distance within each
   front (boundary members get ``inf``; per objective the gap between
   neighbours divided by the front's range), then the ``N`` best by
   (front, crowding distance descending, position).

A member with any objective NaN (or ``-inf`` after the sign of
``maximize``) counts as dominated by every member without one: such members
are never parents while others exist.

**Best.** A multi-objective run has no total order to keep a "best so far"
by, so ``state.best`` is recomputed every generation as the *compromise*
member of the members just evaluated: among their first front, after
scaling each objective to ``[0, 1]`` over that front, the member closest
(Euclidean) to the ideal point (ties: the first). ``state.best_fitness`` is
its ``[M]`` fitness (as given, not negated). The whole elitist front of the
parents is ``NSGA2.front(state)``.

The first ``ask`` returns the initial population itself, to be evaluated.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import torch

from .._checks import check_int
from .._fitness import directions
from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example, draw_seed, scratch_tensor, workspace
from ._de import at_least, bounds_field, check_bounds_species, handling_field, member_mask, own_population, uniform
from ._common import v_nonneg, v_positive, v_unit
from ._space import enforce_bounds

# ---------------------------------------------------------------------------
# sorting and crowding (plain tensors)
# ---------------------------------------------------------------------------


def dominance(score: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` bool: ``[i, j]`` when member ``i`` dominates member ``j`` (``score`` ``[K, M]``,
    higher better)."""
    a, b = score.unsqueeze(1), score.unsqueeze(0)
    return (a >= b).all(-1) & (a > b).any(-1)


def worst_rows(score: torch.Tensor) -> torch.Tensor:
    """``score`` with every objective of a row that has a ``-inf`` (a NaN) set to ``-inf``."""
    bad = torch.isneginf(score).any(-1, keepdim=True) | torch.isnan(score).any(-1, keepdim=True)
    return torch.where(bad, torch.full_like(score, -math.inf), score)


def nondominated_ranks(score: torch.Tensor, needed: int | None = None) -> torch.Tensor:
    """Front index per member (0: not dominated by anyone), by fast non-dominated sorting.

    Peels fronts until at least ``needed`` members are ranked (all of them
    when None); members left unranked get rank ``K``.

    Args:
        score: ``[K, M]`` float, higher better.

    Returns:
        ``[K]`` int64.
    """
    k = score.shape[0]
    needed = k if needed is None else min(needed, k)
    dom = dominance(score).to(torch.float32)  # counts below 2**24: exact
    count = dom.sum(0)
    rank = torch.full((k,), k, dtype=torch.int64, device=score.device)
    remaining = torch.ones(k, dtype=torch.bool, device=score.device)
    r, ranked = 0, 0
    while ranked < needed:
        front = remaining & (count == 0)
        rank.masked_fill_(front, r)
        ranked += int(front.sum())
        remaining &= ~front
        count -= front.to(torch.float32) @ dom
        r += 1
    return rank


def first_front(score: torch.Tensor) -> torch.Tensor:
    """``[K]`` bool: the members no other member dominates."""
    return ~dominance(score).any(0)


def crowding_distance(score: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Crowding distance of each member within its front (Deb et al. 2002, section III-B).

    Per objective, the members of a front sorted by it (ties by position):
    the first and last get ``inf``, the others ``(next - previous) / (max -
    min)`` over the front, summed over objectives. A front whose range is
    zero (or not finite) in an objective adds 0 for it.

    Args:
        score: ``[K, M]`` float, higher better.
        rank: ``[K]`` int64 front indices.

    Returns:
        ``[K]`` float64.
    """
    k, m = score.shape
    dist = torch.zeros(k, dtype=torch.float64, device=score.device)
    if k == 0:
        return dist
    fronts = int(rank.max()) + 1
    s = score.to(torch.float64)
    for j in range(m):
        v = s[:, j]
        order = torch.argsort(v, stable=True)
        order = order[torch.argsort(rank[order], stable=True)]
        vs, rs = v[order], rank[order]
        change = rs[1:] != rs[:-1]
        first = torch.cat([torch.ones(1, dtype=torch.bool, device=s.device), change])
        last = torch.cat([change, torch.ones(1, dtype=torch.bool, device=s.device)])
        hi = torch.full((fronts,), -math.inf, dtype=torch.float64, device=s.device).scatter_reduce(0, rs, vs, "amax")
        lo = torch.full((fronts,), math.inf, dtype=torch.float64, device=s.device).scatter_reduce(0, rs, vs, "amin")
        span = (hi - lo)[rs]
        prev = torch.cat([vs[:1], vs[:-1]])
        nxt = torch.cat([vs[1:], vs[-1:]])
        gap = ((nxt - prev) / span).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        gap = torch.where(torch.isfinite(span) & (span > 0), gap, torch.zeros_like(gap))
        gap[first | last] = math.inf
        dist[order] += gap
    return dist


def survivors(rank: torch.Tensor, crowding: torch.Tensor, n: int) -> torch.Tensor:
    """The indices of the ``n`` best members by (rank, crowding descending, position), ascending."""
    order = torch.argsort(-crowding, stable=True)
    order = order[torch.argsort(rank[order], stable=True)]
    return torch.sort(order[:n]).values


def compromise(score: torch.Tensor) -> int:
    """The first-front member nearest the ideal point after scaling each objective to [0, 1]
    over the front (ties: the first)."""
    front = torch.nonzero(first_front(score)).squeeze(1)
    f = score[front].to(torch.float64)
    lo, hi = f.amin(0), f.amax(0)
    span = hi - lo
    ok = torch.isfinite(span) & (span > 0)
    scaled = torch.where(ok, (f - lo) / torch.where(ok, span, torch.ones_like(span)), torch.ones_like(f))
    gap = (1.0 - scaled).square().sum(1).nan_to_num_(nan=math.inf)
    return int(front[int(torch.argmin(gap))])


# ---------------------------------------------------------------------------
# NSGA2
# ---------------------------------------------------------------------------


class NSGA2State(NamedTuple):
    """The parents of NSGA-II (a pytree).

    Attributes:
        best: the first front's compromise member (module docstring; a single particle).
        best_fitness: its ``[M]`` fitness.
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: the parents (this process's members; before the first
            ``tell``, the initial population, not yet evaluated).
        score: ``[N, M]`` float64, the parents' objectives with higher better
            and NaN as ``-inf``.
        rank: ``[N]`` int64, each parent's front (0: non-dominated).
        crowding: ``[N]`` float64, each parent's crowding distance in its front.
        evaluated: whether ``population`` has been evaluated.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle
    score: torch.Tensor
    rank: torch.Tensor
    crowding: torch.Tensor
    evaluated: bool


MUTATIONS = ("polynomial", "gaussian")


def _objectives(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, "NSGA2: objectives", low=2)


def _prob_or_none(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        v_unit(instance, attribute, value)


def _mutation(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value not in MUTATIONS:
        raise ValueError(f"NSGA2: mutation expects one of {MUTATIONS} or None, got {value!r}")
    if value == "polynomial" and instance.bounds is None:
        raise ValueError("NSGA2: mutation='polynomial' needs bounds=(low, high); use mutation='gaussian' without bounds")


@attrs.frozen(kw_only=True)
class NSGA2(Algorithm):
    """NSGA-II on a population of particles: non-dominated sorting, crowding, SBX and mutation.

    ``init(population)`` takes the initial population (``N >= 2``; e.g.
    ``uniform_population`` inside the bounds); ``tell`` takes fitness ``[N, M]``.
    Module docstring: the generation, and what ``best`` means here.

    Args:
        objectives: ``M >= 2``, the number of fitness columns (default 2).
        crossover_prob: probability that a child is crossed (default 0.9).
        crossover_eta: SBX distribution index >= 0 (default 20; larger: children nearer their parents).
        mutation: ``"polynomial"`` (needs bounds) or ``"gaussian"``; None
            (default): polynomial with bounds, gaussian without.
        mutation_prob: per-value mutation probability; None: ``1 / d``.
        mutation_eta: polynomial mutation index >= 0 (default 20).
        mutation_sigma: gaussian mutation scale > 0 (default 0.1).
        bounds: None, or ``(low, high)``: numbers or single particles of the species.
        bound_handling: ``"clip"`` (default) or ``"reflect"``.
        maximize: a bool for every objective, or a tuple of ``M`` bools (default True).

    All arguments are keyword-only.

    Examples:
        >>> from nytorch_fn.algorithms import ravel, uniform_population
        >>> def zdt1(pop):                              # [N, 2], both minimised; front: f2 = 1 - sqrt(f1)
        ...     x = ravel(pop).double()
        ...     g = 1 + 9 * x[:, 1:].mean(1)
        ...     return torch.stack([x[:, 0], g * (1 - torch.sqrt(x[:, 0] / g))], 1)
        >>> rng = torch.Generator().manual_seed(0)
        >>> nsga = NSGA2(bounds=(0.0, 1.0), maximize=False)
        >>> pop = uniform_population(nf.particle(nn.Linear(4, 1, bias=False)), 40, 0.0, 1.0, generator=rng)
        >>> state, history = nsga.run(nsga.init(pop), zdt1, 100, generator=rng)
        >>> members, score = nsga.front(state)
        >>> f = -score                                  # the fitness (score is higher-is-better)
        >>> bool(((f[:, 1] - (1 - f[:, 0].sqrt())).abs() < 0.05).all()), history.best_fitness.shape
        (True, torch.Size([100, 2]))
    """

    objectives: int = attrs.field(default=2, validator=_objectives)
    crossover_prob: float = attrs.field(default=0.9, validator=v_unit)
    crossover_eta: float = attrs.field(default=20.0, validator=v_nonneg)
    bounds: Any = bounds_field("NSGA2")
    mutation: str | None = attrs.field(default=None, validator=_mutation)
    mutation_prob: float | None = attrs.field(default=None, validator=_prob_or_none)
    mutation_eta: float = attrs.field(default=20.0, validator=v_nonneg)
    mutation_sigma: float = attrs.field(default=0.1, validator=v_positive)
    bound_handling: str = handling_field("NSGA2")
    maximize: Any = attrs.field(default=True)

    State = NSGA2State
    kind = "population"
    multi_objective = True

    @maximize.validator
    def _check_maximize(self, attribute: attrs.Attribute, value: Any) -> None:
        directions(value, self.objectives, "NSGA2")

    def _check_population(self, n: int) -> None:
        at_least(n, 2, "NSGA2.init")

    @property
    def mutation_kind(self) -> str:
        """The mutation used: ``mutation``, or (None) polynomial with bounds and gaussian without."""
        return self.mutation if self.mutation is not None else ("polynomial" if self.bounds is not None else "gaussian")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        where = "NSGA2.init"
        pop = own_population(x, where)
        check_bounds_species(self.bounds, pop[0], where)
        pop = enforce_bounds(pop, self.bounds, self.bound_handling, donate=True)  # the first parents too
        n = coll.n
        device = pop.tensors[0].device
        m = self.objectives
        return {
            "population": pop,
            "score": torch.full((n, m), -math.inf, dtype=torch.float64, device=device),
            "rank": torch.zeros(n, dtype=torch.int64, device=device),
            "crowding": torch.zeros(n, dtype=torch.float64, device=device),
            "evaluated": False,
        }

    # -- mating ----------------------------------------------------------------------

    def _ask(self, state: NSGA2State, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        pop = state.population
        if not state.evaluated:
            return pop, {}
        n = coll.n
        device = pop.tensors[0].device
        gdev = generator.device if generator is not None else device
        cand = torch.randint(0, n, (n, 2, 2), generator=generator, device=gdev).to(device)
        a, b = cand[..., 0], cand[..., 1]
        ra, rb = state.rank[a], state.rank[b]
        a_wins = (ra < rb) | ((ra == rb) & (state.crowding[a] >= state.crowding[b]))
        parents = torch.where(a_wins, a, b)  # [n, 2]
        crossed = torch.rand(n, generator=generator, dtype=torch.float64, device=gdev).to(device) < self.crossover_prob
        local = coll.block(parents)
        ws = workspace(donate)  # inside run: parents, children and every temporary reuse the loop's buffers
        p1 = coll.take(pop, local[:, 0], out=ws.pop("nsga2.children", None) if ws is not None else None)
        p2 = coll.take(pop, local[:, 1], out=ws.get("nsga2.partners") if ws is not None else None)
        if ws is not None:
            ws["nsga2.partners"] = p2
        template = pop[0]
        x1, x2 = operational(p1), operational(p2)
        children = self._sbx(x1, x2, coll.block(crossed), template, generator, coll, ws)
        self._mutate(children, x2, template, generator, coll, ws)
        sp = pop.species
        out = build(sp, assemble(sp, p1.tensors, children, None))
        return enforce_bounds(out, self.bounds, self.bound_handling, donate=True), {}

    @staticmethod
    def _noise(coll: Any, template: Particle, seed: int, ws: dict | None, key: str) -> list[torch.Tensor]:
        z = coll.noise(template, seed, out=ws.get(key) if ws is not None else None)
        if ws is not None:
            ws[key] = z
        return operational(z)

    def _sbx(self, x1: list, x2: list, crossed: torch.Tensor, template: Particle, generator: Any, coll: Any,
             ws: dict | None = None) -> list:
        """One SBX child per row (module docstring), in the buffers of ``x1`` (``x2``, the noise
        and the scratch tensors are overwritten; every step is the kernel of the plain
        expression in the comment beside it, in place, so the bits are those of fresh tensors)."""
        eta = self.crossover_eta
        u = [uniform(t) for t in self._noise(coll, template, draw_seed(generator), ws, "nsga2.noise1")]
        pick = self._noise(coll, template, draw_seed(generator), ws, "nsga2.noise2")  # sign and per-value choice
        out = []
        for k, (a, b, uu, z, rows) in enumerate(zip(x1, x2, u, pick, member_mask(crossed, x1))):
            t1 = scratch_tensor(ws, f"nsga2.t1.{k}", a.shape, a.dtype, a.device)
            t2 = scratch_tensor(ws, f"nsga2.t2.{k}", a.shape, a.dtype, a.device)
            m1 = scratch_tensor(ws, f"nsga2.m1.{k}", a.shape, torch.bool, a.device)
            # beta = (2u)^(1/(eta+1)) for u <= 1/2, (2 (1 - u))^(-1/(eta+1)) otherwise
            low = torch.le(uu, 0.5, out=m1)  # uu <= 0.5
            torch.mul(uu, 2, out=t1).pow_(1.0 / (eta + 1))  # (2 * uu).pow(1 / (eta + 1))
            uu.neg_().add_(1.0).mul_(2).pow_(-1.0 / (eta + 1))  # (2 * (1 - uu)).pow(-1 / (eta + 1))
            beta = torch.where(low, t1, uu, out=t1)
            # sign = where(|z| < q_.75, 1, -1): P(|z| < q_.75) = 1/2
            near = torch.lt(torch.abs(z, out=uu), 0.6744897501960817, out=m1)
            one = torch.ones((), dtype=a.dtype, device=a.device)
            beta.mul_(torch.where(near, one, -one, out=uu))  # beta * sign
            child = torch.add(a, b, out=t2).mul_(0.5)  # (a + b) * 0.5
            child.addcmul_(beta, torch.sub(a, b, out=uu), value=0.5)  # + 0.5 * beta * (a - b)
            take = torch.gt(z, 0, out=m1).bitwise_and_(rows)  # (z > 0) & rows: each value crossed w.p. 1/2
            out.append(torch.where(take, child, a, out=a))
        return out

    def _mutate(self, xs: list, spare: list, template: Particle, generator: Any, coll: Any,
                ws: dict | None = None) -> None:
        """Mutation of the children ``xs`` in place; ``spare``: per tensor a buffer of its shape
        this call may overwrite (the second parents), used with the scratch tensors."""
        lay = template.species.layout()
        d = sum(lay.numel[i] for i in lay.op)
        p = self.mutation_prob if self.mutation_prob is not None else 1.0 / d
        if p <= 0.0:
            return
        threshold = float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))
        site = [torch.lt(t, threshold, out=scratch_tensor(ws, f"nsga2.site.{k}", t.shape, torch.bool, t.device))
                for k, t in enumerate(self._noise(coll, template, draw_seed(generator), ws, "nsga2.noise1"))]
        z = self._noise(coll, template, draw_seed(generator), ws, "nsga2.noise2")
        if self.mutation_kind == "gaussian":
            for x, s, zz in zip(xs, site, z):
                zero = torch.zeros((), dtype=zz.dtype, device=zz.device)
                x.add_(torch.where(s, zz, zero, out=zz), alpha=self.mutation_sigma)  # where(s, zz, 0)
            return
        low, high = self.bounds
        lay = template.species.layout()
        eta = self.mutation_eta
        for k, (i, x, s, zz, w) in enumerate(zip(lay.op, xs, site, z, spare)):
            lo = low.tensors[i].to(x.dtype) if isinstance(low, Particle) else low
            hi = high.tensors[i].to(x.dtype) if isinstance(high, Particle) else high
            y = scratch_tensor(ws, f"nsga2.t1.{k}", x.shape, x.dtype, x.device)
            d1 = scratch_tensor(ws, f"nsga2.t2.{k}", x.shape, x.dtype, x.device)
            d2 = operational(ws["nsga2.noise1"])[k] if ws is not None else torch.empty_like(x)
            left = scratch_tensor(ws, f"nsga2.m1.{k}", x.shape, torch.bool, x.device)
            mu = uniform(zz)
            span = hi - lo
            if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
                torch.clamp(x, lo, hi, out=y)
            else:
                torch.clamp(x, lo, hi, out=y)  # x.clamp(lo, hi)
            hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
            torch.sub(y, lo, out=d1).div_(span)  # d1 = (y - lo) / span
            torch.sub(hi_t, y, out=d2).div_(span)  # d2 = (hi - y) / span
            e = 1.0 / (eta + 1)
            torch.le(mu, 0.5, out=left)  # mu <= 0.5
            # deltaq = (2 mu + (1 - 2 mu)(1 - d1)^(eta+1))^(1/(eta+1)) - 1              (mu <= 1/2)
            #          1 - (2 (1 - mu) + 2 (mu - 1/2)(1 - d2)^(eta+1))^(1/(eta+1))      (mu > 1/2)
            d1.neg_().add_(1.0).pow_(eta + 1)  # (1 - d1).pow(eta + 1)
            torch.mul(mu, 2, out=w).neg_().add_(1.0).mul_(d1)  # (1 - 2 * mu) * (1 - d1)^(eta+1)
            q_low = torch.mul(mu, 2, out=d1).add_(w).pow_(e).sub_(1.0)  # (2 * mu + ...).pow(e) - 1
            d2.neg_().add_(1.0).pow_(eta + 1)  # (1 - d2).pow(eta + 1)
            torch.sub(mu, 0.5, out=w).mul_(2).mul_(d2)  # 2 * (mu - 0.5) * (1 - d2)^(eta+1)
            q_high = mu.neg_().add_(1.0).mul_(2).add_(w).pow_(e).neg_().add_(1.0)  # 1 - (2 * (1 - mu) + ...).pow(e)
            step = torch.where(left, q_low, q_high, out=d1).mul_(span).nan_to_num_(nan=0.0)  # zero-width box: no move
            torch.where(s, torch.add(y, step, out=step), x, out=x)  # where(s, y + step, x)

    # -- selection -------------------------------------------------------------------

    def _tell(self, state: NSGA2State, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        n = coll.n
        score = worst_rows(score.to(torch.float64))
        if not state.evaluated:
            rank = nondominated_ranks(score)
            return {"score": score.clone(), "rank": rank, "crowding": crowding_distance(score, rank), "evaluated": True}
        both = torch.cat([state.score, score])
        rank = nondominated_ranks(both, n)
        crowd = crowding_distance(both, rank)
        keep = survivors(rank, crowd, n)
        mine = coll.block(keep)
        from_parents = mine[mine < n]
        from_children = mine[mine >= n] - n
        sp = state.population.species
        ws = workspace(donate)
        into = ws.pop("nsga2.next", None) if ws is not None else None
        k = from_parents.shape[0]
        if isinstance(into, Particle) and into.population_size == k + from_children.shape[0]:
            # the survivors taken straight into the rows of the loop's buffer (the same values as the cat)
            a = coll.take(state.population, from_parents, out=into[:k])
            b = coll.take(population, from_children, out=into[k:])
            pairs = list(zip(operational(a), operational(b), operational(into)))
            joined = [o if x.data_ptr() == o.data_ptr() and y.data_ptr() == o[k:].data_ptr() else torch.cat([x, y])
                      for x, y, o in pairs]
        else:
            a = coll.take(state.population, from_parents)
            b = coll.take(population, from_children)
            joined = [torch.cat([x, y]) for x, y in zip(operational(a), operational(b))]
        if ws is not None:  # donated, and now copied from: the next survivors' and children's buffers
            ws["nsga2.next"] = state.population
            ws["nsga2.children"] = population
        return {
            # non-operational parameters: the parents' (the same rows, as their config says)
            "population": build(sp, assemble(sp, state.population.tensors, joined, None)),
            "score": both[keep],
            "rank": rank[keep],
            "crowding": crowd[keep],
        }

    def _best(self, population: Particle, score: torch.Tensor, coll: Any) -> int:
        """The compromise member (module docstring) of the members just evaluated."""
        return compromise(worst_rows(score))

    def front(self, state: NSGA2State) -> tuple[Particle, torch.Tensor]:
        """The non-dominated parents: the elitist approximation of the Pareto front.

        Args:
            state: an ``NSGA2State`` after at least one ``tell`` (single process:
                under ``sharded`` each process holds only its rows).

        Returns:
            The pair ``(members, score)``, a population of the ``k`` first-front
            parents and their ``[k, M]`` float64 score (higher is better per objective:
            the fitness with the sign of ``maximize`` applied, NaN as ``-inf``).
        """
        keep = torch.nonzero(state.rank == 0).squeeze(1)
        return state.population[keep], state.score[keep]

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(bounds=(0.0, 1.0)), population=8, exact=True, objectives=2)
