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

from .._checks import check_bool, check_generator, check_int, check_real
from .._errors import describe
from .._fitness import fitness_order, fitness_vector, scores
from .._particle import Particle, assemble, build, require_population


def require_single(p: Any, where: str) -> Particle:
    if not isinstance(p, Particle):
        raise TypeError(f"{where}: expected a single Particle, got {describe(p)}")
    if p.population_size is not None:
        raise TypeError(f"{where}: expected a single particle, got a population of {len(p)}")
    return p












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
    for i in sp.layout().op:
        t = leaves[i]
        results.append(fn(i, t) if t.is_floating_point() else t.clone())
    return build(sp, assemble(sp, leaves, results, population))


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
