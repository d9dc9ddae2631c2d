"""Functional optimisers over particles and populations (optax-style pairs of pure functions).

An optimiser is ``GradientTransformation(init, update)``::

    opt = sgd(0.1, momentum=0.9)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)

``params`` may be a single particle or a population; a learning rate may be
a Python number or a ``[N]`` tensor (one per member of a population).
States are NamedTuples of particles and tensors (pytrees). Non-operational
parameters are never changed: ``apply_updates`` takes them from ``params``.

In-place at a named boundary: ``update(..., donate=True)`` may write the new
state into the old state's buffers, and ``apply_updates(params, updates,
donate=True)`` the new parameters into ``params``' (as JAX's
``donate_argnums``); the donated object must not be used afterwards. The
values are the same bits with or without donation.

Numerics: ``adam`` computes what ``torch.optim.Adam`` (single-tensor
implementation) computes, operation for operation (``lerp`` for the first
moment, ``mul`` + ``addcmul`` for the second, the bias corrections as the
Python floats torch forms, ``(-step_size * mu) / denom`` then ``params +
updates`` as ``addcdiv`` does), so on float32/float64 CPU tensors its steps
equal torch's bit for bit (under ``torch.compile`` the bias corrections are
float64 tensors: see ``_adam_scalars``).
``sgd`` forms ``-lr * g`` and adds it, where ``torch.optim.SGD`` fuses the
multiply into the add (``add_(g, alpha=-lr)``): the two can differ in the
last bit.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, cast

import torch

from ._checks import require_floating
from ._errors import describe
from ._particle import (
    Particle,
    _foreach_ok,
    assemble,
    build,
    check_donation,
    lerp,
    lincomb,
    operational,
    transforms_active,
    writable,
)


class GradientTransformation(NamedTuple):
    """An optimiser: ``init(params) -> state`` and ``update(grads, state, params=None) -> (updates, state)``.

    As optax's: two pure functions, the state a NamedTuple of particles and
    tensors (a pytree that ``nytorch_fn.checkpoint`` saves).

    Attributes:
        init: ``init(params)``: the initial state for a particle or population.
        update: ``update(grads, state, params=None, *, donate=False)``: the
            updates (a particle like ``grads``, to add with ``apply_updates``)
            and the new state.
    """

    init: Callable[[Particle], Any]
    update: Callable[..., tuple[Particle, Any]]


class SGDState(NamedTuple):
    """The state of ``sgd``: momentum buffers, or None without momentum.

    Attributes:
        momentum: a particle like ``params`` (``[N, ...]`` for a population),
            or None when ``momentum=0``.
    """

    momentum: Particle | None


class AdamState(NamedTuple):
    """The state of ``adam``: step count and first/second moment estimates.

    Attributes:
        count: the number of steps taken, a 0-d int64 tensor.
        mu: the first moment, a particle like ``params``.
        nu: the second moment, a particle like ``params``.
    """

    # optax's name for the step count; it shadows tuple.count on purpose
    count: torch.Tensor  # type: ignore[assignment]
    mu: Particle
    nu: Particle


class ClipUpState(NamedTuple):
    """The state of ``clipup``: the velocity.

    Attributes:
        velocity: a particle like ``params``.
    """

    velocity: Particle


def _check_rate(value: Any, name: str, *, low: float = 0.0, high: float = math.inf, closed_high: bool = True) -> None:
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name}: expected a number or a [N] real tensor (one per member), got {describe(value)}")
        if value.numel() and (bool((value < low).any()) or not bool(torch.isfinite(value).all())):
            raise ValueError(f"{name}: expected finite values >= {low}, got {value}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number or a [N] tensor, got {describe(value)}")
    real = cast(float, value)  # a numbers.Real, compared as it is
    ok = low <= real and (real <= high if closed_high else real < high)
    if not ok or math.isnan(value) or math.isinf(value):
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name}: expected a value in [{low}, {high}{bracket}, got {value!r}")


def _scale(grads: Particle, lr: Any) -> Particle:
    """``-lr * grads``; a ``[N]`` lr scales each member."""
    return grads * (-lr)


def _check_params(params: Any, where: str) -> None:
    if not isinstance(params, Particle):
        raise TypeError(f"{where}: expected a Particle, got {describe(params)}")
    require_floating(params.species, where, "gradient steps need floating parameters, not")


def _check_state(state: Any, cls: type, where: str) -> None:
    if not isinstance(state, cls):
        raise TypeError(f"{where}: expected the {cls.__name__} made by init, got {describe(state)}")


def _check_donate(donate: Any, where: str) -> None:
    if not isinstance(donate, bool):
        raise TypeError(f"{where}: donate expects a bool, got {describe(donate)}")


def _per_tensor(fn: Callable[..., torch.Tensor], lead: Particle, *others: Particle) -> Particle:
    """``fn(x, *ys)`` on the operational tensors; the others from ``lead`` as their config says."""
    columns = [operational(p) for p in (lead, *others)]
    results = [fn(*ts) for ts in zip(*columns)]
    return build(lead.species, assemble(lead.species, lead.tensors, results, None))


def _in_place(state: Particle, others: list[Particle], donate: bool, where: str) -> bool:
    """Whether ``state``'s operational tensors may take the new values (donation granted and possible)."""
    if not donate:
        return False
    check_donation(state, others, where)
    xs = operational(state)
    return writable(xs, None, [operational(o) for o in others])


