"""OpenAI-ES: a Gaussian search distribution around one mean particle, centred-rank fitness shaping.

Noise streams (so a rank of a sharded run draws only its own members'):
each ``ask`` draws ONE base seed ``b`` from the caller's generator
(``torch.randint(0, 2**63 - 1, (1,))`` on the generator's device). Member
``i`` uses stream ``k = i // 2`` with sign ``(-1)**i`` when antithetic
(member ``2k + 1`` is the negation of member ``2k``), else ``k = i`` with
sign ``+1``. Stream ``k`` is a ``torch.Generator`` on the parameters' device
seeded with ``splitmix64(b ^ (GOLDEN * k mod 2**64))`` (``GOLDEN =
0x9E3779B97F4A7C15``; ``splitmix64`` as in Steele et al. 2014, see
``_splitmix64``); from it, one ``torch.randn(P_d, dtype=d)`` per dtype ``d``
of the operational parameters (dtypes in order of first appearance in
``species.names``; ``P_d`` the number of values of that dtype), split into
the parameters of that dtype in ``species.names`` order.

Mean update, exactly reproducible across shardings: the sum ``sum_i r_i
eps_i`` is computed in integers. The centred rank ``r_i = R_i / (N - 1) -
1/2`` is ``c_i / (2 (N - 1))`` with the integer ``c_i = 2 R_i - (N - 1)``;
each noise value is rounded to an integer multiple of ``2**-k``
(``q = round(clamp(eps, -16, 16) * 2**k)``, the clamp never active for
``randn`` noise). ``sum_i c_i q_i`` is then a float64 matrix product over
chunks of at most 256 members whose every product and partial sum is an
integer below ``2**52``, hence exact in any summation order (BLAS, FMA
included); chunk sums are added as int64. So any split of the members
(chunks here, ranks in ``ShardedES``, one all_reduce) gives the same bits,
at the cost of one float64 pass over the noise and a matrix product.
``k = 48 - bit_length(min(N, 256)) - bit_length(N - 1)`` (31 at
``N = 256``, 23 at ``N = 4096``): the rounding of each noise value is far
below float32 resolution of the gradient for any practical ``N``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import attrs
import torch

from .._errors import describe
from .._optim import GradientTransformation, adam, apply_updates
from .._checks import require_floating
from .._fitness import centered_ranks
from .._particle import Particle, assemble, build
from ._common import (
    check_bool,
    check_generator,
    check_int,
    check_real,
    draw,
    require_single,
    scores,
    update_best,
    worst_fitness,
)


class ESState(NamedTuple):
    """The search distribution after ``generation`` updates (a pytree).

    Attributes:
        mean: the centre of the search distribution (a single particle): the answer.
        opt_state: the optimiser's state for ``mean``.
        noise: the standard-normal perturbations of the last ``ask``
            (a population ``[N, ...]``; in ``ShardedES`` only the local rows),
            or None before ``ask``.
        best: the best sampled member so far (single particle).
        best_fitness: its fitness (0-d float64; the worst value before the first ``tell``).
        generation: how many times ``tell`` has moved the mean.
        seed: the base seed of the last ``ask`` (member ``i``'s noise is
            ``member_noise(mean, seed, [i], antithetic=...)``); 0 before the first
            (an int always, so a checkpoint loads against a fresh ``init``).
    """

    mean: Particle
    opt_state: Any
    noise: Particle | None
    best: Particle
    best_fitness: torch.Tensor
    generation: int
    seed: int = 0


_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
_CLAMP = 16.0  # bound on |eps| in the exact sum (2**4; never reached by randn noise)
_CHUNK = 256  # members per chunk of the exact sum (keeps partial sums below 2**52)


def _splitmix64(x: int) -> int:
    """The splitmix64 finaliser of ``x + GOLDEN`` (uint64 arithmetic)."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(base: int, k: int) -> int:
    """The seed of noise stream ``k`` for base seed ``base``: ``splitmix64(base ^ GOLDEN * k)`` (uint64)."""
    return _splitmix64((base ^ (_GOLDEN * k)) & _MASK)


def draw_base_seed(generator: torch.Generator | None) -> int:
    """One base seed per generation from the caller's generator (the global CPU RNG when None):
    ``torch.randint(0, 2**63 - 1, (1,), generator=generator)`` on the generator's device."""
    return int(draw("randint", (1,), generator, device="cpu", high=2**63 - 1)[0])




