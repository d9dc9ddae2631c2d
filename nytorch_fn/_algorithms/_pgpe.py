"""PGPE: policy gradients with parameter-based exploration (Sehnke et al. 2010), symmetric sampling.

A separable Gaussian (mean ``m`` and a standard deviation ``s`` per value,
particles of the centre's species) sampled in antithetic pairs ``m + s * z_k``
and ``m - s * z_k`` (within each noise block of 32 members the second half
negates the first, ``fill_noise``). With
``u_i`` the shaped fitness (default: centred ranks) and ``b`` their mean,
the gradient estimates (ascent) are, with ``z_i`` member ``i``'s signed noise::

    g_m = s * sum_i u_i z_i / N
    g_s = s * sum_i (u_i - b) (z_i**2 - 1) / N

which are the paper's symmetric estimates ``sum_k (u+_k - u-_k) / 2 * eps_k / K``
and ``sum_k ((u+_k + u-_k) / 2 - b) (eps_k**2 - s**2) / s / K`` over the ``K =
N / 2`` directions ``eps_k = s z_k`` (EvoTorch's normalisation). The mean is
moved by ``optimizer`` (default ClipUp, Toklu et al. 2020), which descends
and so receives ``-g_m``; the deviations take a plain step ``s + lr_sigma *
g_s``, kept within ``[s (1 - sigma_max_change), s (1 + sigma_max_change)]``,
then ``s <- max(s * sigma_decay, sigma_limit)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import attrs
import torch

from .._checks import check_int
from .._errors import describe
from .._fitness import centered_ranks, shape_scores
from .._optim import GradientTransformation, apply_updates, clipup
from .._particle import Particle, assemble, build, operational
from ._base import Algorithm, Example
from ._common import maximize_field, v_decay, v_nonneg, v_positive, v_unit
from ._nes import ask_gaussian, exact_field, full_like, owned, schedule_, square, v_shaping


class PGPEState(NamedTuple):
    """The search distribution of PGPE (a pytree).

    Attributes:
        best: the best member so far (a single particle).
        best_fitness: its fitness (0-d float64).
        generation: the number of ``tell`` calls so far.
        asked: the bookkeeping of the last ``ask`` (an int64 tensor, checked by ``tell``).
        mean: the centre ``m`` (a single particle).
        sigma: per-value standard deviations ``s`` (a particle like ``mean``).
        opt_state: the optimiser's state for ``mean``.
        noise: the signed standard-normal ``z`` of the last ``ask`` (this
            process's members), or None before the first ``ask``; after ``tell`` its
            square ``z**2`` (a buffer the next donated ``ask`` refills).
        population: the members of the last ``ask``, or None.
    """

    best: Particle
    best_fitness: torch.Tensor
    generation: int
    asked: torch.Tensor
    mean: Particle
    sigma: Particle
    opt_state: Any
    noise: Particle | None
    population: Particle | None


def _even_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, f"{type(instance).__name__}: population_size", low=2)
    if value % 2:
        raise ValueError(
            f"{type(instance).__name__}: population_size expects an even number (members come in "
            f"antithetic pairs), got {value}"
        )


def _optimizer(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, GradientTransformation):
        raise TypeError(
            f"{type(instance).__name__}: optimizer expects a GradientTransformation (e.g. optim.clipup(0.15)), "
            f"got {describe(value)}"
        )


@attrs.frozen(kw_only=True)
class PGPE(Algorithm):
    """PGPE with symmetric (antithetic) sampling and ClipUp, as EvoTorch and evosax ship it.

    ``init(centre)`` takes the starting mean (a single particle); the search
    runs tensor by tensor over its operational floating-point values. Module
    docstring: the update.

    Args:
        population_size: ``N``, even, >= 2 (``N / 2`` antithetic pairs).
        sigma: the initial standard deviation of every value, > 0.
        optimizer: moves the mean (default ``optim.clipup(0.15)``, steps of at
            most 0.3 in the search space: scale it to your problem).
        lr_sigma: step on the deviations, > 0 (default 0.1).
        sigma_max_change: the largest relative change of a deviation per
            generation, in [0, 1] (default 0.2, as Ha's and EvoTorch's PGPE).
        shaping: ``score [N] -> [N]`` (default ``centered_ranks``).
        sigma_decay: ``s <- max(s * sigma_decay, sigma_limit)`` after each
            update (off by default).
        sigma_limit: the lower bound of that decay (default 0).
        exact: exact collective sums (sharded runs give the single-process bits).
        maximize: higher fitness is better (default) or lower.

    All arguments are keyword-only.

    Examples:
        >>> def loss(pop):                              # [N]: the squared distance to 1
        ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
        >>> pgpe = PGPE(population_size=20, sigma=0.5, optimizer=clipup(0.05), maximize=False)
        >>> _ = torch.manual_seed(0)                    # nn.Linear draws its start from torch's global RNG
        >>> state = pgpe.init(nf.particle(nn.Linear(4, 2)))
        >>> state, history = pgpe.run(state, loss, 300, generator=torch.Generator().manual_seed(0))
        >>> bool(loss(nf.stack([state.mean]))[0] < 0.1)    # within a few ClipUp steps (0.05 each) of the optimum
        True
    """

    population_size: int = attrs.field(default=32, validator=_even_size)
    sigma: float = attrs.field(default=0.1, validator=v_positive)
    optimizer: GradientTransformation = attrs.field(factory=lambda: clipup(0.15), validator=_optimizer)
    lr_sigma: float = attrs.field(default=0.1, validator=v_positive)
    sigma_max_change: float = attrs.field(default=0.2, validator=v_unit)
    shaping: Callable[[torch.Tensor], torch.Tensor] = attrs.field(default=centered_ranks, validator=v_shaping)
    sigma_decay: float = attrs.field(default=1.0, validator=v_decay)
    sigma_limit: float = attrs.field(default=0.0, validator=v_nonneg)
    exact: bool = exact_field()
    maximize: bool = maximize_field()

    State = PGPEState
    kind = "distribution"

    def _init(self, x: Particle, *, generator: Any, coll: Any) -> dict:
        mean = owned(x, f"{type(self).__name__}.init")
        return {
            "mean": mean,
            "sigma": full_like(mean, self.sigma),
            "opt_state": self.optimizer.init(mean),
            "noise": None,
            "population": None,
        }

    def _ask(self, state: PGPEState, *, generator: Any, coll: Any, donate: bool) -> tuple[Particle, dict]:
        return ask_gaussian(state, generator, coll, donate, antithetic=True)

    def _tell(self, state: PGPEState, population: Particle, score: torch.Tensor, *, generator: Any, coll: Any,
              donate: bool) -> dict:
        where = f"{type(self).__name__}.tell"
        n = score.shape[0]
        u = shape_scores(self.shaping, score, where)
        centred = u - u.mean()
        z = state.noise
        assert z is not None  # tell follows an ask
        g_z = coll.weighted_sum(z, coll.block(u), exact=self.exact)  # sum_i u_i z_i
        z2 = square(z, donate)  # kept as the state's noise buffer (the same values donated or not)
        g_sq = coll.weighted_sum(z2, coll.block(centred), exact=self.exact)  # sum_i (u_i - b) z_i^2
        total = centred.sum()  # 0 up to rounding; kept so the estimate is exact for any shaping
        sp = state.mean.species
        ss = operational(state.sigma)
        # descent direction for the optimiser: -g_m = -s * sum u z / N
        desc = [torch.mul(s, gz).mul_(-1.0 / n) for s, gz in zip(ss, operational(g_z))]
        grads = build(sp, assemble(sp, state.mean.tensors, desc, None))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.mean, donate=donate)
        mean = apply_updates(state.mean, updates, donate=donate)
        c = self.sigma_max_change
        new_s = []
        for s, gs in zip(ss, operational(g_sq)):
            step = gs.sub_(total.to(gs.dtype)).mul_(self.lr_sigma / n)  # lr * g_s / s
            new = torch.addcmul(s, s, step)  # s + lr * g_s
            new = torch.clamp(new, min=s * (1 - c), max=s * (1 + c))
            new_s.append(s.copy_(new) if donate else new)
        schedule_(new_s, self.sigma_decay, self.sigma_limit)
        return {
            "mean": mean,
            "sigma": build(sp, assemble(sp, state.sigma.tensors, new_s, None)),
            "opt_state": opt_state,
            "noise": z2,
        }

    @classmethod
    def _example(cls) -> Example:
        return Example(cls(population_size=8, sigma=0.5, optimizer=clipup(0.1), exact=True), exact=True)
