"""The cross-entropy method (Rubinstein 1999) with a diagonal Gaussian, for continuous search.

Each generation samples ``x_i = m + s * z_i`` (``z_i ~ N(0, I)``, mean ``m``
and a standard deviation ``s`` per value, particles of the centre's
species), keeps the ``k = max(1, floor(elite_ratio * N))`` best members
(ties by position) and refits the Gaussian to them by maximum likelihood::

    elite mean:  m + s * zbar,              zbar = sum_e z_e / k
    elite std:   s * sqrt(mean_e z_e**2 - zbar**2)     (population std, ddof 0)
    m <- m + lr_mean * (elite mean - m),   s <- s + lr_sigma * (elite std - s)

``lr_mean = lr_sigma = 1`` (the default) is the plain method; smaller rates
smooth the updates (Duan et al. 2016). Then ``s <- max(s * sigma_decay,
sigma_limit)``: a ``sigma_limit > 0`` keeps the search from collapsing,
which a plain CEM does once the elites agree.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import attrs
import torch

from .._checks import check_real
from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example
from ._common import maximize_field, v_decay, v_int, v_nonneg, v_positive
from ._nes import ask_gaussian, exact_field, full_like, owned, schedule_, square


class CEMState(NamedTuple):
    """The search distribution of CEM (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre ``m`` (a single particle).
        sigma: per-value standard deviations ``s`` (a particle like ``mean``).
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


def _fraction(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"{type(instance).__name__}: {attribute.name}", low=0.0, high=1.0, low_open=True)


@attrs.frozen(kw_only=True)
class CEM(Algorithm):
    """Cross-entropy method: refit a diagonal Gaussian to the elite fraction of each generation.

    ``init(centre)`` takes the starting mean (a single particle); the search
    runs tensor by tensor over its operational floating-point values. Module
    docstring: the update.

    Args:
        population_size: ``N >= 2`` samples per generation (default 32).
        sigma: the initial standard deviation of every value, > 0.
        elite_ratio: the fraction of members refitted to, in (0, 1]
            (``k = max(1, floor(elite_ratio * N))``; default 0.1).
        lr_mean: smoothing of the mean's refit, in (0, 1] (default 1: none).
        lr_sigma: smoothing of the standard deviations' refit, in (0, 1] (default 1: none).
        sigma_decay: ``s <- max(s * sigma_decay, sigma_limit)`` after each
            update (default 1: off).
        sigma_limit: the lower bound of that decay (default 0).
        exact: exact collective sums (sharded runs give the single-process bits).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> cem = CEM(population_size=60, sigma=1.0, elite_ratio=0.2, lr_sigma=0.7, maximize=False)
        >>> _ = torch.manual_seed(0)                    # nn.Linear draws its start from torch's global RNG
        >>> state = cem.init(nf.particle(nn.Linear(4, 2)))
        >>> state, _ = cem.run(state, loss, 150, generator=torch.Generator().manual_seed(0))
        >>> cem.elites, bool(state.best_fitness < 1e-6)
        (12, True)
    """

    population_size: int = attrs.field(default=32, validator=v_int(2))
    sigma: float = attrs.field(default=0.1, validator=v_positive)
    elite_ratio: float = attrs.field(default=0.1, validator=_fraction)
    lr_mean: float = attrs.field(default=1.0, validator=_fraction)
    lr_sigma: float = attrs.field(default=1.0, validator=_fraction)
    sigma_decay: float = attrs.field(default=1.0, validator=v_decay)
    sigma_limit: float = attrs.field(default=0.0, validator=v_nonneg)
    exact: bool = exact_field()
    maximize: bool = maximize_field()

    State = CEMState
    kind = "distribution"

    @property
    def elites(self) -> int:
        """``k = max(1, floor(elite_ratio * population_size))``, the members the Gaussian is refitted to."""
        return max(1, int(math.floor(self.elite_ratio * self.population_size)))

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        mean = owned(x, f"{type(self).__name__}.init")
        return {"mean": mean, "sigma": full_like(mean, self.sigma), "noise": None, "population": None}

    def _ask(self, state: CEMState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        return ask_gaussian(state, generator, coll, donate)

    def _tell(self, state: CEMState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        k = self.elites
        order = torch.argsort(score, descending=True, stable=True)
        w = torch.zeros_like(score, dtype=torch.float64)
        w[order[:k]] = 1.0 / k
        w_local = coll.block(w)
        z = state.noise
        assert z is not None  # tell follows an ask
        zbar = coll.weighted_sum(z, w_local, exact=self.exact)
        z2 = square(z, donate)  # kept as the state's noise buffer (the same values donated or not)
        z2bar = coll.weighted_sum(z2, w_local, exact=self.exact)
        sp = state.mean.species
        new_m, new_s = [], []
        for m, s, a, b in zip(operational(state.mean), operational(state.sigma), operational(zbar), operational(z2bar)):
            # elite std / s = sqrt(mean z^2 - zbar^2); the elite mean is m + s * zbar
            ratio = b.addcmul_(a, a, value=-1.0).clamp_min_(0.0).sqrt_()
            new_m.append(m.addcmul_(s, a, value=self.lr_mean) if donate else torch.addcmul(m, s, a, value=self.lr_mean))
            # s + lr (s * ratio - s) = s * (1 + lr (ratio - 1))
            factor = ratio.sub_(1.0).mul_(self.lr_sigma).add_(1.0)
            new_s.append(s.mul_(factor) if donate else s * factor)
        schedule_(new_s, self.sigma_decay, self.sigma_limit)
        return {
            "mean": build(sp, assemble(sp, state.mean.tensors, new_m, None)),
            "sigma": build(sp, assemble(sp, state.sigma.tensors, new_s, None)),
            "noise": z2,
        }

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5, elite_ratio=0.5, exact=True), exact=True)
