"""What every population algorithm shares: argument checks, the fitness policy, per-tensor rebuilding.

Fitness convention (every algorithm, as ``nytorch_fn.best``): a ``[N]`` real
tensor, one value per member; **higher is better** unless the algorithm was
built with ``maximize=False``. NaN counts as the worst possible value (a
diverged member is never selected as best, never chosen as a parent); a
fitness vector that is NaN everywhere is a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from .._errors import PopulationSizeError, describe
from .._particle import Particle, _assemble, _population_size, plan
from .._population import _check_generator as check_generator
from .._population import _require_population as require_population
from .._population import fitness_order


def require_single(p: Any, where: str) -> Particle:
    if not isinstance(p, Particle):
        raise TypeError(f"{where}: expected a single Particle, got {describe(p)}")
    if _population_size(p) is not None:
        raise TypeError(f"{where}: expected a single particle, got a population of {len(p)}")
    return p


def check_real(
    value: Any, name: str, *, low: float = -math.inf, high: float = math.inf,
    low_open: bool = False, high_open: bool = False,
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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f"{low} <= {name.split(': ')[-1]} <= {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: expected {rng}{what}, got {v}")
    return v


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {describe(value)}")
    return value


def fitness_vector(fitness: Any, n: int, where: str) -> torch.Tensor:
    """``fitness`` as a ``[n]`` real tensor (a list or tuple is converted), else a clear error."""
    if isinstance(fitness, (list, tuple)):
        fitness = torch.as_tensor(fitness, dtype=torch.float64)
    if not isinstance(fitness, torch.Tensor):
        raise TypeError(f"{where}: fitness expects a tensor of shape ({n},), got {describe(fitness)}")
    if fitness.dtype == torch.bool or fitness.is_complex():
        raise TypeError(f"{where}: fitness expects a real dtype, got {fitness.dtype}")
    if fitness.shape != (n,):
        raise PopulationSizeError(
            f"{where}: fitness expects shape ({n},), one value per member of a population of {n}, "
            f"got shape {tuple(fitness.shape)}"
        )
    return fitness.detach()


def scores(fitness: Any, n: int, where: str, *, maximize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fitness, score)``: the checked fitness, and a float64 score where higher is
    always better and NaN is ``-inf`` (the worst)."""
    f = fitness_vector(fitness, n, where)
    try:
        ordered = fitness_order(f.double(), maximize=maximize)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return f, (ordered if maximize else -ordered)


def rebuild(
    pop: Particle, fn: Callable[[int, torch.Tensor], torch.Tensor], *, population: int | None = None
) -> Particle:
    """A particle like ``pop`` with ``fn(position, tensor)`` for every operational
    floating-point parameter; non-operational ones are taken from ``pop`` (a copy
    with ``clone=True``, the same tensor with ``clone=False``) and operational
    non-float ones are copied unchanged."""
    sp = pop.species
    leaves = pop.tensors
    results = []
    for i in plan(sp).op:
        t = leaves[i]
        results.append(fn(i, t) if t.is_floating_point() else t.clone())
    return Particle._make(sp, _assemble(sp, leaves, results, population))


def member_view(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A ``[N]`` vector shaped to broadcast against a ``[N, ...]`` tensor, in its dtype."""
    return v.to(device=t.device, dtype=t.dtype).view(v.shape[0], *([1] * (t.dim() - 1)))


def update_best(
    best: Particle,
    best_fitness: torch.Tensor,
    pop: Particle | Callable[[int], Particle],
    f: torch.Tensor,
    score: torch.Tensor,
    *,
    maximize: bool,
) -> tuple[Particle, torch.Tensor]:
    """The best-so-far member and its fitness after one generation (a copy, not a view).

    ``pop`` is the evaluated population, or a function giving member ``i`` as
    a single particle (a sharded population fetches it from its owner); it is
    called only when the best improves.
    """
    i = int(torch.argmax(score))
    current = float(score[i])
    previous = float(best_fitness) if maximize else -float(best_fitness)
    if math.isnan(previous) or current > previous:
        new = pop[i].clone() if isinstance(pop, Particle) else pop(i)
        return new, f[i].to(torch.float64).clone()
    return best, best_fitness


def worst_fitness(maximize: bool, device: Any = None) -> torch.Tensor:
    return torch.tensor(-math.inf if maximize else math.inf, dtype=torch.float64, device=device)


def _gen_device(generator: torch.Generator | None, device: Any) -> Any:
    return generator.device if generator is not None else device


def draw(kind: str, shape: Any, generator: torch.Generator | None, *, device: Any, dtype: Any = None, high: int = 0) -> torch.Tensor:
    """``torch.rand``/``randn``/``randint``/``randperm`` on the generator's device (so a CPU
    generator drives a CUDA population reproducibly), then moved to ``device``."""
    gdev = _gen_device(generator, device)
    if kind == "rand":
        out = torch.rand(shape, generator=generator, dtype=dtype, device=gdev)
    elif kind == "randn":
        out = torch.randn(shape, generator=generator, dtype=dtype, device=gdev)
    elif kind == "randint":
        out = torch.randint(0, high, shape, generator=generator, device=gdev)
    elif kind == "randperm":
        out = torch.randperm(high, generator=generator, device=gdev)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return out.to(device)
