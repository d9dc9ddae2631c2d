"""Particle swarm optimisation, the standard global-best form (Kennedy & Eberhart 1995, with
the inertia weight of Shi & Eberhart 1998).

Every member (a position ``x_i`` with a velocity ``v_i`` and its personal
best ``p_i``; ``g`` the best of the personal bests) moves at once::

    v_i <- w v_i + c1 r1 (p_i - x_i) + c2 r2 (g - x_i)
    x_i <- x_i + v_i                        (then the bounds, if any)

with ``r1, r2 ~ U(0, 1)`` drawn per value (the standard form) or once per
member (``per_dimension=False``, as evosax does). Defaults are Clerc &
Kennedy's constriction coefficients (2002) in inertia form, ``w = 0.7298``,
``c1 = c2 = 1.49618``, the standard PSO 2006 setting. Velocities start at
zero. Bounds apply to positions only, the initial ones included (velocities are left as they are).

``ask`` returns the current positions; ``tell`` records their fitness
(``p_i`` is replaced when the new fitness is at least as good; NaN never is)
and moves the swarm.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import torch

from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example, copy_rows_, draw_seed, row_blocks, scratch_like, workspace
from ._common import maximize_field, member_view, v_flag, v_nonneg
from ._de import at_least, bounds_field, check_bounds_species, handling_field, own_population
from ._space import clip, clip_limits, enforce_bounds


class PSOState(NamedTuple):
    """The swarm of PSO (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        population: the positions to evaluate next (this process's members).
        velocity: their velocities (a population like ``population``).
        personal_best: each member's best position so far (before the first
            ``tell``, a copy of the initial positions).
        personal_score: ``[N]`` float64, the fitness of ``personal_best`` with
            higher better and NaN as ``-inf`` (``-inf`` before the first ``tell``).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    population: Particle
    velocity: Particle
    personal_best: Particle
    personal_score: torch.Tensor


@attrs.frozen(kw_only=True)
class PSO(Algorithm):
    """Global-best particle swarm optimisation with inertia, cognitive and social coefficients.

    ``init(population)`` takes the initial positions (``N >= 2`` members;
    e.g. ``uniform_population`` inside the bounds). Positions, velocities and
    personal bests are populations of the same species, moved tensor by
    tensor. Module docstring: the update. ``APSO`` is the accelerated variant
    (no velocities, no personal bests).

    Args:
        inertia: ``w`` >= 0 (default 0.7298).
        cognitive: ``c1`` >= 0, the pull to the member's own best (default 1.49618).
        social: ``c2`` >= 0, the pull to the swarm's best (default 1.49618).
        per_dimension: draw ``r1, r2`` per value (default, the standard PSO)
            or once per member (cheaper; what evosax does).
        bounds: None, or ``(low, high)``: numbers or single particles of the
            population's species; positions are brought inside by ``bound_handling``.
        bound_handling: ``"clip"`` (default) or ``"reflect"``.
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> import math
        >>> from nytorch_fn.algorithms import ravel, uniform_population
        >>> def rastrigin(pop):                         # [N], many local minima, the global one at 0
        ...     x = ravel(pop).double()
        ...     return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)
        >>> g = torch.Generator().manual_seed(1)
        >>> pso = PSO(bounds=(-5.12, 5.12), maximize=False)
        >>> pop = uniform_population(nf.particle(nn.Linear(2, 1, bias=False)), 30, -5.12, 5.12, generator=g)
        >>> state, history = pso.run(pso.init(pop), rastrigin, 150, generator=g)
        >>> bool(state.best_fitness < 1e-6)
        True
    """

    inertia: float = attrs.field(default=0.7298, validator=v_nonneg)
    cognitive: float = attrs.field(default=1.49618, validator=v_nonneg)
    social: float = attrs.field(default=1.49618, validator=v_nonneg)
    per_dimension: bool = attrs.field(default=True, validator=v_flag)
    bounds: Any = bounds_field("PSO")
    bound_handling: str = handling_field("PSO")
    maximize: bool = maximize_field()

    State = PSOState
    kind = "population"

    def _check_population(self, n: int) -> None:
        at_least(n, 2, "PSO.init")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        where = "PSO.init"
        pop = own_population(x, where)
        check_bounds_species(self.bounds, pop[0], where)
        pop = enforce_bounds(pop, self.bounds, self.bound_handling, donate=True)  # the first positions too
        device = pop.tensors[0].device
        sp = pop.species
        zeros = build(sp, assemble(sp, pop.tensors, [torch.zeros_like(t) for t in operational(pop)], None))
        personal = build(sp, assemble(sp, pop.tensors, [t.clone() for t in operational(pop)], None))
        return {
            "population": pop,
            "velocity": zeros,
            "personal_best": personal,
            "personal_score": torch.full((coll.n,), -math.inf, dtype=torch.float64, device=device),
        }

    def _ask(self, state: PSOState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        return state.population, {}

    def _tell(self, state: PSOState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        pop = state.population
        sp = pop.species
        ws = workspace(donate)  # inside run: the differences and the noise reuse the loop's buffers
        xs, vs, ps = operational(pop), operational(state.velocity), operational(state.personal_best)
        improved = score >= state.personal_score
        personal_score = torch.where(improved, score, state.personal_score)
        i = int(torch.argmax(personal_score))
        # the swarm's best personal best after this generation's replacement: a copy, taken first
        g = coll.member(pop if bool(improved[i]) else state.personal_best, i)
        gs = operational(g)
        mine = coll.block(improved)
        w, c1, c2 = self.inertia, self.cognitive, self.social
        diffs = operational(scratch_like(ws, "pso.diff", pop)) if ws is not None else [torch.empty_like(x) for x in xs]
        if donate:  # the loop owns these buffers: the new values are written over the old
            new_p, new_v, new_x = ps, vs, xs
        else:
            new_p = [t.clone(memory_format=torch.contiguous_format) for t in ps]
            new_v, new_x = ([torch.empty_like(t, memory_format=torch.contiguous_format) for t in ts] for ts in (vs, xs))
        # p <- x where improved: the improved rows only (exact copies), before the move reads p
        for k, x in enumerate(xs):
            copy_rows_(new_p[k], x, mine, diffs[k])
        clip = self.bounds is not None and self.bound_handling == "clip"
        limits = [clip_limits(self.bounds, j, x) if clip else None for j, x in zip(sp.layout().op, xs)]
        if self.per_dimension:
            seeds = (draw_seed(generator), draw_seed(generator))

            def draw(k: int) -> list[torch.Tensor]:  # r_k, in the loop's noise buffer
                z = coll.noise(g, seeds[k], uniform=True, out=ws.get("pso.noise") if ws is not None else None)
                if ws is not None:
                    ws["pso.noise"] = z
                return operational(z)

            r1 = draw(0)
        else:
            n, device = coll.n, xs[0].device
            gdev = generator.device if generator is not None else device
            r = coll.block(torch.rand(n, 2, generator=generator, dtype=torch.float64, device=gdev).to(device))
            a = [member_view(c1 * r[:, 0], x) for x in xs]
            b = [member_view(c2 * r[:, 1], x) for x in xs]
        # tensor by tensor, in cache blocks of rows (``row_blocks``: the same bits as whole passes):
        #   v <- w v + c1 r1 (p - x);  v <- v + c2 r2 (g - x);  x <- x + v (clipped)
        # the differences first: a member at its bests is not moved by them (and no cancellation)
        for k, x in enumerate(xs):
            for rows in row_blocks(x):
                x_b, d_b, p_b, v_b = x[rows], diffs[k][rows], new_p[k][rows], new_v[k][rows]
                torch.sub(p_b, x_b, out=d_b)
                torch.mul(vs[k][rows], w, out=v_b)
                if self.per_dimension:
                    v_b.addcmul_(r1[k][rows].mul_(c1), d_b)  # c1 r1 (p - x)
                    continue  # r2 is drawn into the same buffer once every r1 is used
                v_b.addcmul_(a[k][rows], d_b)
                _social(v_b, b[k][rows], gs[k], x_b, d_b, new_x[k][rows], limits[k])
        if self.per_dimension:
            del r1
            r2 = draw(1)
            for k, x in enumerate(xs):
                for rows in row_blocks(x):
                    _social(new_v[k][rows], r2[k][rows].mul_(c2), gs[k], x[rows], diffs[k][rows], new_x[k][rows],
                            limits[k])
        moved = build(sp, assemble(sp, pop.tensors, new_x, None))
        if self.bounds is not None and not clip:
            moved = enforce_bounds(moved, self.bounds, self.bound_handling, donate=True)
        return {
            "population": moved,
            "velocity": build(sp, assemble(sp, state.velocity.tensors, new_v, None)),
            "personal_best": build(sp, assemble(sp, state.personal_best.tensors, new_p, None)),
            "personal_score": personal_score,
        }

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(bounds=(-2.0, 2.0)), population=8, exact=True)


def _social(v: torch.Tensor, coef: torch.Tensor, g: torch.Tensor, x: torch.Tensor, diff: torch.Tensor,
            out: torch.Tensor, limits: Any) -> None:
    """One block: ``v += coef (g - x)``, then ``out = x + v`` clipped to ``limits`` (or not)."""
    v.addcmul_(coef, torch.sub(g, x, out=diff))  # c2 r2 (g - x)
    torch.add(x, v, out=out)
    if limits is not None:
        clip(out, limits, out=out)  # enforce_bounds' clip, block by block