def member_noise(template: Particle, base: int, members: Sequence[int], *, antithetic: bool) -> Particle:
    """The standard-normal noise of the global members ``members``: a population ``[len(members), ...]``.

    Each member's values come from its own stream (module docstring), so any
    subset of members is drawn alone with the same bits as in the whole
    population; an antithetic pair present twice is drawn once and negated.
    Non-operational parameters are copied from ``template`` (a single particle).

    Example:
        >>> eps = member_noise(p, 12345, range(4), antithetic=True)   # eps[1] == -eps[0]
    """
    sp = template.species
    leaves = template.tensors
    require_floating(sp, "OpenAIES")
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i in sp.layout().op:
        t = leaves[i]
        groups.setdefault((t.dtype, t.device), []).append(i)
    rows = len(members)
    bufs = [torch.empty(rows, sum(leaves[i].numel() for i in idx), dtype=d, device=dev)
            for (d, dev), idx in groups.items()]
    gens: dict[torch.device, torch.Generator] = {}
    drawn: dict[int, tuple[int, bool]] = {}  # stream -> (row, negated)
    for row, m in enumerate(members):
        k, neg = (m // 2, m % 2 == 1) if antithetic else (m, False)
        if k in drawn:
            src, src_neg = drawn[k]
            for buf in bufs:
                if neg == src_neg:
                    buf[row] = buf[src]
                else:
                    torch.neg(buf[src], out=buf[row])
            continue
        drawn[k] = (row, neg)
        seed = stream_seed(base, k)
        seeded = set()
        for ((d, dev), _), buf in zip(groups.items(), bufs):
            if dev not in gens:
                gens[dev] = torch.Generator(device=dev)
            if dev not in seeded:
                gens[dev].manual_seed(seed)
                seeded.add(dev)
            z = torch.randn(buf.shape[1], dtype=d, device=dev, generator=gens[dev])
            if neg:
                torch.neg(z, out=buf[row])
            else:
                buf[row] = z
    results: list[Any] = [None] * len(sp.names)
    for ((_, _), idx), buf in zip(groups.items(), bufs):
        off = 0
        for i in idx:
            t = leaves[i]
            results[i] = buf[:, off:off + t.numel()].reshape(rows, *t.shape).contiguous()
            off += t.numel()
    return build(sp, assemble(sp, leaves, [results[i] for i in sp.layout().op], rows))


def fixed_point_bits(n: int) -> int:
    """``k``: noise values are rounded to integer multiples of ``2**-k`` (module docstring)."""
    return 48 - min(n, _CHUNK).bit_length() - max(n - 1, 1).bit_length()


def fixed_point_unit(n: int) -> float:
    """The value of one unit of ``quantized_sum``: ``2**-k / (2 (N - 1))``."""
    return 2.0 ** -fixed_point_bits(n) / (2 * max(n - 1, 1))


def quantized_sum(noise: Particle, shaped: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``sum_i c_i * round(eps_i * 2**k)`` over the rows of ``noise``, one int64 tensor per
    operational parameter (``species.names`` order): exact, so partial sums over any split
    of the ``n`` members add up to the same bits (units of ``fixed_point_unit(n)``).

    Args:
        noise: ``[m, ...]`` rows of the noise (a block of the ``n`` members or all).
        shaped: ``[m]`` float64, those members' centred ranks.
        n: the global population size (fixes ``k``).
    """
    scale = 2.0 ** fixed_point_bits(n)  # exact: a power of two
    bound = _CLAMP * scale
    # centred ranks as exact integers c_i = 2 R_i - (n - 1)
    c = torch.round((shaped.to(torch.float64) + 0.5) * (n - 1)) * 2 - (n - 1)
    eps = noise.tensors
    out = []
    for i in noise.species.layout().op:
        t = eps[i]
        flat = t.reshape(t.shape[0], -1)
        acc = torch.zeros(flat.shape[1], dtype=torch.int64, device=t.device)
        for a in range(0, flat.shape[0], _CHUNK):
            q = flat[a:a + _CHUNK].to(torch.float64).mul_(scale).clamp_(-bound, bound).round_()
            acc += (c[a:a + _CHUNK].to(t.device) @ q).to(torch.int64)  # integer-valued, |.| < 2**52: exact
        out.append(acc.view(t.shape[1:]))
    return out




def _v_pos(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, f"OpenAIES: {attribute.name}", low=0.0, low_open=True)


def _v_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, f"OpenAIES: {attribute.name}")


def _v_size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_int(value, "OpenAIES: population_size", low=2)
    if instance.antithetic and value % 2:
        raise ValueError(f"OpenAIES: population_size expects an even number with antithetic=True, got {value}")


def _v_opt(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, GradientTransformation):
        raise TypeError(f"OpenAIES: optimizer expects a GradientTransformation, got {describe(value)}")


@attrs.frozen(kw_only=True)
class OpenAIES:
    """OpenAI-ES (Salimans et al. 2017): estimate the fitness gradient from Gaussian perturbations.

    ``ask`` samples ``x_i = mean + sigma * eps_i`` (``eps_i ~ N(0, I)``, in
    antithetic pairs ``+eps``/``-eps`` by default); ``tell`` shapes the
    fitness into centred ranks ``r_i`` and moves the mean along
    ``g = sum_i r_i eps_i / (N sigma)`` (the ascent direction of the
    shaped fitness) with ``optimizer`` (which minimises, so it receives
    ``-g``). Only operational parameters are perturbed and moved.

    Fitness follows the package convention: higher is better unless
    ``maximize=False``; NaN is the worst.

    Args (keyword-only):
        population_size: ``N`` samples per generation, >= 2 (even when antithetic).
        sigma: perturbation scale, > 0.
        optimizer: applied to the mean (default ``adam(0.05)``).
        antithetic: mirrored sampling (default True).
        maximize: higher fitness is better (default) or lower.

    Example:
        >>> es = OpenAIES(population_size=32, sigma=0.1, maximize=False)
        >>> state = es.init(p)                       # p: a single particle
        >>> for _ in range(200):
        ...     state, loss = es.step(state, loss_fn, generator=g)   # loss_fn: pop -> [N]
        >>> state.mean
    """

    antithetic: bool = attrs.field(default=True, validator=_v_flag)
    population_size: int = attrs.field(default=32, validator=_v_size)
    sigma: float = attrs.field(default=0.1, validator=_v_pos)
    optimizer: GradientTransformation = attrs.field(factory=lambda: adam(0.05), validator=_v_opt)
    maximize: bool = attrs.field(default=True, validator=_v_flag)

    def init(self, mean: Particle) -> ESState:
        """The initial distribution, centred on ``mean`` (a single particle)."""
        require_single(mean, "OpenAIES.init")
        device = mean.tensors[0].device if mean.tensors else None
        return ESState(mean, self.optimizer.init(mean), None, mean.clone(), worst_fitness(self.maximize, device), 0)

    def ask(self, state: ESState, *, generator: torch.Generator | None = None) -> tuple[Particle, ESState]:
        """Sample ``N`` members around ``state.mean``.

        Draws one base seed from ``generator``; member ``i``'s noise comes from
        its own stream (module docstring), so ``ShardedES`` draws the same rows alone.

        Returns:
            ``(population, state)``: the members to evaluate and a state that
            remembers their noise and the base seed for ``tell``.
        """
        return self._ask_rows(state, range(self.population_size), generator=generator)

    def _ask_rows(
        self, state: ESState, members: Sequence[int], *, generator: torch.Generator | None
    ) -> tuple[Particle, ESState]:
        """``ask`` for the global members ``members`` only (a block of a sharded run)."""
        check_generator(generator, "OpenAIES.ask")
        base = draw_base_seed(generator)
        noise = member_noise(state.mean, base, members, antithetic=self.antithetic)
        return state.mean + self.sigma * noise, state._replace(noise=noise, seed=base)

    def _member(self, state: ESState, i: int) -> Particle:
        """Member ``i`` of the last ``ask``, redrawn from its stream (a single particle)."""
        return state.mean + self.sigma * member_noise(state.mean, state.seed, [i], antithetic=self.antithetic)[0]

    def tell(self, state: ESState, fitness: Any, *, population: Particle | None = None) -> ESState:
        """Move the mean from the fitness of the last ``ask``'s members.

        Args:
            state: the state returned by ``ask``.
            fitness: ``[N]``, one value per member of that population.
            population: that population, only to record the best member
                (recomputed from the noise when None).

        Raises:
            ValueError: ``ask`` was not called first; ``fitness`` is NaN everywhere.
            PopulationSizeError: ``fitness`` is not of shape ``[N]``.
        """
        self._check_asked(state)
        n = len(state.noise)
        f, score = scores(fitness, n, "OpenAIES.tell", maximize=self.maximize)
        pop = population if population is not None else (lambda i: state.mean + self.sigma * state.noise[i])
        shaped = centered_ranks(f, maximize=self.maximize)
        return self._move(state, f, score, pop, quantized_sum(state.noise, shaped, n))

    def _check_asked(self, state: ESState) -> None:
        if state.noise is None:
            raise ValueError("OpenAIES.tell: expected a state returned by ask() (with noise), got one without noise")

    def _move(
        self, state: ESState, f: torch.Tensor, score: torch.Tensor, pop: Any, qsum: Sequence[torch.Tensor]
    ) -> ESState:
        """Record the best member and move the mean along ``g = sum_i r_i eps_i / (N sigma)``,
        given the fixed-point sums ``qsum`` over all ``N`` members (``quantized_sum``)."""
        n = self.population_size
        best, best_fitness = update_best(state.best, state.best_fitness, pop, f, score, maximize=self.maximize)
        unit = fixed_point_unit(n)
        sp = state.mean.species
        leaves = state.mean.tensors
        # descent direction for the optimiser: -g
        results = [(q.to(torch.float64) * unit * (-1.0 / (n * self.sigma))).to(leaves[i].dtype)
                   for i, q in zip(sp.layout().op, qsum)]
        grads = build(sp, assemble(sp, leaves, results, None))
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.mean)
        mean = apply_updates(state.mean, updates)
        return ESState(mean, opt_state, None, best, best_fitness, state.generation + 1, state.seed)

    def step(
        self, state: ESState, fitness_fn: Callable[[Particle], Any], *, generator: torch.Generator | None = None
    ) -> tuple[ESState, torch.Tensor]:
        """``ask``, evaluate ``fitness_fn(population) -> [N]``, ``tell``; returns the new
        state and the fitness of the members just evaluated."""
        pop, asked = self.ask(state, generator=generator)
        fitness = fitness_fn(pop)
        return self.tell(asked, fitness, population=pop), fitness
