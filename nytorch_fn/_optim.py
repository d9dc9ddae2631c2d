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
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple

import torch

from ._errors import describe
from ._particle import Particle, require_floating


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(grads, state, params=None) -> (updates, state)``."""

    init: Callable[[Particle], Any]
    update: Callable[..., tuple[Particle, Any]]


class SGDState(NamedTuple):
    """Momentum buffers (a particle like ``params``), or None without momentum."""

    momentum: Particle | None


class AdamState(NamedTuple):
    """Step count (0-d tensor) and first/second moment estimates (particles like ``params``)."""

    count: torch.Tensor
    mu: Particle
    nu: Particle


def _check_rate(value: Any, name: str, *, low: float = 0.0, high: float = math.inf, closed_high: bool = True) -> None:
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name}: expected a number or a [N] real tensor (one per member), got {describe(value)}")
        if value.numel() and (bool((value < low).any()) or not bool(torch.isfinite(value).all())):
            raise ValueError(f"{name}: expected finite values >= {low}, got {value}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number or a [N] tensor, got {describe(value)}")
    ok = low <= value and (value <= high if closed_high else value < high)
    if not ok or math.isnan(value) or math.isinf(value):
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name}: expected a value in [{low}, {high}{bracket}, got {value!r}")


def _scale(grads: Particle, lr: Any) -> Particle:
    """``-lr * grads``; a ``[N]`` lr scales each member."""
    if isinstance(lr, torch.Tensor) and lr.dim() == 1:
        return grads * (-lr)
    return -lr * grads if not isinstance(lr, torch.Tensor) else grads * (-lr)


def _check_params(params: Any, where: str) -> None:
    if not isinstance(params, Particle):
        raise TypeError(f"{where}: expected a Particle, got {describe(params)}")
    require_floating(params.species, where, "gradient steps need floating parameters, not")


def _check_state(state: Any, cls: type, where: str) -> None:
    if not isinstance(state, cls):
        raise TypeError(f"{where}: expected the {cls.__name__} made by init, got {describe(state)}")


def _gradient(grads: Any, state: Any, state_type: type, params: Any, weight_decay: float, where: str) -> Particle:
    """The checked gradient, with the L2 penalty ``weight_decay * params`` added when asked."""
    if not isinstance(grads, Particle):
        raise TypeError(f"{where}: expected a Particle of gradients, got {describe(grads)}")
    _check_state(state, state_type, where)
    if not weight_decay:
        return grads
    if params is None:
        raise ValueError(f"{where}: weight_decay needs params")
    return grads + weight_decay * params


def _zeros_like(p: Particle) -> Particle:
    return p.map(lambda t, cfg: torch.zeros_like(t))


def sgd(lr: Any, *, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> GradientTransformation:
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD`` computes it.

    Args:
        lr: learning rate, a number > 0 or a ``[N]`` tensor for a population.
        momentum: in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 penalty added to the gradient (needs ``params`` in ``update``).
    """
    _check_rate(lr, "sgd: lr")
    _check_rate(momentum, "sgd: momentum", high=1.0, closed_high=False)
    _check_rate(weight_decay, "sgd: weight_decay")
    if nesterov and momentum == 0:
        raise ValueError("sgd: nesterov=True expects momentum > 0, got momentum=0")

    def init(params: Particle) -> SGDState:
        _check_params(params, "sgd.init")
        return SGDState(_zeros_like(params) if momentum else None)

    def update(grads: Particle, state: SGDState, params: Particle | None = None) -> tuple[Particle, SGDState]:
        g = _gradient(grads, state, SGDState, params, weight_decay, "sgd.update")
        if momentum:
            buf = momentum * state.momentum + g
            g = g + momentum * buf if nesterov else buf
            return _scale(g, lr), SGDState(buf)
        return _scale(g, lr), state

    return GradientTransformation(init, update)


def adam(
    lr: Any, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0
) -> GradientTransformation:
    """Adam, as ``torch.optim.Adam`` computes it (bias-corrected moments).

    Args:
        lr: learning rate, a number > 0 or a ``[N]`` tensor for a population.
        b1, b2: moment decay rates in [0, 1).
        eps: added to the denominator, >= 0 (as torch.optim.Adam).
        weight_decay: L2 penalty added to the gradient (needs ``params`` in ``update``).
    """
    _check_rate(lr, "adam: lr")
    _check_rate(b1, "adam: b1", high=1.0, closed_high=False)
    _check_rate(b2, "adam: b2", high=1.0, closed_high=False)
    _check_rate(eps, "adam: eps")
    _check_rate(weight_decay, "adam: weight_decay")

    def init(params: Particle) -> AdamState:
        _check_params(params, "adam.init")
        zeros = _zeros_like(params)
        device = params.tensors[0].device if params.tensors else None
        return AdamState(torch.zeros((), dtype=torch.int64, device=device), zeros, zeros)

    def update(grads: Particle, state: AdamState, params: Particle | None = None) -> tuple[Particle, AdamState]:
        g = _gradient(grads, state, AdamState, params, weight_decay, "adam.update")
        count = state.count + 1
        mu = b1 * state.mu + (1 - b1) * g
        nu = b2 * state.nu + (1 - b2) * (g * g)
        t = count.to(torch.float64)
        bc1 = 1 - torch.pow(torch.tensor(b1, dtype=torch.float64, device=t.device), t)
        bc2 = 1 - torch.pow(torch.tensor(b2, dtype=torch.float64, device=t.device), t)
        denom = nu.map(lambda v, cfg: (v.sqrt() / bc2.sqrt().to(v.dtype)) + eps if cfg.operational else v)
        direction = mu.zip_with(denom, lambda m, d, cfg: m / (bc1.to(m.dtype) * d) if cfg.operational else m)
        return _scale(direction, lr), AdamState(count, mu, nu)

    return GradientTransformation(init, update)


def apply_updates(params: Particle, updates: Particle) -> Particle:
    """``params + updates`` (non-operational parameters kept from ``params``).

    Wrap ``params`` in ``donate`` to write the step into its storage.
    """
    if not isinstance(params, Particle) or not isinstance(updates, Particle):
        raise TypeError(
            f"apply_updates: expected two Particles, got {describe(params)} and {describe(updates)}"
        )
    return params + updates