def _gradient(grads: Any, state: Any, state_type: type, params: Any, weight_decay: float, where: str) -> Particle:
    """The checked gradient, with the L2 penalty added as torch.optim does (``g.add(p, alpha=wd)``)."""
    if not isinstance(grads, Particle):
        raise TypeError(f"{where}: expected a Particle of gradients, got {describe(grads)}")
    _check_state(state, state_type, where)
    if not weight_decay:
        return grads
    if params is None:
        raise ValueError(f"{where}: weight_decay needs params")
    return _per_tensor(lambda g, p: g.add(p, alpha=weight_decay), grads, params)


def _adam_scalars(count: torch.Tensor, lr: Any, b1: float, b2: float) -> tuple[Any, Any]:
    """``(step_size, sqrt(1 - b2**t))`` for step ``t = count``, as ``torch.optim.Adam`` forms them.

    Eagerly, with the count on the CPU, these are Python floats computed as
    torch's Adam computes them (``step = count.item()``, ``1 - b**step``,
    ``lr / bc1``, ``bc2 ** 0.5``): the same bits, and no tensor operation per
    step. Under ``torch.compile`` or a ``torch.func`` transform, or with the
    count on an accelerator, they are 0-d float64 tensors (``torch.pow``,
    ``sqrt``: no host synchronisation, no graph break). The powers agree bit
    for bit; the square root can differ from ``** 0.5`` in the last bit of the
    float64 scalar (about 1 step in 1,000), which float32 parameters, rounding
    the scalar to float32, practically never see.
    """
    if count.device.type == "cpu" and not torch.compiler.is_compiling() and not transforms_active():
        step = float(int(count))
        bc1 = 1 - b1 ** step
        bc2_sqrt = (1 - b2 ** step) ** 0.5
        if isinstance(lr, torch.Tensor):
            return torch.div(lr.to(torch.float64), bc1), bc2_sqrt
        return float(lr) / bc1, bc2_sqrt
    t = count.to(torch.float64)
    bc1_t = 1 - torch.pow(b1, t)
    rate = lr.to(torch.float64) if isinstance(lr, torch.Tensor) else torch.tensor(lr, dtype=torch.float64)
    return torch.div(rate.to(t.device), bc1_t), (1 - torch.pow(b2, t)).sqrt()


def _zeros_like(p: Particle) -> Particle:
    return p.map(lambda t, cfg: torch.zeros_like(t))


