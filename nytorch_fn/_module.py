"""The one boundary with ``nn.Module``: capture, forward pass, and back to a module.

``torch.func.functional_call`` wants a plain ``dict`` (it checks
``isinstance(x, dict)``) and temporarily swaps tensors into a module; this is
the only place that builds that dict and calls it.

Thread safety: ``functional_call`` swaps tensors into the module object for
the duration of the call, so eager forward passes from several threads must
not share one. Each thread other than the main one gets its own copy of a
species' skeleton. Under ``torch.compile`` the swap happens only while
tracing (the compiled graph is a pure function of the tensors and never
touches the module), so traced code uses the species' skeleton itself and
the per-thread lookup, which dynamo cannot trace, is not reached.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any, Mapping

import torch
from torch import nn

from . import _skeleton as sk
from ._errors import UnknownNameError, describe
from ._particle import Particle, build, require_single
from ._species import Species, capture

_local = threading.local()


def particle(module: nn.Module, *, copy: bool = True) -> Particle:
    """Capture any ``nn.Module`` as the first particle of a new species.

    The module is not changed and needs no subclassing. Tied weights (one
    Parameter at two paths) become one entry under its first path.

    Args:
        module: the model.
        copy: hold copies of the parameters and buffers (default), so later
            in-place changes to the module (an optimiser step) do not reach
            the particle; ``copy=False`` shares storage, for callers who
            promise not to mutate either side.

    Returns:
        A single particle (tensors detached, ``requires_grad=False``; the
        species remembers each Parameter's ``requires_grad`` for ``to_module``).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``copy`` not a bool.

    Examples:
        >>> p = nf.particle(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        >>> p.species.names
        ('0.weight', '0.bias', '2.weight', '2.bias')
        >>> p.params["0.weight"].shape
        torch.Size([8, 4])
    """
    if not isinstance(copy, bool):
        raise TypeError(f"particle(): copy expects a bool, got {describe(copy)}")
    species, leaves = capture(module, copy=copy)
    return build(species, leaves)


def skeleton_for(species: Species, training: bool | None = None) -> nn.Module:
    """The species' skeleton in the requested mode, private to the calling thread (eager)."""
    base = species.skeleton if training is None else species.moded_skeleton(training)
    if torch.compiler.is_compiling() or threading.current_thread() is threading.main_thread():
        return base
    mine = getattr(_local, "skeletons", None)
    if mine is None:
        mine = _local.skeletons = weakref.WeakKeyDictionary()
    own = mine.get(base)
    if own is None:
        own = mine[base] = copy.deepcopy(base)
    return own


def _buffer_copies(species: Species, buffers: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Copies of every buffer: the species' own, or those in ``buffers`` where given."""
    given: Mapping[str, Any] = {}
    if buffers is not None:
        if not isinstance(buffers, Mapping):
            raise TypeError(f"buffers: expected a mapping name -> tensor, got {describe(buffers)}")
        unknown = [n for n in buffers if n not in species.buffers]
        if unknown:
            raise UnknownNameError(
                f"buffers: expected names among {list(species.buffer_names)}, got unknown {unknown}"
            )
        given = buffers
    copies = {}
    for n, b in species.layout().buffers:
        b = given.get(n, b) if given else b
        if b is not None:
            copies[n] = b.clone()
    return copies


def call(
    species: Species,
    tensors: dict[str, torch.Tensor],
    args: tuple,
    kwargs: dict | None,
    *,
    training: bool | None = None,
) -> Any:
    """``functional_call`` on the species' skeleton with a plain dict of every tensor."""
    return torch.func.functional_call(skeleton_for(species, training), tensors, tuple(args), kwargs or {})


def apply(particle: Particle, *args: Any, **kwargs: Any) -> Any:
    """The forward pass of ``particle`` on ``args``/``kwargs``.

    Runs ``torch.func.functional_call`` on the species' skeleton, in the
    train/eval mode the module had when captured, with copies of the
    species' buffers: the species is never written to (a training-mode
    BatchNorm updates the copies, which are dropped; use
    ``apply_with_buffers`` to get them back). Errors raised by the module's
    own forward pass (an input of the wrong shape) pass through unchanged.

    Args:
        particle: a single particle (``vmap_apply`` runs a population).
        *args: the module's positional inputs.
        **kwargs: the module's keyword inputs.

    Returns:
        Whatever the module's ``forward`` returns for these values.

    Raises:
        TypeError: ``particle`` is not a Particle.
        NotAPopulationError: ``particle`` is a population.

    Examples:
        >>> net = nn.Linear(4, 2)
        >>> p = nf.particle(net)
        >>> x = torch.randn(16, 4)
        >>> torch.equal(nf.apply(p, x), net(x).detach())
        True
    """
    p = require_single(particle, "apply")
    sp = p.species
    tensors = dict(zip(sp.names, p.tensors))
    if sp.buffer_names:
        tensors.update(_buffer_copies(sp, None))
    return call(sp, tensors, args, kwargs)


def apply_with_buffers(
    particle: Particle,
    buffers: Mapping[str, torch.Tensor] | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    training: bool | None = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """The forward pass with explicit buffers in and updated buffers out.

    This is how training-mode running statistics come back: the call works
    on copies of ``buffers`` (default: the species' buffers), and returns them
    after the forward pass has updated them. Nothing passed in is modified.

    Args:
        particle: a single particle.
        buffers: name -> tensor for some or all buffers; the rest come from
            the species.
        args: the forward pass's positional arguments (a tuple).
        kwargs: its keyword arguments (a mapping).
        training: run the module in training (True) or eval (False) mode;
            None keeps the mode it was captured in.

    Returns:
        ``(output, new_buffers)`` with ``new_buffers`` a dict of every buffer.

    Raises:
        TypeError: ``args`` is not a tuple, ``buffers`` not a mapping.
        UnknownNameError: a name in ``buffers`` the species does not have.
        NotAPopulationError: ``particle`` is a population (``vmap_apply_with``).

    Examples:
        >>> p = nf.particle(nn.BatchNorm1d(3))
        >>> x = torch.randn(8, 3) + 5.0
        >>> out, stats = nf.apply_with_buffers(p, None, (x,), training=True)
        >>> out2, stats = nf.apply_with_buffers(p, stats, (x,), training=True)
        >>> int(stats["num_batches_tracked"]), int(p.species.buffers["num_batches_tracked"])
        (2, 0)
    """
    p = require_single(particle, "apply_with_buffers")
    sp = p.species
    if not isinstance(args, tuple):
        raise TypeError(f"apply_with_buffers: args expects a tuple, got {describe(args)}")
    new_buffers = _buffer_copies(sp, buffers)
    tensors = dict(zip(sp.names, p.tensors))
    tensors.update(new_buffers)
    out = call(sp, tensors, args, dict(kwargs or {}), training=training)
    return out, new_buffers


def to_module(particle: Particle) -> nn.Module:
    """A real, independent ``nn.Module`` holding ``particle``'s values.

    Its parameters are fresh ``nn.Parameter`` copies (no storage shared with
    the particle) with the ``requires_grad`` each had when captured; tied
    weights are tied again; buffers are copies of the species' buffers.

    Args:
        particle: a single particle (``to_modules`` converts a population).

    Returns:
        A new module of the captured module's class and structure.

    Raises:
        TypeError: ``particle`` is not a Particle.
        NotAPopulationError: ``particle`` is a population.

    Examples:
        >>> p = nf.particle(nn.Linear(4, 2))
        >>> net = nf.to_module(2 * p)
        >>> torch.equal(net.weight.detach(), 2 * p.params["weight"]), net.weight.requires_grad
        (True, True)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)   # a plain module from here on
    """
    p = require_single(particle, "to_module")
    sp = p.species
    module = copy.deepcopy(sp.skeleton)
    made: dict[str, torch.Tensor | None] = {}
    for name, t in zip(sp.names, p.tensors):
        prefix, leaf = sk.split(name)
        param = nn.Parameter(t.detach().clone(), requires_grad=sp.requires_grad[name])
        setattr(sk.get_module(module, prefix), leaf, param)
        made[name] = param
    for name in sp.buffer_names:
        prefix, leaf = sk.split(name)
        b = sp.buffers[name]
        b = None if b is None else b.detach().clone()
        sk.get_module(module, prefix)._buffers[leaf] = b
        made[name] = b
    for alias, canonical in sp.tied.items():
        prefix, leaf = sk.split(alias)
        owner = sk.get_module(module, prefix)
        if leaf in owner._parameters:
            setattr(owner, leaf, made[canonical])
        else:
            owner._buffers[leaf] = made[canonical]
    return module
