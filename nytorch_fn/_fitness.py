"""Fitness: the one policy every selection, algorithm and collective follows.

A fitness is a ``[N]`` real tensor, one value per member; **higher is
better** unless the caller says ``maximize=False``. NaN counts as the worst
possible value (a diverged member is never selected as best, never chosen as
a parent); a fitness that is NaN everywhere is a ``ValueError``.

Multi-objective fitness is ``[N, M]``, one column per objective, each with
its own direction (``maximize`` a bool or a tuple of ``M`` bools).

**Shaping** (what an algorithm does to the fitness before using it) is one
composable piece: a shaping is any callable ``shape(score) -> [N] float64``
taking the *score* (float64, higher is better, NaN already ``-inf``; see
``scores``). ``identity``, ``centered_ranks``, ``z_score``, ``normalized``
and ``nes_utilities`` are shapings; ``compose(f, g, ...)`` applies them left
to right.

This module sits below the populations, the algorithms and the distributed
layer, which all import it (and nothing here imports them).
"""

from __future__ import annotations

import math
from typing import Any, Callable

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
    return torch.nan_to_num(f, nan=worst, posinf=float("inf"), neginf=float("-inf"))  # only NaN replaced


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

    Raises:
        TypeError: ``fitness`` is not a ``[N]`` real tensor.
        ValueError: every value is NaN.

    Examples:
        >>> centered_ranks(torch.tensor([3.0, 1.0, 2.0]))
        tensor([ 0.5000, -0.5000,  0.0000], dtype=torch.float64)
    """
    if not isinstance(fitness, torch.Tensor) or fitness.dim() != 1:
        raise TypeError(f"centered_ranks: fitness expects a [N] tensor, got {describe(fitness)}")
    n = fitness.shape[0]
    _, score = scores(fitness, n, "centered_ranks", maximize=maximize)
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=score.device)
    order = torch.argsort(score, stable=True)
    table = _rank_table(n, score.device)  # table[r] = r / (n - 1) - 0.5, elementwise: the same bits
    return torch.empty_like(table).index_put_((order,), table)


_RANK_TABLES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _rank_table(n: int, device: torch.device) -> torch.Tensor:
    """``arange(n) / (n - 1) - 0.5`` in float64 (the centred rank of each position), made once per
    ``(n, device)`` and never handed out (callers scatter from it into a fresh tensor)."""
    key = (n, device)
    table = _RANK_TABLES.get(key)
    if table is None:
        if len(_RANK_TABLES) >= 64:  # a bound on what the cache holds (sizes that changed over a run)
            _RANK_TABLES.clear()
        table = torch.arange(n, dtype=torch.float64, device=device) / (n - 1) - 0.5
        _RANK_TABLES[key] = table
    return table


# ---------------------------------------------------------------------------
# multi-objective scores
# ---------------------------------------------------------------------------


def directions(maximize: Any, m: int, where: str) -> tuple[bool, ...]:
    """``maximize`` as a tuple of ``m`` bools (a bool applies to every objective)."""
    if isinstance(maximize, bool):
        return (maximize,) * m
    if isinstance(maximize, tuple) and len(maximize) == m and all(isinstance(v, bool) for v in maximize):
        return maximize
    raise TypeError(f"{where}: maximize expects a bool or a tuple of {m} bools (one per objective), got {maximize!r}")


def objective_scores(fitness: Any, n: int, m: int, where: str, *, maximize: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fitness, score)`` for ``[N, M]`` multi-objective fitness: the checked fitness and a
    float64 ``[N, M]`` score, each column higher-is-better with NaN as ``-inf``.

    A member with NaN in any objective is the worst in that objective only; a column
    that is NaN everywhere is a ``ValueError``.
    """
    if isinstance(fitness, (list, tuple)):
        fitness = torch.as_tensor(fitness, dtype=torch.float64)
    if not isinstance(fitness, torch.Tensor):
        raise TypeError(f"{where}: fitness expects a tensor of shape ({n}, {m}), got {describe(fitness)}")
    if fitness.dtype == torch.bool or fitness.is_complex():
        raise TypeError(f"{where}: fitness expects a real dtype, got {fitness.dtype}")
    if fitness.shape != (n, m):
        raise PopulationSizeError(
            f"{where}: fitness expects shape ({n}, {m}), {m} objectives for each member of a population "
            f"of {n}, got shape {tuple(fitness.shape)}"
        )
    signs = directions(maximize, m, where)
    f = fitness.detach()
    s = f.double()
    dead = torch.isnan(s)
    if bool(dead.all(0).any()):
        col = int(dead.all(0).nonzero()[0])
        raise ValueError(f"{where}: objective {col} is NaN for every member; expected at least one number")
    sign = torch.tensor([1.0 if up else -1.0 for up in signs], dtype=torch.float64, device=s.device)
    score = torch.where(dead, torch.full_like(s, float("-inf")), s * sign)
    return f, score


