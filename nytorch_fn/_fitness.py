"""Fitness: the one policy every selection, algorithm and collective follows.

A fitness is a ``[N]`` real tensor, one value per member; **higher is
better** unless the caller says ``maximize=False``. NaN counts as the worst
possible value (a diverged member is never selected as best, never chosen as
a parent); a fitness that is NaN everywhere is a ``ValueError``.

This module sits below the populations, the algorithms and the distributed
layer, which all import it (and nothing here imports them).
"""

from __future__ import annotations

from typing import Any

import torch

from ._errors import PopulationSizeError, describe


def member_vector(values: Any, n: int, what: str) -> torch.Tensor:
    """``values`` as a ``[n]`` real tensor (a list or tuple of numbers is converted), else a clear error."""
    if isinstance(values, (list, tuple)):
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{what}: expected numbers, got {describe(values)}") from None
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor of shape ({n},), got {describe(values)}")
    if values.shape != (n,):
        raise PopulationSizeError(f"{what}: expected shape ({n},) for a population of {n}, got {tuple(values.shape)}")
    if values.dtype == torch.bool or values.is_complex():
        raise TypeError(f"{what}: expected a real dtype, got {values.dtype}")
    if values.device.type == "meta":
        raise ValueError(f"{what}: expected a tensor with values, got one on the meta device")
    return values


def fitness_order(fitness: torch.Tensor, *, maximize: bool = True) -> torch.Tensor:
    """Fitness with NaN made the worst possible value (``-inf`` when maximising, ``+inf`` otherwise)."""
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize expects a bool, got {describe(maximize)}")
    f = fitness if fitness.is_floating_point() else fitness.double()
    if torch.isnan(f).all():
        raise ValueError("fitness: every value is NaN; expected at least one number")
    worst = float("-inf") if maximize else float("inf")
    return torch.where(torch.isnan(f), torch.full_like(f, worst), f)


def fitness_vector(fitness: Any, n: int, where: str) -> torch.Tensor:
    """``fitness`` as a detached ``[n]`` real tensor (a list or tuple is converted as float64)."""
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


def centered_ranks(fitness: Any, *, maximize: bool = True) -> torch.Tensor:
    """Fitness shaping: each member's rank mapped linearly onto [-0.5, 0.5], best = +0.5.

    Ranks make an ES invariant to any monotone change of the fitness and
    robust to outliers. Ties are ranked by position; NaN counts as the worst.

    Args:
        fitness: ``[N]`` real values (N >= 1).
        maximize: higher is better (default) or lower.

    Returns:
        ``[N]`` float64 (all zeros for ``N == 1``).

    Example:
        >>> centered_ranks(torch.tensor([3.0, 1.0, 2.0]))
        tensor([ 0.5000, -0.5000,  0.0000], dtype=torch.float64)
    """
    if not isinstance(fitness, torch.Tensor) or fitness.dim() != 1:
        raise TypeError(f"centered_ranks: fitness expects a [N] tensor, got {describe(fitness)}")
    n = fitness.shape[0]
    _, score = scores(fitness, n, "centered_ranks", maximize=maximize)
    order = torch.argsort(score, stable=True)
    ranks = torch.empty(n, dtype=torch.float64, device=score.device)
    ranks[order] = torch.arange(n, dtype=torch.float64, device=score.device)
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=score.device)
    return ranks / (n - 1) - 0.5
