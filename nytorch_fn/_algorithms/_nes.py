"""Natural evolution strategies: SNES (separable) and XNES (full covariance), Wierstra et al. 2014.

Both keep a Gaussian search distribution and follow the natural gradient of
the expected (shaped) fitness. Notation as in the paper (JMLR 15, 2014,
algorithms 5 and 6): ``z_i ~ N(0, I)`` the standard-normal samples, ``u_i``
the utilities of the members (fitness shaping, by default the paper's
rank-based utilities, ``nes_utilities``), ``d`` the number of searched values.

SNES, per searched value (mean ``m`` and standard deviation ``s``, both
particles of the centre's species)::

    x_i = m + s * z_i
    m  <- m + lr_mean * s * sum_i u_i z_i
    s  <- s * exp(lr_sigma / 2 * sum_i u_i (z_i**2 - 1))

XNES, on the ravelled values (``mu`` ``[d]``, scale ``sigma`` and a
``[d, d]`` shape matrix ``B`` with ``det B = 1``, so ``A = sigma B``)::

    x_i = mu + sigma * B z_i
    G_delta = sum_i u_i z_i,   G_M = sum_i u_i (z_i z_i^T - I)
    G_sigma = tr(G_M) / d,     G_B = G_M - G_sigma I
    mu <- mu + lr_mean * sigma * B G_delta
    sigma <- sigma * exp(lr_sigma / 2 * G_sigma),   B <- B expm(lr_B / 2 * G_B)

Defaults are the paper's (table 1): ``lr_mean = 1``; SNES ``lr_sigma =
(3 + ln d) / (5 sqrt d)``; XNES ``lr_sigma = lr_B = (9 + 3 ln d) / (5 d
sqrt d)``. After each update ``sigma <- max(sigma * sigma_decay,
sigma_limit)`` (evosax's schedule; off by default).

This module also holds the pieces the other Gaussian strategies of this
package share (PGPE, CEM): the per-tensor sampling ``m + s * z``, the sigma
schedule, and the checks of the common hyperparameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._errors import describe
from .._fitness import check_shaping, nes_utilities, shape_scores
from .._particle import Particle, assemble, build, fill, operational
from ._base import Algorithm, Example, draw_seed, fill_noise, refill_noise
from ._common import maximize_field, v_decay, v_flag, v_int, v_nonneg, v_positive
from ._space import ravel, unravel

# ---------------------------------------------------------------------------
# hyperparameter checks not in _common
# ---------------------------------------------------------------------------


def v_positive_or_none(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None:
        v_positive(instance, attribute, value)


def v_shaping(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_shaping(value, f"{type(instance).__name__}: {attribute.name}")


def exact_field() -> Any:
    """``exact: bool = False``: pass ``exact=True`` to the collective sums (sharded runs then
    give the single-process bits, at about 10x the cost of the sums)."""
    return attrs.field(default=False, validator=v_flag)


# ---------------------------------------------------------------------------
# per-tensor pieces shared by SNES, PGPE and CEM
# ---------------------------------------------------------------------------


def searched_values(p: Particle) -> int:
    """``d``: the number of operational values of one member."""
    lay = p.species.layout()
    return sum(lay.numel[i] for i in lay.op)


def owned(x: Particle, where: str) -> Particle:
    """The centre as the state's own buffers: ``init`` hands kernels a copy, detached here."""
    if searched_values(x) == 0:
        raise ValueError(f"{where}: expected a particle with at least one operational value, got none")
    return build(x.species, [t.detach() for t in x.tensors])


def full_like(x: Particle, value: float) -> Particle:
    """A particle like ``x`` holding ``value`` in every operational tensor (the others as ``x``'s)."""
    return build(x.species, fill(x, lambda t: torch.full_like(t, value)))


def sample(mean: Particle, sigma: Particle, noise: Particle, out: list[torch.Tensor] | None = None) -> Particle:
    """``mean + sigma * noise`` per operational tensor, one ``addcmul`` pass each (a population),
    written into ``out`` (tensors of the population's shapes) when given."""
    sp = mean.species
    cols = zip(operational(mean), operational(sigma), operational(noise))
    if out is None:
        res = [torch.addcmul(m, s, z) for m, s, z in cols]
    else:
        res = [torch.addcmul(m, s, z, out=o) for (m, s, z), o in zip(cols, out)]
    return build(sp, assemble(sp, mean.tensors, res, noise.population_size))


