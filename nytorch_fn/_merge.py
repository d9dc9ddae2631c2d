"""Model merging over particles of one species: soup, SLERP, task arithmetic, TIES, DARE.

Every operator returns a new single particle of the inputs' species and
computes tensor by tensor over the **operational floating-point**
parameters; every other parameter (non-operational, or integer/bool) is
taken from the first input (``base`` for the task-vector operators):
a copy unless its config says ``clone=False``. Inputs are never modified.
Particles of an older version of the species are migrated to the newest;
particles of different species raise ``SpeciesMismatchError``.

The task-vector operators (``task_arithmetic``, ``ties``, ``dare``) take a
``base`` particle and fine-tuned particles ``finetuned`` given as a sequence
of single particles or as one population; ``tau_i = finetuned_i - base``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from ._errors import PopulationSizeError, describe
from ._checks import check_generator
from ._particle import Particle, assemble, build, migrate
from ._population import concat


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _gather(particles: Any, where: str, lead: Particle | None = None) -> tuple[Particle, Particle]:
    """``[lead] + particles`` as one population (species aligned, migrated to the newest),
    and the first of them as a single particle (the source of non-merged parameters)."""
    if isinstance(particles, Particle):
        if particles.population_size is None:
            raise TypeError(f"{where}: expected a sequence of particles or a population, got a single particle")
        items = [particles]
    elif isinstance(particles, (list, tuple)):
        items = list(particles)
        for i, p in enumerate(items):
            if not isinstance(p, Particle):
                raise TypeError(f"{where}: element {i} expected a Particle, got {describe(p)}")
            if p.population_size is not None:
                raise TypeError(f"{where}: element {i} expected a single particle, got a population of {len(p)}")
    else:
        raise TypeError(f"{where}: expected a sequence of particles or a population, got {describe(particles)}")
    if lead is not None:
        if not isinstance(lead, Particle) or lead.population_size is not None:
            raise TypeError(f"{where}: base expects a single Particle, got {describe(lead)}")
        items = [lead, *items]
    if not items or (lead is not None and len(items) == 1):
        raise ValueError(f"{where}: expected at least one particle to merge, got none")
    stacked = concat(items)
    first = items[0] if items[0].population_size is None else items[0][0]
    if first.species is not stacked.species:
        first = migrate(first, stacked.species)
    return stacked, first


def _weights(weights: Any, k: int, where: str, name: str = "weights") -> torch.Tensor:
    """A ``[k]`` float64 vector from a number (the same for all), a sequence or a tensor."""
    if isinstance(weights, numbers.Real) and not isinstance(weights, bool):
        w = torch.full((k,), float(weights), dtype=torch.float64)
    elif isinstance(weights, (list, tuple)) or isinstance(weights, torch.Tensor):
        try:
            w = torch.as_tensor(weights).detach().to("cpu", torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where}: {name} expects numbers, got {describe(weights)}") from None
        if w.shape != (k,):
            raise PopulationSizeError(f"{where}: {name} expects {k} values (one per model), got shape {tuple(w.shape)}")
    else:
        raise TypeError(f"{where}: {name} expects a number, a sequence of {k} numbers or a [{k}] tensor, got {describe(weights)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{where}: {name} expects finite values, got {w.tolist()}")
    return w


def _fraction(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} expects a number in (0, 1], got {describe(value)}")
    v = float(value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{where}: {name} expects a value in (0, 1], got {value!r}")
    return v


def _merge(stacked: Particle, first: Particle, fn: Callable[[torch.Tensor], torch.Tensor]) -> Particle:
    """``fn([K, ...] tensor) -> [...]`` for operational float parameters; every other
    parameter from ``first`` (a copy, or the same tensor for ``clone=False``)."""
    sp = stacked.species
    leaves, lead = stacked.tensors, first.tensors
    results = []
    for i in sp.layout().op:
        t = leaves[i]
        results.append(fn(t).to(t.dtype) if t.is_floating_point() else lead[i].clone())
    return build(sp, assemble(sp, lead, results, None))


def _view(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return w.to(device=t.device, dtype=t.dtype).view(w.shape[0], *([1] * (t.dim() - 1)))


# ---------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------


def weighted_average(particles: Any, weights: Any = None) -> Particle:
    """A model soup: ``sum_i w_i p_i / sum_i w_i`` (uniform weights by default).

    Args:
        particles: a sequence of single particles of one species, or a population.
        weights: None (uniform), or one non-negative number per particle
            (a sequence or a ``[K]`` tensor) with a positive sum.

    Raises:
        SpeciesMismatchError: the particles are of different species.
        PopulationSizeError: ``weights`` has the wrong length.
        ValueError: a weight is negative, or they sum to zero.

    Example:
        >>> soup = weighted_average([ft_a, ft_b, ft_c], weights=[0.5, 0.25, 0.25])
    """
    stacked, first = _gather(particles, "weighted_average")
    k = len(stacked)
    w = _weights(1.0 if weights is None else weights, k, "weighted_average")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weighted_average: weights expects non-negative values with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    return _merge(stacked, first, lambda t: (t * _view(w, t)).sum(0))


def slerp(a: Particle, b: Particle, t: float, *, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Particle:
    """Spherical linear interpolation, tensor by tensor (as mergekit's ``slerp``).

    For each tensor, with ``theta`` the angle between ``a`` and ``b`` seen as
    flat vectors: ``sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b``.
    When the directions are nearly parallel (``|cos theta| > dot_threshold``)
    or a tensor has norm below ``eps``, plain ``(1-t) a + t b`` is used.
    ``t = 0`` gives ``a``, ``t = 1`` gives ``b``.

    Args:
        a, b: single particles of one species.
        t: interpolation factor in [0, 1].
        dot_threshold: in (0, 1].
        eps: > 0.

    Example:
        >>> mid = slerp(p, q, 0.5)
    """
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or math.isnan(t):
        raise TypeError(f"slerp: t expects a number in [0, 1], got {describe(t)}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"slerp: t expects a value in [0, 1], got {t!r}")
    threshold = _fraction(dot_threshold, "slerp", "dot_threshold")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"slerp: eps expects a number > 0, got {eps!r}")
    for name, p in (("a", a), ("b", b)):
        if not isinstance(p, Particle) or p.population_size is not None:
            raise TypeError(f"slerp: {name} expects a single Particle, got {describe(p)}")
    stacked, first = _gather([a, b], "slerp")
    t = float(t)

    def fn(x: torch.Tensor) -> torch.Tensor:
        v0, v1 = x[0], x[1]
        w = v0.double().flatten(), v1.double().flatten()
        n0, n1 = w[0].norm(), w[1].norm()
        if float(n0) < eps or float(n1) < eps:
            return torch.lerp(v0, v1, t)
        dot = float(torch.dot(w[0] / n0, w[1] / n1).clamp(-1.0, 1.0))
        if abs(dot) > threshold:
            return torch.lerp(v0, v1, t)
        theta = math.acos(dot)
        s = math.sin(theta)
        return (math.sin((1 - t) * theta) / s) * v0 + (math.sin(t * theta) / s) * v1

    return _merge(stacked, first, fn)


def task_arithmetic(base: Particle, finetuned: Any, weights: Any = 1.0) -> Particle:
    """``base + sum_i lambda_i (finetuned_i - base)`` (Ilharco et al., task vectors).

    Args:
        base: the pre-trained particle (single).
        finetuned: ``K`` fine-tuned particles (a sequence or a population).
        weights: ``lambda``: one number for all, or ``K`` numbers (may be negative:
            negation forgets a task).

    Example:
        >>> merged = task_arithmetic(base, [ft_math, ft_code], weights=[0.7, 0.5])
    """
    stacked, first = _gather(finetuned, "task_arithmetic", lead=base)
    k = len(stacked) - 1
    w = _weights(weights, k, "task_arithmetic")

    def fn(x: torch.Tensor) -> torch.Tensor:
        b = x[0]
        return b + ((x[1:] - b) * _view(w, x[1:])).sum(0)

    return _merge(stacked, first, fn)


def _trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` largest-magnitude entries of each task vector (row)."""
    k = tau.shape[0]
    flat = tau.reshape(k, -1)
    keep = int(density * flat.shape[1])
    if keep >= flat.shape[1]:
        return tau
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        idx = flat.abs().topk(keep, dim=1).indices
        mask.scatter_(1, idx, True)
    return (flat * mask).reshape(tau.shape)


def _elect_and_merge(tau: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """TIES' sign election (sign of the weighted sum) and disjoint weighted mean."""
    weighted = tau * _view(w, tau)
    sign = torch.sign(weighted.sum(0))
    agree = (torch.sign(weighted) == sign) & (weighted != 0)
    num = (weighted * agree).sum(0)
    den = (_view(w, tau) * agree).sum(0)
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def ties(base: Particle, finetuned: Any, weights: Any = 1.0, *, density: float = 0.2, scale: float = 1.0) -> Particle:
    """TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint merge.

    For each tensor, with task vectors ``tau_i = finetuned_i - base``:

    1. **trim**: keep in each ``tau_i`` its ``int(density * numel)``
       largest-magnitude entries, zero the rest;
    2. **elect**: per entry, the sign ``s`` of ``sum_i w_i tau_i``;
    3. **disjoint merge**: per entry, ``sum_i w_i tau_i / sum_i w_i`` over
       the tasks whose (trimmed) ``w_i tau_i`` is non-zero with sign ``s``
       (0 where none);

    and the result is ``base + scale * merged``.

    Args:
        base: single particle.
        finetuned: ``K`` particles (a sequence or a population).
        weights: ``w_i``, one positive number for all or ``K`` positive numbers.
        density: in (0, 1]; 1 keeps everything.
        scale: ``lambda`` in the paper.

    Example:
        >>> merged = ties(base, [ft_a, ft_b, ft_c], density=0.2)
    """
    stacked, first = _gather(finetuned, "ties", lead=base)
    k = len(stacked) - 1
    w = _weights(weights, k, "ties")
    if bool((w <= 0).any()):
        raise ValueError(f"ties: weights expects positive values, got {w.tolist()}")
    d = _fraction(density, "ties", "density")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise TypeError(f"ties: scale expects a finite number, got {describe(scale)}")

    def fn(x: torch.Tensor) -> torch.Tensor:
        b = x[0]
        tau = _trim(x[1:] - b, d)
        return b + scale * _elect_and_merge(tau, w)

    return _merge(stacked, first, fn)


def dare(
    base: Particle,
    finetuned: Any,
    weights: Any = 1.0,
    *,
    density: float = 0.5,
    rescale: bool = True,
    generator: torch.Generator | None = None,
) -> Particle:
    """DARE (Yu et al. 2024): drop and rescale task-vector entries, then task arithmetic.

    Each entry of each ``tau_i = finetuned_i - base`` is kept with
    probability ``density`` (else zeroed) and, with ``rescale``, divided by
    ``density`` so its expectation is unchanged; the result is
    ``base + sum_i w_i tau_i'``. The masks are ``torch.rand(K, *shape,
    generator=generator) < density``, one draw per operational float
    parameter in ``species.names`` order (on the generator's device).

    Args:
        base: single particle.
        finetuned: ``K`` particles (a sequence or a population).
        weights: ``w_i`` (one number for all, or ``K``).
        density: keep probability in (0, 1]; 1 is task arithmetic.
        rescale: divide kept entries by ``density``.
        generator: a ``torch.Generator`` (torch's global RNG when None).

    Example:
        >>> merged = dare(base, [ft_a, ft_b], density=0.3, generator=torch.Generator().manual_seed(0))
    """
    check_generator(generator, "dare")
    stacked, first = _gather(finetuned, "dare", lead=base)
    k = len(stacked) - 1
    w = _weights(weights, k, "dare")
    d = _fraction(density, "dare", "density")
    if not isinstance(rescale, bool):
        raise TypeError(f"dare: rescale expects a bool, got {describe(rescale)}")

    def fn(x: torch.Tensor) -> torch.Tensor:
        b = x[0]
        tau = x[1:] - b
        gdev = generator.device if generator is not None else tau.device
        keep = (torch.rand(tau.shape, generator=generator, device=gdev) < d).to(tau.device)
        tau = tau * keep
        if rescale:
            tau = tau / d
        return b + (tau * _view(w, tau)).sum(0)

    return _merge(stacked, first, fn)