def sgd(lr: Any, *, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> GradientTransformation:
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD`` computes it.

    The update is ``-lr * g`` with ``g`` the gradient (plus ``weight_decay *
    params``), or with momentum ``buf = momentum * buf + g`` and ``g = buf``
    (Nesterov: ``g + momentum * buf``).

    Args:
        lr: learning rate, a number > 0 or a ``[N]`` tensor for a population.
        momentum: in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient (needs ``params`` in ``update``).

    Returns:
        ``GradientTransformation(init, update)``; ``update(grads, state,
        params=None, *, donate=False)`` returns ``(updates, state)``, and with
        ``donate=True`` may write the new momentum into the old state's buffers.

    Raises:
        ValueError: a rate out of range or NaN, a ``[N]`` rate that is not a
            real vector, ``nesterov`` without momentum.
        TypeError: a rate that is not a number or tensor.

    Examples:
        >>> from nytorch_fn import optim
        >>> pop = nf.init_population(nn.Linear(3, 1), 4, generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> loss = lambda member: (nf.apply(member, x) - y).pow(2).mean()
        >>> grads = torch.func.vmap(torch.func.grad(loss))(pop)       # [N, ...] per-member gradients
        >>> opt = optim.sgd(torch.tensor([0.1, 0.01, 0.001, 0.0]), momentum=0.9)   # one rate per member
        >>> updates, state = opt.update(grads, opt.init(pop))
        >>> new = optim.apply_updates(pop, updates)
        >>> torch.equal(new.params["bias"][3], pop.params["bias"][3])                # lr 0 leaves member 3
        True
    """
    _check_rate(lr, "sgd: lr")
    _check_rate(momentum, "sgd: momentum", high=1.0, closed_high=False)
    _check_rate(weight_decay, "sgd: weight_decay")
    if nesterov and momentum == 0:
        raise ValueError("sgd: nesterov=True expects momentum > 0, got momentum=0")

    def init(params: Particle) -> SGDState:
        _check_params(params, "sgd.init")
        return SGDState(_zeros_like(params) if momentum else None)

    def update(
        grads: Particle, state: SGDState, params: Particle | None = None, *, donate: bool = False
    ) -> tuple[Particle, SGDState]:
        _check_donate(donate, "sgd.update")
        g = _gradient(grads, state, SGDState, params, weight_decay, "sgd.update")
        if momentum:
            held = cast(Particle, state.momentum)  # init made it (momentum > 0)
            if _in_place(held, [g], donate, "sgd.update"):
                buf = _per_tensor(lambda b, gg: b.mul_(momentum).add_(gg), held, g)
            else:
                buf = momentum * held + g
            g = g + momentum * buf if nesterov else buf
            return _scale(g, lr), SGDState(buf)
        return _scale(g, lr), state

    return GradientTransformation(init, update)


def adam(
    lr: Any, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0
) -> GradientTransformation:
    """Adam, as ``torch.optim.Adam`` computes it (bias-corrected moments).

    Per tensor, with step count ``t``: ``mu = lerp(mu, g, 1 - b1)``,
    ``nu = nu * b2 + (1 - b2) * g * g`` (``addcmul``), ``denom =
    sqrt(nu) / sqrt(1 - b2**t) + eps`` and the update ``(-lr / (1 - b1**t)) *
    mu / denom``, the operations ``torch.optim.Adam`` runs, in its order.

    Args:
        lr: learning rate, a number > 0 or a ``[N]`` tensor for a population.
        b1: the first moment's decay rate, in [0, 1).
        b2: the second moment's decay rate, in [0, 1).
        eps: added to the denominator, >= 0 (as torch.optim.Adam).
        weight_decay: L2 penalty added to the gradient (needs ``params`` in ``update``).

    Returns:
        ``GradientTransformation(init, update)``; ``update(grads, state,
        params=None, *, donate=False)`` returns ``(updates, state)``, and with
        ``donate=True`` may write the new moments into the old state's buffers.

    Raises:
        ValueError: a rate out of range or NaN.
        TypeError: a rate that is not a number or tensor.

    Examples:
        >>> from nytorch_fn import optim
        >>> net = nn.Linear(3, 1)
        >>> p = nf.particle(net)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> loss = lambda w: (nf.apply(w, x) - y).pow(2).mean()
        >>> opt = optim.adam(1e-2)
        >>> updates, state = opt.update(torch.func.grad(loss)(p), opt.init(p))
        >>> p = optim.apply_updates(p, updates)
        >>> reference = torch.optim.Adam(net.parameters(), lr=1e-2)
        >>> (net(x) - y).pow(2).mean().backward(); reference.step()
        >>> torch.equal(p.params["weight"], net.weight.detach())              # torch's Adam, bit for bit
        True
    """
    _check_rate(lr, "adam: lr")
    _check_rate(b1, "adam: b1", high=1.0, closed_high=False)
    _check_rate(b2, "adam: b2", high=1.0, closed_high=False)
    _check_rate(eps, "adam: eps")
    _check_rate(weight_decay, "adam: weight_decay")

    def init(params: Particle) -> AdamState:
        _check_params(params, "adam.init")
        device = params.tensors[0].device if params.tensors else None
        # two buffers, never one shared: a donated update writes each in place
        return AdamState(torch.zeros((), dtype=torch.int64, device=device), _zeros_like(params), _zeros_like(params))

    def update(
        grads: Particle, state: AdamState, params: Particle | None = None, *, donate: bool = False
    ) -> tuple[Particle, AdamState]:
        _check_donate(donate, "adam.update")
        g = _gradient(grads, state, AdamState, params, weight_decay, "adam.update")
        count = state.count + 1
        step_size, bc2_sqrt = _adam_scalars(count, lr, b1, b2)

        # torch.optim.Adam's second moment (in place, or into a new tensor) and denominator
        def second_(v: torch.Tensor, gg: torch.Tensor) -> torch.Tensor:
            return v.mul_(b2).addcmul_(gg, gg, value=1 - b2)

        def second(v: torch.Tensor, gg: torch.Tensor) -> torch.Tensor:
            return torch.addcmul(v * b2, gg, gg, value=1 - b2)

        def denom_of(v: torch.Tensor) -> torch.Tensor:
            return (v.sqrt() / bc2_sqrt).add_(eps)

        in_place = _in_place(state.mu, [g, state.nu], donate, "adam.update") and _in_place(
            state.nu, [g, state.mu], donate, "adam.update"
        )
        sp = state.mu.species
        if (
            isinstance(step_size, float) and g.species is sp and state.nu.species is sp
            and g.population_size == state.mu.population_size
        ):
            # the same operations per tensor, without a particle per intermediate
            ms, vs, gs = operational(state.mu), operational(state.nu), operational(g)
            if in_place:
                if _foreach_ok(ms):
                    torch._foreach_lerp_(ms, gs, 1 - b1)
                else:
                    for m, gg in zip(ms, gs):
                        m.lerp_(gg, 1 - b1)
                nus = [second_(v, gg) for v, gg in zip(vs, gs)]
                mus = ms
            else:
                mus = [torch.lerp(m, gg, 1 - b1) for m, gg in zip(ms, gs)]
                nus = [second(v, gg) for v, gg in zip(vs, gs)]
            ups = [torch.div(m * (-step_size), denom_of(v)) for m, v in zip(mus, nus)]
            mu = build(sp, assemble(sp, state.mu.tensors, mus, None))
            nu = build(sp, assemble(sp, state.nu.tensors, nus, None))
            return build(sp, assemble(sp, state.mu.tensors, ups, None)), AdamState(count, mu, nu)
        mu = lerp(state.mu, g, 1 - b1, donate=in_place)
        nu = _per_tensor(second_ if in_place else second, state.nu, g)
        denom = nu.map(lambda v, cfg: denom_of(v) if cfg.operational else v)
        updates = _per_tensor(torch.div, mu * (-step_size), denom)
        return updates, AdamState(count, mu, nu)

    return GradientTransformation(init, update)


def _norms(p: Particle) -> torch.Tensor:
    """The Euclidean norm of the operational values: a 0-d float64 tensor for a single particle,
    ``[N]`` (one per member) for a population. Each tensor's norm is computed in its own dtype,
    then the squares are added in float64."""
    xs = operational(p)
    n = p.population_size
    if not xs:
        device = p.tensors[0].device if p.tensors else None
        return torch.zeros(() if n is None else (n,), dtype=torch.float64, device=device)
    if n is None:
        parts = torch._foreach_norm(xs) if xs[0].device.type == "cpu" else [torch.linalg.vector_norm(x) for x in xs]
        sq = torch.stack([t.to(torch.float64) for t in parts]).square().sum()
    else:
        sq = sum(torch.linalg.vector_norm(x.reshape(n, -1), dim=1).to(torch.float64).square() for x in xs)
    return sq.sqrt()


def _member_rate(value: Any, device: Any) -> torch.Tensor:
    return value.to(device=device, dtype=torch.float64) if isinstance(value, torch.Tensor) else torch.tensor(
        float(value), dtype=torch.float64, device=device
    )


def clipup(lr: Any, *, max_speed: Any = None, momentum: float = 0.9) -> GradientTransformation:
    """ClipUp (Toklu et al. 2020): normalised gradient, heavy-ball momentum, clipped speed.

    Per step, with ``g`` the gradient (of a loss: the optimiser descends) and
    ``|.|`` the Euclidean norm over all operational values (one norm per
    member for a population)::

        v = momentum * v + lr * g / |g|          (g = 0 gives no push: 0 / 0 is taken as 0)
        v = v * min(1, max_speed / |v|)          (the speed never exceeds max_speed)
        updates = -v

    Numerics: norms are computed per tensor in its dtype and combined in
    float64; ``lr / |g|`` and the clipping factor are float64 numbers cast to
    each parameter's dtype; the velocity is formed with ``nf.lincomb`` (one
    buffer, ``mul`` then ``addcmul``).

    Args:
        lr: the step size, a number > 0 or a ``[N]`` tensor (one per member).
        max_speed: the largest step, > 0 (a number or a ``[N]`` tensor);
            None gives ``2 * lr``, the authors' recommended ratio.
        momentum: in [0, 1).

    Returns:
        ``GradientTransformation(init, update)``; ``update(grads, state,
        params=None, *, donate=False)`` returns ``(updates, state)``, and with
        ``donate=True`` may write the new velocity into the old state's buffers.

    Examples:
        >>> params = nf.particle(nn.Linear(2, 1)).map(lambda t, cfg: torch.ones_like(t))
        >>> grads = params * 10.0                   # |g| = 10 sqrt(3): only its direction counts
        >>> opt = clipup(0.15)                      # max_speed 0.3
        >>> updates, state = opt.update(grads, opt.init(params))
        >>> round(float(sum(t.square().sum() for t in updates.tensors).sqrt()), 4)   # the first step: lr
        0.15
        >>> updates, state = opt.update(grads, state)   # 0.9 * 0.15 + 0.15 = 0.285 < 0.3
        >>> params = apply_updates(params, updates)
        >>> round(float(sum(t.square().sum() for t in state.velocity.tensors).sqrt()), 4)
        0.285
    """
    _check_rate(lr, "clipup: lr")
    if max_speed is None:
        max_speed = lr * 2
    else:
        _check_rate(max_speed, "clipup: max_speed")
    if not isinstance(max_speed, torch.Tensor) and max_speed <= 0:
        raise ValueError(f"clipup: max_speed expects a value > 0, got {max_speed!r}")
    _check_rate(momentum, "clipup: momentum", high=1.0, closed_high=False)

    def init(params: Particle) -> ClipUpState:
        _check_params(params, "clipup.init")
        return ClipUpState(_zeros_like(params))

    def update(
        grads: Particle, state: ClipUpState, params: Particle | None = None, *, donate: bool = False
    ) -> tuple[Particle, ClipUpState]:
        _check_donate(donate, "clipup.update")
        g = _gradient(grads, state, ClipUpState, params, 0.0, "clipup.update")
        gnorm = _norms(g)
        device = gnorm.device
        rate, speed = _member_rate(lr, device), _member_rate(max_speed, device)
        push = torch.where(gnorm > 0, rate / gnorm, torch.zeros_like(gnorm))
        in_place = _in_place(state.velocity, [g], donate, "clipup.update")
        v = lincomb([momentum, push], [state.velocity, g], donate=in_place)
        vnorm = _norms(v)
        factor = torch.where(vnorm > speed, speed / vnorm, torch.ones_like(vnorm))
        # v is this call's own buffer (or the donated velocity): scale it in place
        v = lincomb([factor], [v], donate=True)
        return -v, ClipUpState(v)

    return GradientTransformation(init, update)


def apply_updates(params: Particle, updates: Particle, *, donate: bool = False) -> Particle:
    """``params + updates`` (non-operational parameters kept from ``params``).

    Args:
        params: a particle or population.
        updates: a particle or population of the same species (from an
            optimiser's ``update``).
        donate: allow writing the new parameters into ``params``' tensors
            (``params``, and every view of it, must not be used afterwards);
            the call allocates where that is impossible (autograd, transforms,
            broadcasting). The values are the same either way.

    Returns:
        ``params + updates`` for the operational parameters; the others as in ``params``.

    Raises:
        TypeError: not two particles.
        SpeciesMismatchError: particles of different species.
        ValueError: ``donate=True`` and ``updates`` shares storage with ``params``.

    Examples:
        >>> from nytorch_fn import optim
        >>> params = nf.particle(nn.Linear(3, 1))
        >>> updates = params.map(lambda t, cfg: torch.full_like(t, 0.5))
        >>> stepped = optim.apply_updates(params, updates)
        >>> params = optim.apply_updates(params, updates, donate=True)   # in place, in a training loop
        >>> torch.equal(params.params["weight"], stepped.params["weight"])
        True
    """
    if not isinstance(params, Particle) or not isinstance(updates, Particle):
        raise TypeError(
            f"apply_updates: expected two Particles, got {describe(params)} and {describe(updates)}"
        )
    _check_donate(donate, "apply_updates")
    if donate and params.species is updates.species and params.population_size == updates.population_size:
        if _in_place(params, [updates], donate, "apply_updates"):
            xs, us = operational(params), operational(updates)
            if xs and xs[0].device.type == "cpu":
                torch._foreach_add_(xs, us)
            else:
                for x, u in zip(xs, us):
                    x.add_(u)
            return build(params.species, assemble(params.species, params.tensors, xs, None))
    elif donate:
        check_donation(params, [updates], "apply_updates")
    return params + updates