def ask_gaussian(state: Any, generator: Any, coll: Any, donate: bool, antithetic: bool = False) -> tuple[Particle, dict]:
    """``ask`` of the diagonal Gaussians: the noise blocks (``coll.noise``), then
    ``mean + sigma * noise``. Donated, the noise and the population are drawn into the
    state's buffers of the last ``ask`` (a loop's cost then does not depend on the heap)."""
    seed = draw_seed(generator)
    n = coll.local_n
    noise = None
    if donate and state.noise is not None and state.noise.population_size == n:
        noise = refill_noise(state.noise, seed, coll.rows, antithetic, n=coll.n)
    if noise is None:
        noise = coll.noise(state.mean, seed, antithetic=antithetic)
    old = state.population
    out = operational(old) if donate and old is not None and old.population_size == n else None
    pop = sample(state.mean, state.sigma, noise, out)
    return pop, {"noise": noise, "population": pop}


def square(noise: Particle, in_place: bool) -> Particle:
    """``noise ** 2`` per operational tensor (written into ``noise`` when ``in_place``)."""
    xs = operational(noise)
    if in_place and xs and xs[0].device.type == "cpu":
        torch._foreach_mul_(xs, xs)
        res = xs
    else:
        res = [x.mul_(x) if in_place else x * x for x in xs]
    return build(noise.species, assemble(noise.species, noise.tensors, res, None))


def schedule_(ts: list[torch.Tensor], decay: float, limit: float) -> None:
    """``t <- max(t * decay, limit)`` in place (the sigma schedule), skipped when it is the identity."""
    if decay != 1.0:
        for t in ts:
            t.mul_(decay)
    if limit > 0.0:
        for t in ts:
            t.clamp_min_(limit)


def nes_population(d: int) -> int:
    """The paper's population size for ``d`` searched values: ``4 + floor(3 ln d)``.

    Args:
        d: the number of searched values (``ravel_size(species)``).

    Returns:
        The population size (an int).
    """
    return 4 + int(math.floor(3 * math.log(max(d, 1))))


# ---------------------------------------------------------------------------
# SNES
# ---------------------------------------------------------------------------


