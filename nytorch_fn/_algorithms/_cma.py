"""The CMA-ES family: full-covariance CMA-ES, separable (diagonal) CMA-ES, limited-memory MA-ES.

All three search the operational floating parameters of a species as one
flat vector of ``P`` values (``ravel``), sample a population of ``N``
members as an ``[N, P]`` matrix and hand it back as particles
(``unravel``). The state of the search distribution (mean, step size,
paths, covariance) is kept in float64 (``CMAES`` always; ``SepCMAES`` and
``LMMAES`` in their ``dtype``, float64 unless asked otherwise), whatever the
dtypes of the parameters; samples are rounded to each parameter's dtype
once, when they become particles, and ``tell`` reads the rounded samples
back, so the distribution learns from the very points that were evaluated.

References:
    N. Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772
    (2016): every default of ``CMAES`` (weights with active negative
    weights, c_sigma, d_sigma, c_c, c_1, c_mu, h_sigma, the step-size rule).
    R. Ros and N. Hansen, "A Simple Modification in CMA-ES Achieving Linear
    Time and Space Complexity", PPSN 2008: ``SepCMAES`` (diagonal
    covariance, learning rates times ``(n + 2) / 3``).
    I. Loshchilov, T. Glasmachers and H.-G. Beyer, "Large Scale Black-box
    Optimization by Limited-Memory Matrix Adaptation", IEEE TEC 23(2), 2019:
    ``LMMAES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import attrs
import torch

from .._checks import check_int, require_floating
from .._errors import describe
from .._particle import Particle, assemble, build
from .._species import Species
from ._base import Algorithm, Example, draw_seed, fill_noise, scratch_tensor, workspace
from ._common import maximize_field, v_flag, v_int, v_positive
from ._space import ravel, ravel_size, unravel

#: the sum over ALL members of per-member rows ``[n_local, ...]`` (``Collective.sum``)
Sum = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------
# strategy parameters
# ---------------------------------------------------------------------------


def default_population_size(n: int) -> int:
    """``4 + floor(3 ln n)``: the default number of samples per generation for ``n`` dimensions."""
    return 4 + int(math.floor(3 * math.log(n))) if n > 1 else 4


def expected_norm(n: int) -> float:
    """``E||N(0, I_n)||``, approximated as ``sqrt(n) (1 - 1/(4n) + 1/(21 n^2))`` (Hansen's tutorial)."""
    return math.sqrt(n) * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n * n))


class Rates(NamedTuple):
    """The strategy parameters of one (n, lambda, mu) setting (Python floats, weights float64).

    ``weights[k]`` is the weight of the ``k``-th best member (``k = 0`` best):
    ``mu`` positive weights summing to 1, then (with ``active``) negative
    weights, else zeros.
    """

    n: int
    lam: int
    mu: int
    weights: torch.Tensor
    mueff: float
    c_m: float
    c_sigma: float
    d_sigma: float
    c_c: float
    c_1: float
    c_mu: float
    chi_n: float


def _raw_weights(lam: int) -> list[float]:
    """``ln((lam + 1) / 2) - ln(i)`` for ``i = 1..lam``: positive for the better half, negative after."""
    base = math.log((lam + 1) / 2.0)
    return [base - math.log(i) for i in range(1, lam + 1)]


def cma_rates(n: int, lam: int, mu: int | None = None, *, active: bool = True, separable: bool = False) -> Rates:
    """The defaults of Hansen's tutorial (2016, Table 1) for ``n`` dimensions and ``lam`` samples.

    ``mu`` (default ``lam // 2``) members get positive weights
    ``w'_i = ln((lam + 1) / 2) - ln i`` normalised to sum 1 (a chosen ``mu``:
    ``ln(mu + 1/2) - ln i``); with ``active``, the members ranked after
    ``(lam + 1) / 2`` get the tutorial's negative weights (the same formula),
    scaled by ``min(alpha_mu^-, alpha_mueff^-, alpha_posdef^-)``, and any
    others weight 0.
    ``separable`` gives Ros and Hansen's diagonal learning rates: ``c_1``
    and ``c_mu`` times ``(n + 2) / 3`` (``c_mu`` capped at ``1 - c_1``).
    """
    raw = _raw_weights(lam)
    if mu is None:
        mu = lam // 2
        pos = raw[:mu]
    else:
        # a chosen mu: ln(mu + 1/2) - ln i for the mu best (the tutorial's formula for lam = 2 mu)
        pos = [math.log(mu + 0.5) - math.log(i) for i in range(1, mu + 1)]
    neg = [min(w, 0.0) for w in raw[mu:]]
    spos = sum(pos)
    mueff = spos * spos / sum(w * w for w in pos)
    c_sigma = (mueff + 2.0) / (n + mueff + 5.0)
    d_sigma = 1.0 + 2.0 * max(0.0, math.sqrt((mueff - 1.0) / (n + 1.0)) - 1.0) + c_sigma
    c_c = (4.0 + mueff / n) / (n + 4.0 + 2.0 * mueff / n)
    alpha_cov = 2.0
    c_1 = alpha_cov / ((n + 1.3) ** 2 + mueff)
    c_mu = min(1.0 - c_1, alpha_cov * (0.25 + mueff - 2.0 + 1.0 / mueff) / ((n + 2.0) ** 2 + alpha_cov * mueff / 2.0))
    if separable:
        c_1 = c_1 * (n + 2.0) / 3.0
        c_mu = min(1.0 - c_1, c_mu * (n + 2.0) / 3.0)
    weights = [w / spos for w in pos]
    sneg = -sum(neg)
    if active and sneg > 0 and c_mu > 0:
        mueff_minus = sneg * sneg / sum(w * w for w in neg)
        alpha_mu = 1.0 + c_1 / c_mu
        alpha_mueff = 1.0 + 2.0 * mueff_minus / (mueff + 2.0)
        alpha_posdef = (1.0 - c_1 - c_mu) / (n * c_mu)
        scale = min(alpha_mu, alpha_mueff, alpha_posdef) / sneg
        weights += [w * scale for w in neg]
    else:
        weights += [0.0] * len(neg)
    return Rates(
        n=n,
        lam=lam,
        mu=mu,
        weights=torch.tensor(weights, dtype=torch.float64),
        mueff=mueff,
        c_m=1.0,
        c_sigma=c_sigma,
        d_sigma=d_sigma,
        c_c=c_c,
        c_1=c_1,
        c_mu=c_mu,
        chi_n=expected_norm(n),
    )