# ---------------------------------------------------------------------------
# shaping: callables score [N] -> [N] float64
# ---------------------------------------------------------------------------


def _score_vector(score: Any, where: str) -> torch.Tensor:
    if not isinstance(score, torch.Tensor) or score.dim() != 1 or score.dtype == torch.bool or score.is_complex():
        raise TypeError(f"{where}: expects a [N] real tensor of scores, got {describe(score)}")
    if score.shape[0] == 0:
        raise ValueError(f"{where}: expects at least one score, got an empty tensor")
    return score.detach().double()


def _finite_clipped(s: torch.Tensor) -> torch.Tensor:
    """NaN as the worst; infinities clipped to the finite range of the others (all zeros if none is finite)."""
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    finite = torch.isfinite(s)
    if not bool(finite.any()):
        # only infinities: +inf members the best (1), -inf the worst (0)
        return (s > 0).double()
    lo, hi = s[finite].min(), s[finite].max()
    return torch.where(s == float("inf"), hi, torch.where(s == float("-inf"), lo, s))


def identity(score: Any) -> torch.Tensor:
    """The score itself as float64 (``[N]``; NaN stays the worst as ``-inf``).

    Args:
        score: ``[N]`` real scores (higher is better).

    Returns:
        ``[N]`` float64.

    Raises:
        TypeError: not a ``[N]`` real tensor.
        ValueError: an empty tensor.

    Examples:
        >>> identity(torch.tensor([1.0, 3.0]))
        tensor([1., 3.], dtype=torch.float64)
    """
    s = _score_vector(score, "identity")
    return torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)


def z_score(score: Any) -> torch.Tensor:
    """``(s - mean(s)) / std(s)`` over the population (``[N]`` float64, zeros when all are equal).

    Non-finite scores are first clipped to the finite range of the others
    (a NaN/-inf member gets the lowest finite score, +inf the highest), so
    a diverged member is the worst without poisoning the statistics. The
    standard deviation is the population one (``unbiased=False``).

    Args:
        score: ``[N]`` real scores (higher is better).

    Returns:
        ``[N]`` float64 with mean 0 and standard deviation 1 (zeros when all are equal).

    Raises:
        TypeError: not a ``[N]`` real tensor.
        ValueError: an empty tensor.

    Examples:
        >>> z_score(torch.tensor([1.0, 2.0, 3.0]))
        tensor([-1.2247,  0.0000,  1.2247], dtype=torch.float64)
    """
    s = _finite_clipped(_score_vector(score, "z_score"))
    centred = s - s.mean()
    std = centred.pow(2).mean().sqrt()
    if float(std) == 0.0:
        return torch.zeros_like(s)
    return centred / std


def normalized(score: Any) -> torch.Tensor:
    """Scores mapped linearly onto ``[0, 1]``: the worst 0, the best 1 (``[N]`` float64; all 0.5 when equal).

    Non-finite scores are clipped as in ``z_score``.

    Args:
        score: ``[N]`` real scores (higher is better).

    Returns:
        ``[N]`` float64 in [0, 1].

    Raises:
        TypeError: not a ``[N]`` real tensor.
        ValueError: an empty tensor.

    Examples:
        >>> normalized(torch.tensor([1.0, 2.0, 5.0]))
        tensor([0.0000, 0.2500, 1.0000], dtype=torch.float64)
    """
    s = _finite_clipped(_score_vector(score, "normalized"))
    lo, hi = s.min(), s.max()
    if float(hi - lo) == 0.0:
        return torch.full_like(s, 0.5)
    return (s - lo) / (hi - lo)


