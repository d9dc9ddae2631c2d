"""Particle arithmetic of the legacy layer, on the tensors of one particle.

nytorch 1.1.0 computes every operator parameter by parameter with the plain
torch expression (``p * 0.5``, ``lp + rp``, ``2 ** p``...) under
``torch.no_grad()``; non-operational parameters are copied (``clone=True``)
or shared (``clone=False``) from the left operand. This module does the same
and nothing else, so every result has the legacy bits: no operator is fused
with another, nothing is computed later than the operator that asks for it.

On CPU the per-parameter loop runs as one ``torch._foreach_*`` call, whose
CPU implementation is that very loop of plain operations; elsewhere (CUDA...)
and for the reflected operators it is a Python loop of the plain
expressions, so the bits are torch's own on every device. Results keep each
parameter's dtype: an integer parameter scaled by ``0.5`` is cast back, as
the functional core does.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any, Callable, Sequence

import torch

from ._bridge import pids_of

# operator kinds
ADD, SUB, RSUB, MUL, DIV, RDIV, POW, RPOW, NEG = range(9)

SYMBOLS = {ADD: "+", SUB: "-", RSUB: "-", MUL: "*", DIV: "/", RDIV: "/", POW: "**", RPOW: "**", NEG: "-"}

# the plain expression of each operator, ``x`` a parameter, ``y`` the other operand
_PLAIN: dict[int, Callable[[Any, Any], Any]] = {
    ADD: operator.add,
    SUB: operator.sub,
    RSUB: lambda x, y: y - x,
    MUL: operator.mul,
    DIV: operator.truediv,
    RDIV: lambda x, y: y / x,
    POW: operator.pow,
    RPOW: lambda x, y: y**x,
}

# its ``foreach`` form (on CPU: the loop of ``_PLAIN`` calls), for a list or a Python number
_FOREACH: dict[int, Callable[..., Any]] = {
    ADD: torch._foreach_add,
    SUB: torch._foreach_sub,
    MUL: torch._foreach_mul,
    DIV: torch._foreach_div,
    POW: torch._foreach_pow,
}

_is_grad_enabled = torch.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled


class Plan:
    """Where the operational parameters of a species sit (computed once per species).

    Attributes:
        species: the ``nytorch_fn.Species`` it was made from (immutable).
        ids: its parameter ids, in ``species.names`` order.
        op: positions (in ``species.names`` order) of operational parameters.
        nonop: ``(position, clone)`` of the others.
        all_op: every parameter is operational.
        floating: every operational parameter is floating point (so an
            operator with a number or a particle of the species keeps the dtypes).
    """

    __slots__ = ("species", "ids", "op", "nonop", "all_op", "floating", "__weakref__")

    def __init__(self, species: Any) -> None:
        config, dtypes, names = species.config, species.dtypes, species.names
        self.species = species
        self.ids = pids_of(species)
        self.op = tuple(i for i, n in enumerate(names) if config[n].operational)
        self.nonop = tuple((i, bool(config[n].clone)) for i, n in enumerate(names) if not config[n].operational)
        self.all_op = not self.nonop
        self.floating = all(dtypes[names[i]].is_floating_point for i in self.op)


_plans: "weakref.WeakKeyDictionary[Any, Plan]" = weakref.WeakKeyDictionary()


def plan_of(species: Any) -> Plan:
    """The plan of ``species`` (cached while the species lives)."""
    found = _plans.get(species)
    if found is None:
        found = _plans[species] = Plan(species)
    return found


def _on_cpu(xs: Sequence[torch.Tensor]) -> bool:
    for x in xs:
        if not x.is_cpu:
            return False
    return True


def _compute(kind: int, xs: list, y: Any, floating: bool) -> list:
    """``x OP y`` for every ``x`` of ``xs`` (``y``: a number, a tensor, a list matching ``xs``, or None for NEG)."""
    listed = type(y) is list
    cpu = _on_cpu(xs) and (not listed or _on_cpu(y))
    if kind == NEG:
        return list(torch._foreach_neg(xs)) if cpu else [-x for x in xs]
    kind_y = type(y)
    foreach = _FOREACH.get(kind) if cpu and (listed or kind_y is float or kind_y is int) else None
    if foreach is not None:
        results = list(foreach(xs, y))
    else:
        f = _PLAIN[kind]
        results = [f(x, t) for x, t in zip(xs, y)] if listed else [f(x, y) for x in xs]
    if not floating or not (kind_y is float or kind_y is int):
        for i, (r, x) in enumerate(zip(results, xs)):
            if r.dtype != x.dtype:  # integers (or a wider operand): the parameter's dtype, as the core
                results[i] = r.to(x.dtype)
    return results


def apply(plan: Plan, kind: int, mine: Sequence[torch.Tensor], theirs: Any = None) -> list:
    """The tensors of ``mine OP theirs``, in ``plan.species.names`` order, computed now without gradients.

    Args:
        plan: the plan of the species both operands are of.
        kind: ``ADD``, ``SUB``... (``RSUB``: ``theirs - mine``; ``NEG``: ``-mine``).
        mine: the left operand's tensors (for a reflected operator: the particle's).
        theirs: a number or 0-d tensor, the other particle's tensors (a list
            in the same order), or None for ``NEG``.

    Returns:
        A list: the new tensors at operational positions; at the others a
        copy of ``mine``'s tensor (``clone=True``) or that very object.
    """
    grad = _is_grad_enabled()
    if grad:
        _set_grad_enabled(False)
    try:
        if plan.all_op:
            return _compute(kind, mine if type(mine) is list else list(mine), theirs, plan.floating) if mine else []
        op = plan.op
        out = list(mine)
        if op:
            ys = [theirs[i] for i in op] if type(theirs) is list else theirs
            for i, r in zip(op, _compute(kind, [mine[i] for i in op], ys, plan.floating)):
                out[i] = r
        for i, clone in plan.nonop:
            if clone:
                out[i] = mine[i].clone()
        return out
    finally:
        if grad:
            _set_grad_enabled(True)


def apply_each(plan: Plan, mine: Sequence[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> list:
    """``fn(x)`` for every operational tensor ``x`` of ``mine`` (in order), the others as ``apply`` treats them.

    Used for ``clone`` (``x.clone()``), ``randn`` (``torch.randn_like``) and
    ``rand``: one call per parameter in id order, as the legacy library
    makes them, so random draws come in the same order from the same
    generator state.
    """
    grad = _is_grad_enabled()
    if grad:
        _set_grad_enabled(False)
    try:
        out = list(mine)
        for i in plan.op:
            out[i] = fn(mine[i])
        for i, clone in plan.nonop:
            if clone:
                out[i] = mine[i].clone()
        return out
    finally:
        if grad:
            _set_grad_enabled(True)