def eigen_interval(rates: Rates) -> int:
    """Generations between two eigendecompositions: ``max(1, floor(1 / (10 n (c_1 + c_mu))))``
    (pycma's lazy update gap), so the O(n^3) work stays below the O(n^2) work per sample."""
    return max(1, int(1.0 / (10.0 * rates.n * (rates.c_1 + rates.c_mu) + 1e-300)))


def member_weights(rates: Rates | LMRates, score: torch.Tensor) -> torch.Tensor:
    """``[N]`` float64: each member's recombination weight by its rank in ``score`` (higher is
    better; ties by position, so the order is the same on every rank of a sharded run)."""
    order = torch.sort(score, descending=True, stable=True).indices
    w = torch.empty_like(rates.weights, device=score.device)
    w[order] = rates.weights.to(score.device)
    return w


def hsig(rates: Rates, norm_ps: torch.Tensor, generation: int) -> torch.Tensor:
    """h_sigma (0. or 1., float64): stall the rank-one path while ``||p_sigma||`` is long
    (``||p_sigma|| / sqrt(1 - (1 - c_sigma)^(2 (g + 1))) < (1.4 + 2 / (n + 1)) E||N||``)."""
    corr = math.sqrt(1.0 - (1.0 - rates.c_sigma) ** (2 * (generation + 1)))
    return (norm_ps / corr < (1.4 + 2.0 / (rates.n + 1.0)) * rates.chi_n).to(torch.float64)


def csa(rates: Rates, sigma: torch.Tensor, norm_ps: torch.Tensor) -> torch.Tensor:
    """Cumulative step-size adaptation: ``sigma * exp(min(1, c_sigma / d_sigma (||p_sigma|| / E||N|| - 1)))``
    (the cap at ``e`` per generation is pycma's)."""
    s = (rates.c_sigma / rates.d_sigma) * (norm_ps / rates.chi_n - 1.0)
    return sigma * torch.exp(torch.clamp(s, max=1.0))


# ---------------------------------------------------------------------------
# full covariance
# ---------------------------------------------------------------------------