class SNESState(NamedTuple):
    """The search distribution of SNES (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre ``m`` (a single particle of the centre's species).
        sigma: the per-value standard deviations ``s`` (a particle like ``mean``).
        noise: the standard-normal ``z`` of the last ``ask`` (this process's
            members), or None before the first ``ask``; after ``tell`` its square
            ``z**2`` (a buffer the next donated ``ask`` refills).
        population: the members of the last ``ask``, or None.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    sigma: Particle
    noise: Particle | None
    population: Particle | None


@attrs.frozen(kw_only=True)
class SNES(Algorithm):
    """Separable natural evolution strategy (Wierstra et al. 2014): a sigma per value.

    A diagonal Gaussian whose standard deviations are adapted multiplicatively
    by the natural gradient. ``init(centre)`` takes the starting mean (a single particle); the search
    runs over its operational floating-point values, tensor by tensor (no
    ravelling); the others follow their config. Module docstring: the update.

    Args:
        population_size: ``N >= 2`` samples per generation (default 16; the
            paper's ``4 + floor(3 ln d)`` is ``nes_population(d)``).
        sigma: the initial standard deviation of every value, > 0.
        lr_mean: step on the mean, > 0 (paper: 1).
        lr_sigma: step on ``log sigma``, > 0; None: ``(3 + ln d) / (5 sqrt d)``.
        shaping: ``score [N] -> utilities [N]`` (default ``nes_utilities``;
            any shaping of ``nytorch_fn.algorithms``, e.g. ``centered_ranks``).
        sigma_decay: after each update ``sigma <- max(sigma * sigma_decay,
            sigma_limit)`` (default 1: off).
        sigma_limit: the lower bound of that decay (default 0).
        exact: exact collective sums (``Collective.weighted_sum``): a sharded
            run then gives the single-process bits; off by default (~10x the
            cost of the two sums).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> snes = SNES(population_size=16, sigma=0.5, maximize=False)
        >>> _ = torch.manual_seed(0)                    # nn.Linear draws its start from torch's global RNG
        >>> state = snes.init(nf.particle(nn.Linear(4, 2)))
        >>> state, history = snes.run(state, loss, 150, generator=torch.Generator().manual_seed(0))
        >>> bool(state.best_fitness < 1e-6), history.sigma.shape
        (True, torch.Size([150]))
    """

    population_size: int = attrs.field(default=16, validator=v_int(2))
    sigma: float = attrs.field(default=0.1, validator=v_positive)
    lr_mean: float = attrs.field(default=1.0, validator=v_positive)
    lr_sigma: float | None = attrs.field(default=None, validator=v_positive_or_none)
    shaping: Callable[[torch.Tensor], torch.Tensor] = attrs.field(default=nes_utilities, validator=v_shaping)
    sigma_decay: float = attrs.field(default=1.0, validator=v_decay)
    sigma_limit: float = attrs.field(default=0.0, validator=v_nonneg)
    exact: bool = exact_field()
    maximize: bool = maximize_field()

    State = SNESState
    kind = "distribution"

    def lr_sigma_for(self, d: int) -> float:
        """The step on ``log sigma`` for ``d`` searched values.

        Args:
            d: the number of searched values.

        Returns:
            ``lr_sigma``, or the paper's ``(3 + ln d) / (5 sqrt d)`` when it is None.
        """
        return self.lr_sigma if self.lr_sigma is not None else (3 + math.log(d)) / (5 * math.sqrt(d))

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        mean = owned(x, f"{type(self).__name__}.init")
        return {"mean": mean, "sigma": full_like(mean, self.sigma), "noise": None, "population": None}

    def _ask(self, state: SNESState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        return ask_gaussian(state, generator, coll, donate)

    def _tell(self, state: SNESState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        where = f"{type(self).__name__}.tell"
        u = shape_scores(self.shaping, score, where)
        u_local = coll.block(u)
        z = state.noise
        assert z is not None  # tell follows an ask
        g_mean = coll.weighted_sum(z, u_local, exact=self.exact)  # sum_i u_i z_i
        z2 = square(z, donate)  # kept as the state's noise buffer (the same values donated or not)
        g_sq = coll.weighted_sum(z2, u_local, exact=self.exact)  # sum_i u_i z_i^2
        total = u.sum()
        half_lr = self.lr_sigma_for(searched_values(state.mean)) / 2
        new_m, new_s = [], []
        for m, s, gm, gs in zip(operational(state.mean), operational(state.sigma), operational(g_mean),
                                operational(g_sq)):
            # the mean moves with the old sigma, then sigma is updated
            new_m.append(m.addcmul_(s, gm, value=self.lr_mean) if donate else torch.addcmul(m, s, gm, value=self.lr_mean))
            factor = gs.sub_(total.to(gs.dtype)).mul_(half_lr).exp_()  # exp(lr/2 * sum u (z^2 - 1))
            new_s.append(s.mul_(factor) if donate else s * factor)
        schedule_(new_s, self.sigma_decay, self.sigma_limit)
        sp = state.mean.species
        return {
            "mean": build(sp, assemble(sp, state.mean.tensors, new_m, None)),
            "sigma": build(sp, assemble(sp, state.sigma.tensors, new_s, None)),
            "noise": z2,
        }

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5, exact=True), exact=True)


# ---------------------------------------------------------------------------
# XNES
# ---------------------------------------------------------------------------


class XNESState(NamedTuple):
    """The search distribution of XNES (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre (a single particle).
        sigma: the global scale, a 0-d float64 tensor.
        B: the ``[d, d]`` float64 shape matrix (``det B = 1``; the covariance
            is ``sigma**2 B B^T``).
        noise: the ``[n, d]`` float64 standard-normal ``z`` of the last
            ``ask`` (this process's members; zeros before the first).
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    sigma: torch.Tensor
    B: torch.Tensor
    noise: torch.Tensor


@attrs.frozen(kw_only=True)
class XNES(Algorithm):
    """Exponential natural evolution strategy (Wierstra et al. 2014): a full covariance.

    A Gaussian ``N(mu, sigma**2 B B^T)`` adapted by the natural gradient in
    local coordinates. Works on the ravelled operational values (``d`` of them, ``ravel``) and
    keeps a ``[d, d]`` float64 matrix: meant for moderate ``d`` (up to a few
    thousand: ``8 d**2`` bytes, an ``O(d**3)`` matrix exponential per
    generation). For large ``d`` use ``SNES``. Module docstring: the update.

    Args:
        population_size: ``N >= 2`` (default 16; the paper's is ``nes_population(d)``).
        sigma: the initial scale, > 0 (``B`` starts as the identity).
        lr_mean: > 0 (paper: 1).
        lr_sigma: step on ``log sigma``, > 0; None: ``(9 + 3 ln d) / (5 d sqrt d)``.
        lr_B: step on ``B``, > 0; None: ``(9 + 3 ln d) / (5 d sqrt d)``.
        shaping: ``score [N] -> utilities [N]`` (default ``nes_utilities``).
        sigma_decay: ``sigma <- max(sigma * sigma_decay, sigma_limit)`` after
            each update (off by default).
        sigma_limit: the lower bound of that decay (default 0).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def ellipse(pop):                           # [N]: badly scaled, minimum at 0
        ...     x = ravel(pop)
        ...     return (x[:, 0] ** 2 + 100 * x[:, 1] ** 2).double()
        >>> xnes = XNES(population_size=10, sigma=1.0, maximize=False)
        >>> _ = torch.manual_seed(0)                    # nn.Linear draws its start from torch's global RNG
        >>> state = xnes.init(nf.particle(nn.Linear(2, 1, bias=False)))
        >>> state, _ = xnes.run(state, ellipse, 200, generator=torch.Generator().manual_seed(0))
        >>> bool(state.best_fitness < 1e-8)
        True
    """

    population_size: int = attrs.field(default=16, validator=v_int(2))
    sigma: float = attrs.field(default=0.1, validator=v_positive)
    lr_mean: float = attrs.field(default=1.0, validator=v_positive)
    lr_sigma: float | None = attrs.field(default=None, validator=v_positive_or_none)
    lr_B: float | None = attrs.field(default=None, validator=v_positive_or_none)
    shaping: Callable[[torch.Tensor], torch.Tensor] = attrs.field(default=nes_utilities, validator=v_shaping)
    sigma_decay: float = attrs.field(default=1.0, validator=v_decay)
    sigma_limit: float = attrs.field(default=0.0, validator=v_nonneg)
    maximize: bool = maximize_field()

    State = XNESState
    kind = "distribution"

    def rates_for(self, d: int) -> tuple[float, float]:
        """``(lr_sigma, lr_B)`` for ``d`` searched values.

        Args:
            d: the number of searched values.

        Returns:
            The two rates; a None field gives the paper's ``(9 + 3 ln d) / (5 d sqrt d)``.
        """
        default = (9 + 3 * math.log(d)) / (5 * d * math.sqrt(d))
        return (
            self.lr_sigma if self.lr_sigma is not None else default,
            self.lr_B if self.lr_B is not None else default,
        )

    #: the largest ``d`` accepted: the ``[d, d]`` float64 matrix takes ``8 d**2`` bytes (800 MB here)
    #: and each generation an ``O(d**3)`` matrix exponential
    max_dimension = 10_000

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        where = f"{type(self).__name__}.init"
        mean = owned(x, where)
        d = searched_values(mean)
        if d > self.max_dimension:
            raise ValueError(
                f"{where}: XNES keeps a d x d matrix; expected at most {self.max_dimension} searched values, "
                f"got {d} (use SNES, or the linear-memory LMMAES / SepCMAES, for large d)"
            )
        device = ravel(mean).device
        return {
            "mean": mean,
            "sigma": torch.tensor(float(self.sigma), dtype=torch.float64, device=device),
            "B": torch.eye(d, dtype=torch.float64, device=device),
            "noise": torch.zeros(coll.local_n, d, dtype=torch.float64, device=device),
        }

    def _ask(self, state: XNESState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        mu = ravel(state.mean).to(torch.float64)
        seed = draw_seed(generator)
        if donate and state.noise.shape == (coll.local_n, mu.shape[0]):
            z = state.noise
            fill_noise([z], seed, coll.rows, False, n=coll.n)  # the same draws as coll.noise, into the state's buffer
        else:
            z = coll.noise(mu, seed)  # [n, d] float64
        x = torch.addmm(mu, z, state.B.T, alpha=float(state.sigma))  # mu + sigma * B z, row by row
        return unravel(x, state.mean), {"noise": z}

    def _tell(self, state: XNESState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        where = f"{type(self).__name__}.tell"
        u = shape_scores(self.shaping, score, where)
        # every process computes the same d x d statistics from all members' noise
        z = coll.gather(state.noise)
        u = u.to(z.device)
        d = z.shape[1]
        g_delta = u @ z  # [d]
        g_m = z.T @ (z * u[:, None])  # [d, d]
        g_m.diagonal().sub_(u.sum())
        g_sigma = g_m.diagonal().sum() / d
        g_b = g_m
        g_b.diagonal().sub_(g_sigma)  # traceless: det B stays 1
        lr_sigma, lr_b = self.rates_for(d)
        sigma, B = state.sigma, state.B
        mu = torch.addmv(ravel(state.mean).to(torch.float64), B, g_delta, alpha=self.lr_mean * float(sigma))
        new_sigma = sigma * torch.exp(lr_sigma / 2 * g_sigma)
        new_b = B @ torch.linalg.matrix_exp((lr_b / 2) * g_b)
        if self.sigma_decay != 1.0:
            new_sigma = new_sigma * self.sigma_decay
        if self.sigma_limit > 0.0:
            new_sigma = new_sigma.clamp_min(self.sigma_limit)
        mean = unravel(mu, state.mean)
        return {"mean": build(mean.species, [t.contiguous() for t in mean.tensors]), "sigma": new_sigma,
                "B": new_b}

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5), exact=True)