def nes_utilities(score: torch.Tensor) -> torch.Tensor:
    """Fitness shaping of the NES paper: rank-based utilities that sum to zero.

    The member of rank ``k`` (``k = 1`` the best, ties broken by position)
    gets ``max(0, ln(N/2 + 1) - ln k) / sum_j max(0, ln(N/2 + 1) - ln j) - 1/N``:
    the better half shares a positive weight that decays with the rank, the
    others get ``-1/N``. Invariant to any monotone change of the fitness.

    Args:
        score: ``[N]`` real, higher is better (NaN counts as the worst).

    Returns:
        ``[N]`` float64 utilities (zeros for ``N == 1``).

    Raises:
        TypeError: ``score`` is not a ``[N]`` tensor.

    Examples:
        >>> nes_utilities(torch.tensor([1.0, 3.0, 2.0, 0.0]))   # the best (3.0) gets the most
        tensor([-0.2500,  0.4804,  0.0196, -0.2500], dtype=torch.float64)
    """
    if not isinstance(score, torch.Tensor) or score.dim() != 1:
        raise TypeError(f"nes_utilities: expected a [N] tensor, got {describe(score)}")
    n = score.shape[0]
    s = score.to(torch.float64)
    s = torch.where(torch.isnan(s), torch.full_like(s, -math.inf), s)
    ranks = torch.empty(n, dtype=torch.float64, device=s.device)
    order = torch.argsort(-s, stable=True)  # best first
    ranks[order] = torch.arange(1, n + 1, dtype=torch.float64, device=s.device)
    raw = (math.log(n / 2 + 1) - torch.log(ranks)).clamp_min_(0.0)
    return raw / raw.sum() - 1.0 / n


class _Composed:
    """Shapings applied left to right (a picklable, printable callable)."""

    __slots__ = ("fns",)

    def __init__(self, fns: tuple) -> None:
        self.fns = fns

    def __call__(self, score: torch.Tensor) -> torch.Tensor:
        out = score
        for f in self.fns:
            out = f(out)
            if not isinstance(out, torch.Tensor) or out.shape != score.shape:
                raise ValueError(
                    f"compose: {getattr(f, '__name__', f)!r} expected to return a tensor of shape "
                    f"{tuple(score.shape)}, got {describe(out)}"
                )
        return out.double()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Composed) and self.fns == other.fns

    def __hash__(self) -> int:
        return hash(self.fns)

    def __repr__(self) -> str:
        return "compose(" + ", ".join(getattr(f, "__name__", repr(f)) for f in self.fns) + ")"


def compose(*shapings: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """One shaping applying ``shapings`` left to right (as ``optax.chain``).

    Args:
        *shapings: callables ``score [N] -> [N]`` (``centered_ranks``,
            ``z_score``, ``normalized``, ``identity`` or your own).

    Returns:
        A picklable shaping that applies them in order and returns float64.

    Raises:
        ValueError: no shaping given.
        TypeError: one is not callable.

    Examples:
        >>> shape = compose(centered_ranks, lambda s: 2 * s)     # ranks onto [-1, 1]
        >>> shape(torch.tensor([3.0, 1.0, 2.0]))
        tensor([ 1., -1.,  0.], dtype=torch.float64)
    """
    if not shapings:
        raise ValueError("compose: expected at least one shaping, got none")
    for f in shapings:
        if not callable(f):
            raise TypeError(f"compose: expected callables score -> [N] tensor, got {describe(f)}")
    return _Composed(tuple(shapings))


def check_shaping(value: Any, where: str) -> Callable:
    """A shaping (any callable), else a TypeError naming the built-in ones."""
    if not callable(value):
        raise TypeError(
            f"{where}: shaping expects a callable score [N] -> [N] (e.g. centered_ranks, z_score, "
            f"normalized, identity, compose(...)), got {describe(value)}"
        )
    return value


def shape_scores(shaping: Callable, score: torch.Tensor, where: str) -> torch.Tensor:
    """``shaping(score)`` checked: a ``[N]`` finite float64 tensor."""
    out = shaping(score)
    if not isinstance(out, torch.Tensor) or out.shape != score.shape:
        raise ValueError(f"{where}: shaping expected to return a tensor of shape {tuple(score.shape)}, got {describe(out)}")
    out = out.to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{where}: shaping returned non-finite values {out}; expected finite weights")
    return out