def cma_sample(m: torch.Tensor, sigma: torch.Tensor, B: torch.Tensor, D: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` samples ``m + sigma * B diag(D) z_i`` from ``[N, P]`` standard-normal ``z``."""
    return m + sigma * ((z * D) @ B.T)


class CMAUpdate(NamedTuple):
    m: torch.Tensor
    sigma: torch.Tensor
    C: torch.Tensor
    p_sigma: torch.Tensor
    p_c: torch.Tensor


def cma_update(
    rates: Rates,
    m: torch.Tensor,
    sigma: torch.Tensor,
    C: torch.Tensor,
    B: torch.Tensor,
    D: torch.Tensor,
    p_sigma: torch.Tensor,
    p_c: torch.Tensor,
    generation: int,
    X: torch.Tensor,
    w: torch.Tensor,
    *,
    donate: bool = False,
) -> CMAUpdate:
    """One generation of CMA-ES (Hansen's tutorial, eqs. 39-47).

    Args:
        X: ``[N, P]`` in the state's dtype, ALL evaluated members (a sharded
            run gathers them, so every process computes the same bits).
        w: ``[N]`` float64, their recombination weights (``member_weights``;
            cast to ``X``'s dtype).
        B, D: the eigendecomposition the members were sampled with (``C = B diag(D^2) B^T``).
        donate: write the new covariance into ``C``'s buffer.

    Returns the new mean, step size, covariance and paths (``B``, ``D`` are
    renewed separately, every ``eigen_interval`` generations; ``C`` is
    symmetrised there).
    """
    n = rates.n
    Y = (X - m) / sigma
    w = w.to(Y.dtype)  # the state's dtype (a no-op for the float64 default)
    wpos = torch.clamp(w, min=0.0)
    y_w = wpos @ Y
    # C^{-1/2} y_w = B diag(1/D) B^T y_w
    ps = (1.0 - rates.c_sigma) * p_sigma + math.sqrt(rates.c_sigma * (2.0 - rates.c_sigma) * rates.mueff) * (
        B @ ((B.T @ y_w) / D)
    )
    norm_ps = torch.linalg.vector_norm(ps)
    h = hsig(rates, norm_ps, generation)
    pc = (1.0 - rates.c_c) * p_c + h * math.sqrt(rates.c_c * (2.0 - rates.c_c) * rates.mueff) * y_w
    if bool((w < 0).any()):
        # negative weights are rescaled by n / ||C^{-1/2} y_i||^2
        zn2 = (((Y @ B) / D) ** 2).sum(dim=1)
        wo = torch.where(w < 0, w * n / torch.clamp(zn2, min=1e-300), w)
    else:
        wo = w
    rank_mu = (Y * wo[:, None]).T @ Y
    delta = (1.0 - h) * rates.c_c * (2.0 - rates.c_c)
    decay = 1.0 + rates.c_1 * delta - rates.c_1 - rates.c_mu * float(rates.weights.sum())
    # the same kernels whether written in place or not (so donation never changes a bit)
    C_new = C.mul_(decay) if donate else C * decay
    C_new.add_(torch.outer(pc, pc), alpha=rates.c_1)
    C_new.add_(rank_mu, alpha=rates.c_mu)
    m_new = m + rates.c_m * sigma * y_w
    return CMAUpdate(m_new, csa(rates, sigma, norm_ps), C_new, ps, pc)


def decompose(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(C, B, D)`` with ``C`` symmetrised and ``C = B diag(D^2) B^T``; a ``C`` that lost positive
    definiteness in rounding gets its diagonal raised until its smallest eigenvalue is ``1e-14``
    times its largest."""
    C = 0.5 * (C + C.T)
    evals, B = torch.linalg.eigh(C)
    low, high = float(evals[0]), float(evals[-1])
    floor = max(high, 1e-300) * 1e-14
    if not math.isfinite(low) or not math.isfinite(high):
        raise FloatingPointError("CMAES: the covariance matrix holds inf or NaN")
    if low < floor:
        shift = floor - low
        C = C + shift * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
        evals = evals + shift
    # row-major like every other state tensor (eigh returns column-major B): a loaded
    # checkpoint then multiplies with the same memory layout, hence the same bits
    return C, B.contiguous(), torch.sqrt(evals)


# ---------------------------------------------------------------------------
# diagonal covariance
# ---------------------------------------------------------------------------


_ROWS64 = 1 << 21  # float64 values per block of _row_sums64 (16 MiB)


def _row_sums64(S: torch.Tensor) -> torch.Tensor:
    """``S.sum(dim=1, dtype=torch.float64)`` for ``[n, P]`` ``S`` in blocks of rows: the float64
    copy the reduction makes stays a few MiB instead of ``n P`` values. Each row is reduced by
    the same kernel as in the whole tensor (the same bits) as long as a block holds at least two
    rows (a single row is reduced as a flat vector, in another order), so the last block takes
    a lone last row along."""
    n, p = S.shape[0], S[0].numel() if S.shape[0] else 0
    step = max(2, _ROWS64 // max(p, 1))
    if S.dtype == torch.float64 or n <= step + 1:
        return S.sum(dim=1, dtype=torch.float64)
    out = torch.empty(n, dtype=torch.float64, device=S.device)
    a = 0
    while a < n:
        b = n if n - (a + step) < 2 else a + step  # never a block of one row
        torch.sum(S[a:b], dim=1, dtype=torch.float64, out=out[a:b])
        a = b
    return out


def sep_sample(m: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` samples ``z_i * (sigma * sqrt(c)) + m``, written into ``z`` (a buffer the caller owns)."""
    return z.mul_(sigma * torch.sqrt(c)).add_(m)


class SepUpdate(NamedTuple):
    m: torch.Tensor
    sigma: torch.Tensor
    c: torch.Tensor
    p_sigma: torch.Tensor
    p_c: torch.Tensor


def sep_update(
    rates: Rates,
    m: torch.Tensor,
    sigma: torch.Tensor,
    c: torch.Tensor,
    p_sigma: torch.Tensor,
    p_c: torch.Tensor,
    generation: int,
    X: torch.Tensor,
    w: torch.Tensor,
    total: Sum,
    *,
    donate: bool = False,
    scratch: torch.Tensor | None = None,
) -> SepUpdate:
    """One generation of separable CMA-ES: ``cma_update`` with ``C = diag(c)`` (``rates`` from
    ``cma_rates(..., separable=True)``), from this process's members ``X`` ``[n, P]`` and their
    weights ``w`` ``[n]``; ``total`` sums per-member rows over all members. Vectors in
    ``m``'s dtype, scalars in float64. ``donate``: ``X`` may be overwritten. ``scratch``: a
    contiguous ``[n, P]`` tensor of ``m``'s dtype that the ``[n, P]`` temporaries are written
    into (the same values as fresh ones)."""
    n = rates.n
    dt = m.dtype
    Y = X.sub_(m).div_(sigma.to(dt)) if donate else (X - m) / sigma.to(dt)
    W = w.to(dt)
    if scratch is not None and (scratch.shape != Y.shape or scratch.dtype != dt or not scratch.is_contiguous()):
        scratch = None

    def into(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        return fn(*args) if scratch is None else fn(*args, out=scratch)

    y_w = total(into(torch.mul, torch.clamp(W, min=0.0)[:, None], Y))
    d = torch.sqrt(c)
    ps = (1.0 - rates.c_sigma) * p_sigma + math.sqrt(rates.c_sigma * (2.0 - rates.c_sigma) * rates.mueff) * (y_w / d)
    norm_ps = torch.linalg.vector_norm(ps.double())
    h = hsig(rates, norm_ps, generation)
    pc = (1.0 - rates.c_c) * p_c + (h * math.sqrt(rates.c_c * (2.0 - rates.c_c) * rates.mueff)).to(dt) * y_w
    if bool((w < 0).any()):
        zn2 = _row_sums64(into(torch.div, Y, d).pow_(2))  # ((Y / d) ** 2).sum(dim=1, dtype=torch.float64)
        W = torch.where(w < 0, w * n / torch.clamp(zn2, min=1e-300), w).to(dt)
    YY = into(torch.mul, Y, Y)
    rank_mu = total(torch.mul(W[:, None], YY, out=YY) if scratch is not None else W[:, None] * YY)
    delta = (1.0 - h) * rates.c_c * (2.0 - rates.c_c)
    decay = (1.0 + rates.c_1 * delta - rates.c_1 - rates.c_mu * float(rates.weights.sum())).to(dt)
    c_new = decay * c + rates.c_1 * pc * pc + rates.c_mu * rank_mu
    m_new = m + (rates.c_m * sigma).to(dt) * y_w
    return SepUpdate(m_new, csa(rates, sigma, norm_ps), c_new, ps, pc)


# ---------------------------------------------------------------------------
# limited-memory matrix adaptation
# ---------------------------------------------------------------------------


class LMRates(NamedTuple):
    """LM-MA-ES parameters (Loshchilov, Glasmachers and Beyer, Algorithm 1).

    ``c_sigma = 2 lam / n`` and ``c_c[j] = lam / (n 4^j)`` are capped at 1
    (the paper's values exceed 1 when ``n < 2 lam``); ``c_d[j] = 1 / (n 1.5^j)``,
    capped at 1/2 (at ``n = 1`` the paper's 1 would make the transformation singular).
    """

    n: int
    lam: int
    mu: int
    memory: int
    weights: torch.Tensor
    mueff: float
    c_sigma: float
    c_c: torch.Tensor
    c_d: torch.Tensor


def lm_rates(n: int, lam: int, mu: int | None = None, memory: int | None = None) -> LMRates:
    mu = lam // 2 if mu is None else mu
    memory = default_population_size(n) if memory is None else memory
    raw = [math.log(mu + 0.5) - math.log(i) for i in range(1, mu + 1)]
    s = sum(raw)
    pos = [r / s for r in raw]
    mueff = 1.0 / sum(v * v for v in pos)
    j = torch.arange(memory, dtype=torch.float64)
    return LMRates(
        n=n,
        lam=lam,
        mu=mu,
        memory=memory,
        weights=torch.tensor(pos + [0.0] * (lam - mu), dtype=torch.float64),
        mueff=mueff,
        c_sigma=min(1.0, 2.0 * lam / n),
        c_c=torch.clamp(lam / (n * 4.0**j), max=1.0),
        c_d=torch.clamp(1.0 / (n * 1.5**j), max=0.5),
    )


def lm_transform(M: torch.Tensor, c_d: torch.Tensor, k: int, z: torch.Tensor, *,
                 scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``d_i = F_k(... F_1(z_i))`` with ``F_j(v) = (1 - c_d[j]) v + c_d[j] (M_j . v) M_j``, for all rows.

    Computed in coefficient form: ``d = a z + sum_j b_j M_j`` with ``a = prod_j (1 - c_j)``
    and ``b_j = c_j r_j prod_{i > j} (1 - c_i)``, where ``r_j = M_j . (F_{j-1}(...F_1(z)))``
    is the dot product step ``j`` sees. Those solve the unit triangular system
    ``r_j = P_j q_j + sum_{i < j} r_i c_i (P_j / P_{i+1}) G_ij`` (``q = z M^T``,
    ``G = M M^T``, ``P_j = prod_{i < j} (1 - c_i)``): one triangular solve for all rows,
    so the k sequential rank-one steps cost two ``[N, P] x [P, k]`` products and
    O(N k^2) work in a few calls instead of k passes over ``[N, P]``.

    ``scratch``: a contiguous tensor of ``z``'s shape and dtype: then the result is written
    into ``z`` (which the caller owns) with ``scratch`` holding ``b @ M_k``, the same values
    as the fresh ``a * z + b @ M_k``.
    """
    if k == 0:
        return z
    Mk = M[:k]
    q = z @ Mk.T  # [N, k]: M_j . z
    G = Mk @ Mk.T  # [k, k]
    c = c_d[:k].to(device=z.device, dtype=z.dtype)
    P = torch.cat([torch.ones(1, dtype=z.dtype, device=z.device), torch.cumprod(1.0 - c, 0)])  # [k + 1]
    # L[i, j] = c_i (P_j / P_{i+1}) G_ij for i < j: r = (P * q) + r L  <=>  r (I - L) = P * q
    L = torch.triu(c[:, None] * (P[None, :k] / P[1:, None]) * G, diagonal=1)
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    r = torch.linalg.solve_triangular(eye - L, q * P[:k], upper=True, left=False, unitriangular=True)
    b = r * (c * (P[k] / P[1:]))
    a = float(P[k])
    if scratch is not None and scratch.shape == z.shape and scratch.dtype == z.dtype and scratch.is_contiguous():
        return z.mul_(a).add_(torch.matmul(b, Mk, out=scratch))
    return a * z + b @ Mk


def lm_inverse(M: torch.Tensor, c_d: torch.Tensor, k: int, d: torch.Tensor) -> torch.Tensor:
    """``z`` with ``lm_transform(M, c_d, k, z) == d`` for one vector ``d`` [P]
    (each ``F_j`` inverted by Sherman-Morrison, last first).

    ``F_j^-1(v) = (v - g_j M_j) / (1 - c_j)`` with ``g_j = c_j (M_j . v) / D_j``,
    ``D_j = 1 - c_j + c_j |M_j|^2``. Undoing the divisions, ``z = (d - sum_j e_j M_j) / P``
    (``P = prod_j (1 - c_j)``) where the ``e_j`` solve the unit triangular system
    ``e_j + (c_j / D_j) sum_{i > j} G_ij e_i = (c_j / D_j) (M_j . d)``: one solve, no
    loop over the k steps.
    """
    if k == 0:
        return d
    Mk = M[:k]
    c = c_d[:k].to(device=d.device, dtype=d.dtype)
    G = Mk @ Mk.T
    f = c / ((1.0 - c) + c * torch.diagonal(G))  # c_j / D_j
    U = torch.triu(f[:, None] * G, diagonal=1)  # U[j, i] = f_j G_ji (= G_ij) for i > j
    eye = torch.eye(k, dtype=d.dtype, device=d.device)
    e = torch.linalg.solve_triangular(eye + U, (f * (Mk @ d))[:, None], upper=True, unitriangular=True)[:, 0]
    return (d - e @ Mk) / torch.prod(1.0 - c)


class LMUpdate(NamedTuple):
    m: torch.Tensor
    sigma: torch.Tensor
    M: torch.Tensor
    p_sigma: torch.Tensor


def lm_update(
    rates: LMRates,
    m: torch.Tensor,
    sigma: torch.Tensor,
    M: torch.Tensor,
    p_sigma: torch.Tensor,
    generation: int,
    X: torch.Tensor,
    w: torch.Tensor,
    total: Sum,
    *,
    donate: bool = False,
    scratch: torch.Tensor | None = None,
) -> LMUpdate:
    """One generation of LM-MA-ES from this process's members ``X`` ``[n, P]`` and weights ``w``
    (``total`` sums per-member rows over all members).

    ``z_w = sum_i w_i z_i`` is recovered from ``d_w = sum_i w_i d_i`` (the
    transform is linear), ``d_i = (x_i - m) / sigma`` read from the evaluated
    members (``donate``: ``X`` may be overwritten; ``scratch``: a contiguous ``[n, P]`` tensor
    of ``m``'s dtype for the weighted rows, the same values as a fresh one).
    """
    dt = m.dtype
    Dm = X.sub_(m).div_(sigma.to(dt)) if donate else (X - m) / sigma.to(dt)
    if scratch is not None and scratch.shape == Dm.shape and scratch.dtype == dt and scratch.is_contiguous():
        d_w = total(torch.mul(w.to(dt)[:, None], Dm, out=scratch))
    else:
        d_w = total(w.to(dt)[:, None] * Dm)
    k = min(generation, rates.memory)
    z_w = lm_inverse(M, rates.c_d, k, d_w)
    cs = rates.c_sigma
    ps = (1.0 - cs) * p_sigma + math.sqrt(rates.mueff * cs * (2.0 - cs)) * z_w
    cc = rates.c_c.to(device=M.device, dtype=dt)[:, None]
    M_new = (1.0 - cc) * M + torch.sqrt(rates.mueff * cc * (2.0 - cc)) * z_w[None, :]
    sq = (ps.double() ** 2).sum() / rates.n
    sigma_new = sigma * torch.exp(torch.clamp(0.5 * cs * (sq - 1.0), max=1.0))
    m_new = m + sigma.to(dt) * d_w
    return LMUpdate(m_new, sigma_new, M_new, ps)


# ---------------------------------------------------------------------------
# the algorithms
# ---------------------------------------------------------------------------


def cma_population_size(x: Particle | Species | int) -> int:
    """Hansen's default population size ``4 + floor(3 ln d)`` for ``d`` searched values.

    Args:
        x: a particle or species (``d = ravel_size(species)``), or ``d`` itself.

    Returns:
        The population size, an int >= 5.

    Examples:
        >>> cma_population_size(nf.particle(nn.Linear(10, 10)))   # d = 110 searched values
        18
        >>> cma_population_size(1000)
        24
    """
    if isinstance(x, Particle):
        x = x.species
    if isinstance(x, Species):
        require_floating(x, "cma_population_size", "cannot search over")
        x = ravel_size(x)
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise TypeError(f"cma_population_size: expected a particle, a species or an int >= 1, got {describe(x)}")
    return default_population_size(x)


def _searched(x: Particle, where: str) -> torch.Tensor:
    """The centre's searched values as a float64 ``[P]`` tensor of its own."""
    flat = ravel(x).detach()
    if flat.numel() == 0:
        raise ValueError(f"{where}: expected a particle with at least one operational floating value, got none")
    return flat.to(torch.float64, copy=True)


def _centre(flat: torch.Tensor, like: Particle) -> Particle:
    """``flat`` as a single particle like ``like`` (its own storage, each parameter's dtype)."""
    return unravel(flat.clone(), like)


def _every_member_noise(coll: Any, like: torch.Tensor, seed: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, P]`` standard normal noise of ALL members (drawn in the noise blocks, as
    ``Collective.noise`` draws it), for samples computed alike on every process: a matrix
    product's rows can round differently for different row counts, so each process
    computing only its block would not give the single-process bits."""
    shape = (coll.n, like.numel())
    if out is not None and tuple(out.shape) == shape and out.dtype == like.dtype and out.device == like.device \
            and out.is_contiguous():
        buf = out  # a buffer the caller owns (the run loop's): drawn into, the same bits
    else:
        buf = torch.empty(shape, dtype=like.dtype, device=like.device)
    fill_noise([buf], seed, range(coll.n), False, n=coll.n)
    return buf


def _samples(ws: dict | None, x: torch.Tensor, like: Particle, keep: torch.Tensor | None = None) -> Particle:
    """``unravel(x, like)``: views of the ``[n, P]`` samples ``x`` where no cast is needed. Inside
    ``run`` (``ws``), parameters of another dtype than ``x`` are cast into the loop's population
    buffers (``copy_``: the same values as ``.to``), and then ``x``'s buffer (or ``keep``'s, the
    buffer ``x`` is a block of) is free for the next generation's samples."""
    sp = like.species
    lay = sp.layout()
    if ws is None or all(sp.dtypes[sp.names[i]] == x.dtype for i in lay.op):
        return unravel(x, like)
    n = x.shape[0]
    have = ws.get("cma.population")
    if not (isinstance(have, Particle) and have.species is sp and have.population_size == n
            and have.tensors[lay.op[0]].device == x.device):
        ws["cma.population"] = have = unravel(x, like)
    else:
        off = 0
        for i in lay.op:
            k = lay.numel[i]
            have.tensors[i].view(n, k).copy_(x[:, off:off + k])
            off += k
        have = build(sp, assemble(sp, like.tensors, [have.tensors[i] for i in lay.op], n))
    _recycle(ws, x if keep is None else keep)
    return have


def _members(ws: dict | None, population: Particle, dtype: torch.dtype) -> torch.Tensor:
    """``ravel(population).detach().to(dtype)``; inside ``run`` a cast goes into the loop's sample buffer."""
    flat = ravel(population).detach()
    if flat.dtype == dtype or ws is None:
        return flat.to(dtype)
    buf = ws.pop("cma.samples", None)
    if not (isinstance(buf, torch.Tensor) and buf.shape == flat.shape and buf.dtype == dtype
            and buf.device == flat.device):
        return flat.to(dtype)
    return buf.copy_(flat)


def _recycle(ws: dict | None, X: torch.Tensor) -> None:
    """Inside ``run``: the donated, now read members ``X`` ``[n, P]`` become the next ``ask``'s sample buffer."""
    if ws is not None and X.is_contiguous() and X.storage_offset() == 0 \
            and X.untyped_storage().nbytes() == X.numel() * X.element_size():
        ws["cma.samples"] = X


def _v_mu(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    check_int(value, f"{type(instance).__name__}: mu", low=1)
    if value > instance.population_size:
        raise ValueError(
            f"{type(instance).__name__}: mu expects 1 <= mu <= population_size ({instance.population_size}), got {value}"
        )


def _v_optional_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        check_int(value, f"{type(instance).__name__}: {attribute.name}", low=1)


_FLOATS = (torch.float64, torch.float32)


def _v_dtype(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in _FLOATS:
        raise TypeError(f"{type(instance).__name__}: dtype expects torch.float64 or torch.float32, got {describe(value)}")


class CMAESState(NamedTuple):
    """The search distribution of ``CMAES`` after ``generation`` updates (a pytree).

    ``P`` is the number of searched values (``ravel_size``). Every tensor is
    in the algorithm's ``dtype`` (float64 by default), whatever the parameters'
    dtypes; ``sigma`` is 0-d float64.

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre as a single particle (each parameter's dtype): the answer.
        m: the centre as the ``[P]`` vector the algorithm updates
            (``mean`` is it rounded to the parameters' dtypes).
        sigma: the step size, 0-d.
        C: ``[P, P]`` covariance matrix.
        B, D: its eigendecomposition as sampled from (``C = B diag(D**2) B^T``,
            ``[P, P]`` and ``[P]``), renewed every ``eigen_interval`` generations.
        p_sigma: the ``[P]`` evolution path of the step size.
        p_c: the ``[P]`` evolution path of the rank-one update.
        eigen_generation: the generation at which ``B``, ``D`` were computed.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    m: torch.Tensor
    sigma: torch.Tensor
    C: torch.Tensor
    B: torch.Tensor
    D: torch.Tensor
    p_sigma: torch.Tensor
    p_c: torch.Tensor
    eigen_generation: int


@attrs.frozen(kw_only=True)
class CMAES(Algorithm):
    """CMA-ES with a full covariance matrix (Hansen's tutorial, 2016), for up to ~10^4 searched values.

    Samples ``x_i = m + sigma * B diag(D) z_i`` (``z_i`` standard normal, from
    the noise blocks) over the ravelled operational floating parameters,
    returns them as particles, and updates the mean (weighted recombination
    of the best ``mu``), the step size (cumulative step-size adaptation), and
    the covariance (rank-one update with ``h_sigma``, rank-``mu`` update,
    active negative weights) with every default of the tutorial's Table 1.
    Memory: ``3 P**2`` float64 (``C``, ``B`` and one temporary); work per
    generation ``O(N P**2)``, plus an ``O(P**3)`` eigendecomposition every
    ``eigen_interval`` generations. A sharded run gathers the members and
    computes the update identically on every process (bit for bit the
    single-process one; every process also samples all ``N``, for the same reason).

    Args:
        population_size: ``N >= 2`` samples per generation; Hansen's default is
            ``cma_population_size(x) = 4 + floor(3 ln P)``. Larger ``N`` is
            more robust on multimodal functions (see ``IPOP``).
        sigma: the initial step size, > 0: about a quarter of the range where
            the optimum is expected, in the parameters' units.
        mu: how many of the best members recombine the mean (default ``N // 2``).
        active: negative weights for the worse members (active CMA; default True).
        eigen_interval: generations between eigendecompositions (default
            ``max(1, floor(1 / (10 P (c_1 + c_mu))))``, pycma's lazy gap).
        dtype: the dtype of the state (``m``, ``C``, ``B``, ``D``, the paths),
            the sampling and the update: ``torch.float64`` (default) or
            ``torch.float32``, which halves the memory and about halves the
            time of the eigendecomposition and the ``O(N P**2)`` products (the
            peers' precision; other values than float64, so another run).
        maximize: higher fitness is better (default) or lower (losses).

    Raises:
        ValueError: ``population_size < 2``, ``sigma <= 0``, ``mu`` out of
            ``[1, N]``; at ``init``, a centre with nothing to search.
        TypeError: at ``init``, a species with a non-float operational parameter (named).

    All arguments are keyword-only.

    Examples:
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> g = torch.Generator().manual_seed(0)
        >>> x0 = nf.particle(nn.Linear(2, 1)).randn(generator=g)   # the centre: 3 searched values
        >>> cma = CMAES(population_size=cma_population_size(x0), sigma=0.3, maximize=False)
        >>> cma.population_size
        7
        >>> state, history = cma.run(cma.init(x0), loss, 100, generator=g)
        >>> state.generation, state.m.shape, bool(state.best_fitness < 1e-8)
        (100, torch.Size([3]), True)
    """

    population_size: int = attrs.field(validator=v_int(2))
    sigma: float = attrs.field(validator=v_positive)
    mu: int | None = attrs.field(default=None, validator=_v_mu)
    active: bool = attrs.field(default=True, validator=v_flag)
    eigen_interval: int | None = attrs.field(default=None, validator=_v_optional_int)
    dtype: torch.dtype = attrs.field(default=torch.float64, validator=_v_dtype)
    maximize: bool = maximize_field()

    State = CMAESState
    kind = "distribution"

    def rates_for(self, d: int) -> Rates:
        """The strategy parameters for ``d`` searched values (``cma_rates``).

        Args:
            d: the number of searched values, >= 1.

        Returns:
            The learning rates, weights and damping of this configuration.
        """
        return _rates(d, self.population_size, self.mu, self.active, False)

    def _check_population(self, n: int) -> None:
        if n < 2:  # pragma: no cover - the field's validator refuses it first
            raise ValueError(f"{type(self).__name__}: population_size expects >= 2, got {n}")

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        m = _searched(x, f"{type(self).__name__}.init").to(self.dtype)
        d = m.numel()
        eye = torch.eye(d, dtype=m.dtype, device=m.device)
        return {
            "mean": _centre(m, x),
            "m": m,
            "sigma": torch.tensor(float(self.sigma), dtype=torch.float64, device=m.device),
            "C": eye,
            "B": eye.clone(),
            "D": torch.ones(d, dtype=m.dtype, device=m.device),
            "p_sigma": torch.zeros(d, dtype=m.dtype, device=m.device),
            "p_c": torch.zeros(d, dtype=m.dtype, device=m.device),
            "eigen_generation": 0,
        }

    def _ask(self, state: CMAESState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        # every process samples all N (the O(N P^2) product is replicated, as the update is)
        z = _every_member_noise(coll, state.m, draw_seed(generator))  # [N, P] in the state's dtype
        x = cma_sample(state.m, state.sigma.to(state.m.dtype), state.B, state.D, z)
        return unravel(coll.block(x), state.mean), {}

    def _tell(self, state: CMAESState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        X = coll.gather(ravel(population).detach().to(state.m.dtype))  # [N, P], every process alike
        rates = self.rates_for(X.shape[1])
        w = member_weights(rates, score.to(X.device))
        u = cma_update(rates, state.m, state.sigma, state.C, state.B, state.D, state.p_sigma, state.p_c,
                       state.generation, X, w, donate=donate)
        C, B, D, at = u.C, state.B, state.D, state.eigen_generation
        g = state.generation + 1
        every = self.eigen_interval if self.eigen_interval is not None else eigen_interval(rates)
        if g - at >= every:
            C, B, D = decompose(C)
            at = g
        return {"mean": _centre(u.m, state.mean), "m": u.m, "sigma": u.sigma, "C": C, "B": B, "D": D,
                "p_sigma": u.p_sigma, "p_c": u.p_c, "eigen_generation": at}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5), exact=True)


_RATES_CACHE: dict[tuple, Any] = {}  # Rates (CMA-ES, SepCMAES) or LMRates (LMMAES), by key


def _rates(d: int, lam: int, mu: int | None, active: bool, separable: bool) -> Rates:
    key = (d, lam, mu, active, separable)
    r = _RATES_CACHE.get(key)
    if r is None:
        if len(_RATES_CACHE) > 256:
            _RATES_CACHE.clear()
        r = _RATES_CACHE[key] = cma_rates(d, lam, mu, active=active, separable=separable)
    return r


class SepCMAESState(NamedTuple):
    """The search distribution of ``SepCMAES`` (a pytree).

    Vectors ``[P]`` in the algorithm's ``dtype``; ``sigma`` 0-d float64.

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre as a single particle (each parameter's dtype).
        m: the centre as a ``[P]`` vector.
        sigma: the step size.
        c: the diagonal of the covariance matrix.
        p_sigma: the evolution path of the step size.
        p_c: the evolution path of the covariance.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    m: torch.Tensor
    sigma: torch.Tensor
    c: torch.Tensor
    p_sigma: torch.Tensor
    p_c: torch.Tensor


@attrs.frozen(kw_only=True)
class SepCMAES(Algorithm):
    """Separable CMA-ES (Ros and Hansen 2008): CMA-ES with a diagonal covariance, linear time and memory.

    The tutorial's update restricted to ``C = diag(c)``, with the covariance
    learning rates ``c_1``, ``c_mu`` times ``(n + 2) / 3`` (Ros and Hansen),
    active negative weights as in ``CMAES``. For 10^4 to 10^7 searched values,
    or separable problems; it cannot learn correlations between values.
    Per generation ``O(N P)`` work and memory; sums over members go through
    the collective (``exact=True``: the same bits for any split).

    Args:
        population_size: ``N >= 2`` (Hansen's default: ``cma_population_size(x)``).
        sigma: the initial step size, > 0.
        mu: as ``CMAES``.
        active: as ``CMAES``.
        dtype: the dtype of the ``[P]`` state vectors and of the sampling
            (``torch.float64`` default; ``torch.float32`` halves the memory for very large ``P``).
        exact: sums over members bit-identical under any sharding (slower).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.
    """

    population_size: int = attrs.field(validator=v_int(2))
    sigma: float = attrs.field(validator=v_positive)
    mu: int | None = attrs.field(default=None, validator=_v_mu)
    active: bool = attrs.field(default=True, validator=v_flag)
    dtype: torch.dtype = attrs.field(default=torch.float64, validator=_v_dtype)
    exact: bool = attrs.field(default=False, validator=v_flag)
    maximize: bool = maximize_field()

    State = SepCMAESState
    kind = "distribution"

    def rates_for(self, d: int) -> Rates:
        """The strategy parameters for ``d`` searched values (``cma_rates(..., separable=True)``).

        Args:
            d: the number of searched values, >= 1.

        Returns:
            The learning rates, weights and damping of this configuration.
        """
        return _rates(d, self.population_size, self.mu, self.active, True)

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        m = _searched(x, f"{type(self).__name__}.init").to(self.dtype)
        return {
            "mean": _centre(m, x),
            "m": m,
            "sigma": torch.tensor(float(self.sigma), dtype=torch.float64, device=m.device),
            "c": torch.ones_like(m),
            "p_sigma": torch.zeros_like(m),
            "p_c": torch.zeros_like(m),
        }

    def _ask(self, state: SepCMAESState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        ws = workspace(donate)  # inside run: the samples are drawn into the last generation's buffer
        z = coll.noise(state.m, draw_seed(generator), out=ws.pop("cma.samples", None) if ws is not None else None)
        return _samples(ws, sep_sample(state.m, state.sigma.to(state.m.dtype), state.c, z), state.mean), {}

    def _tell(self, state: SepCMAESState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        ws = workspace(donate)
        X = _members(ws, population, state.m.dtype)
        rates = self.rates_for(X.shape[1])
        w = coll.block(member_weights(rates, score.to(X.device)))
        scratch = scratch_tensor(ws, "cma.rows", X.shape, X.dtype, X.device) if ws is not None else None
        u = sep_update(rates, state.m, state.sigma, state.c, state.p_sigma, state.p_c, state.generation, X, w,
                       lambda v: coll.sum(v, exact=self.exact), donate=donate, scratch=scratch)
        _recycle(ws, X)
        return {"mean": _centre(u.m, state.mean), "m": u.m, "sigma": u.sigma, "c": u.c,
                "p_sigma": u.p_sigma, "p_c": u.p_c}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5, exact=True), exact=True)


class LMMAESState(NamedTuple):
    """The search distribution of ``LMMAES`` (a pytree). Vectors in the algorithm's ``dtype``.

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre as a single particle (each parameter's dtype).
        m: the centre as a ``[P]`` vector.
        sigma: the step size (0-d float64).
        M: ``[memory, P]`` the limited-memory directions (evolution paths at
            decreasing learning rates); the first ``min(generation, memory)``
            shape the samples.
        p_sigma: ``[P]`` the step-size path.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    m: torch.Tensor
    sigma: torch.Tensor
    M: torch.Tensor
    p_sigma: torch.Tensor


@attrs.frozen(kw_only=True)
class LMMAES(Algorithm):
    """Limited-memory matrix adaptation ES (Loshchilov, Glasmachers and Beyer 2019), for 10^4 to 10^7 values.

    Samples ``x_i = m + sigma * d_i`` where ``d_i`` is ``z_i`` passed through
    ``k = min(generation, memory)`` rank-one transformations
    ``v -> (1 - c_d[j]) v + c_d[j] (M_j . v) M_j``; the ``M_j`` are evolution
    paths with learning rates ``c_c[j] = N / (P 4^j)``; the step size follows
    ``sigma <- sigma exp(c_sigma / 2 (||p_sigma||^2 / P - 1))``,
    ``c_sigma = 2 N / P`` (both capped at 1 for small ``P``). Memory
    ``(memory + 3) P`` plus the population; work ``O(N memory P)`` per
    generation, as two matrix products (``lm_transform``). ``tell`` recovers
    the weighted ``z`` from the evaluated members by inverting the
    transformation, so nothing but the distribution is stored between
    ``ask`` and ``tell``.

    Args:
        population_size: ``N >= 2`` (the paper's default: ``cma_population_size(x)``).
        sigma: the initial step size, > 0.
        mu: parents (default ``N // 2``, positive log weights).
        memory: the number of directions ``M_j`` (default ``4 + floor(3 ln P)``).
        dtype: the dtype of ``m``, ``M``, ``p_sigma`` and the sampling (float64 default).
        exact: a sharded run gives the single-process bits: sums over members in
            fixed point and every process transforms all ``N`` samples (a matrix
            product's rows round differently for different row counts); default
            False: each process samples only its members, sums in floating
            point (the same to rounding).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.
    """

    population_size: int = attrs.field(validator=v_int(2))
    sigma: float = attrs.field(validator=v_positive)
    mu: int | None = attrs.field(default=None, validator=_v_mu)
    memory: int | None = attrs.field(default=None, validator=_v_optional_int)
    dtype: torch.dtype = attrs.field(default=torch.float64, validator=_v_dtype)
    exact: bool = attrs.field(default=False, validator=v_flag)
    maximize: bool = maximize_field()

    State = LMMAESState
    kind = "distribution"

    def rates_for(self, d: int) -> LMRates:
        """The strategy parameters for ``d`` searched values (``lm_rates``).

        Args:
            d: the number of searched values, >= 1.

        Returns:
            The learning rates and weights of this configuration.
        """
        key = ("lm", d, self.population_size, self.mu, self.memory)
        r = _RATES_CACHE.get(key)
        if r is None:
            r = _RATES_CACHE[key] = lm_rates(d, self.population_size, self.mu, self.memory)
        return r

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        m = _searched(x, f"{type(self).__name__}.init").to(self.dtype)
        rates = self.rates_for(m.numel())
        return {
            "mean": _centre(m, x),
            "m": m,
            "sigma": torch.tensor(float(self.sigma), dtype=torch.float64, device=m.device),
            "M": torch.zeros(rates.memory, m.numel(), dtype=m.dtype, device=m.device),
            "p_sigma": torch.zeros_like(m),
        }

    def _ask(self, state: LMMAESState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        rates = self.rates_for(state.m.numel())
        seed = draw_seed(generator)
        # exact: every process transforms all N (the products' rows round by row count)
        ws = workspace(donate)  # inside run: the samples are drawn into the last generation's buffers
        old = ws.pop("cma.samples", None) if ws is not None else None
        z = _every_member_noise(coll, state.m, seed, old) if self.exact else coll.noise(state.m, seed, out=old)
        scratch = scratch_tensor(ws, "cma.rows", z.shape, z.dtype, z.device) if ws is not None else None
        d = lm_transform(state.M, rates.c_d, min(state.generation, rates.memory), z, scratch=scratch)
        x = d.mul_(float(state.sigma)).add_(state.m)
        return _samples(ws, coll.block(x) if self.exact else x, state.mean, keep=x), {}

    def _tell(self, state: LMMAESState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        ws = workspace(donate)
        X = _members(ws, population, state.m.dtype)
        rates = self.rates_for(X.shape[1])
        w = coll.block(member_weights(rates, score.to(X.device)))
        scratch = scratch_tensor(ws, "cma.rows", X.shape, X.dtype, X.device) if ws is not None else None
        u = lm_update(rates, state.m, state.sigma, state.M, state.p_sigma, state.generation, X, w,
                      lambda v: coll.sum(v, exact=self.exact), donate=donate, scratch=scratch)
        _recycle(ws, X)  # sharded with exact=True a block of all members' samples: not recycled
        return {"mean": _centre(u.m, state.mean), "m": u.m, "sigma": u.sigma, "M": u.M, "p_sigma": u.p_sigma}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5, exact=True), exact=True)
