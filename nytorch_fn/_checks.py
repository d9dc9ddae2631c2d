"""Argument checks shared by the core, the algorithms, merging and the distributed layer.

This module sits below everything else (it imports no other module of the
package); checks that need ``Particle`` live in ``_particle``.

Each check raises the exception a caller would reach for first, with a
message saying what was expected and what came, and returns the checked
value. They never modify their arguments.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from ._errors import describe


def check_generator(generator: Any, where: str) -> torch.Generator | None:
    """``generator`` when it is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator expects a torch.Generator or None, got {describe(generator)}")
    return generator


def require_floating(species: Any, where: str, why: str = "cannot draw random values for") -> None:
    """Refuse operational parameters that are not floating point, naming the first one."""
    unfit = species.layout().unfit
    if unfit is not None:
        name, dtype = unfit
        raise TypeError(
            f"{where}: {why} the {dtype} parameter {name!r}; mark it non-operational "
            f"(species.with_config({name!r}, operational=False))"
        )


def check_size(n: Any, where: str) -> int:
    """A population size: an int >= 1."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{where}: expected a population size >= 1, got {n!r}")
    return int(n)


def check_real(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A Python real number in the given interval, else TypeError/ValueError saying expected vs got."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {describe(value)}")
    v = float(value)
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if math.isnan(v) or not (ok_low and ok_high):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{name}: expected a value in {lb}{low}, {high}{hb}, got {value!r}")
    return v


def check_int(value: Any, name: str, *, low: int = 1, high: int | None = None, what: str = "") -> int:
    """A Python int in ``[low, high]``, else TypeError/ValueError saying expected vs got."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f"{low} <= {name.split(': ')[-1]} <= {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected {rng}{what}, got {v}")
    return v


def check_bool(value: Any, name: str) -> bool:
    """A bool, else TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {describe(value)}")
    return value
