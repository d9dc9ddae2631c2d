"""The boundary between the legacy id-keyed world and the functional core.

A legacy species is, for the core, a *flat* species: one parameter named
``p<id>`` per parameter id (ids are given in registration order, so the
core's ``names`` order is the id order), plus the buffers registered through
``NytoModule.register_buffer`` as ``b<module id>_<name>``. The module tree
lives in the legacy ``ModuleMeta`` records; the core keeps what particles
share: parameter slots, shapes, dtypes, configs, and the version chain of
edits that ``migrate`` replays.

A compat particle's core particle is built on demand from its parameter
objects (the real ``nn.Parameter`` objects of its modules), so in-place
changes to them (an optimiser step) are always seen.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn

from nytorch_fn import AddBuffer, AddParam, Remove, SetConfig, SetNone, Species, migrate
from nytorch_fn import ParamConfig as CoreConfig
from nytorch_fn import Particle
from nytorch_fn import particle as capture

from .mtype import ParamConfig

_FIELDS = ("operational", "clone")
DEFAULT_CORE = CoreConfig()

_specs: "weakref.WeakKeyDictionary[Species, Any]" = weakref.WeakKeyDictionary()
_pids: "weakref.WeakKeyDictionary[Species, tuple[int, ...]]" = weakref.WeakKeyDictionary()
_contexts: "weakref.WeakKeyDictionary[Species, Any]" = weakref.WeakKeyDictionary()


def pname(pid: int) -> str:
    """The core name of parameter id ``pid``."""
    return f"p{pid}"


def bname(mid: int, attr: str) -> str:
    """The core name of buffer ``attr`` of module id ``mid``."""
    return f"b{mid}_{attr}"


def pids_of(species: Species) -> tuple[int, ...]:
    """The parameter ids of ``species``, in its ``names`` order."""
    ids = _pids.get(species)
    if ids is None:
        ids = _pids[species] = tuple(int(n[1:]) for n in species.names)
    return ids


def empty_species() -> Species:
    """A new root species with no parameters."""
    return capture(nn.Module()).species


def _meta_param(shape: Any, dtype: torch.dtype, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device="meta"), requires_grad=requires_grad)


def species_from(
    slots: Iterable[tuple[int, torch.Size, torch.dtype, bool]],
    configs: Mapping[int, Any],
    buffers: Sequence[tuple[str, Any, bool]] = (),
) -> Species:
    """A new root species with the given parameter slots, configs and buffers.

    Args:
        slots: ``(id, shape, dtype, requires_grad)`` in id order.
        configs: id -> core or legacy config (missing ids get the default).
        buffers: ``(core name, tensor, persistent)``.
    """
    flat = nn.Module()
    for pid, shape, dtype, grad in slots:
        flat.register_parameter(pname(pid), _meta_param(shape, dtype, grad))
    species = capture(flat, copy=False).species
    for pid, cfg in configs.items():
        core = to_core(cfg)
        if core != DEFAULT_CORE and pname(pid) in species.config:
            species = species.with_config(
                pname(pid), operational=core.operational, clone=core.clone, tags=dict(core.tags)
            )
    for name, tensor, persistent in buffers:
        species = species.add_buffer(name, tensor, persistent, copy=False)
    return species


def fresh_copy(species: Species) -> Species:
    """A new root species (a new identity, no history) with the same slots, configs and buffers."""
    slots = [
        (pid, species.shapes[n], species.dtypes[n], species.requires_grad[n])
        for pid, n in zip(pids_of(species), species.names)
    ]
    configs = {pid: species.config[n] for pid, n in zip(pids_of(species), species.names)}
    buffers = [(n, species.buffers[n], n not in species.nonpersistent) for n in species.buffer_names]
    return species_from(slots, configs, buffers)


def _spec(species: Species) -> Any:
    spec = _specs.get(species)
    if spec is None:
        metas = {
            n: torch.empty(species.shapes[n], dtype=species.dtypes[n], device="meta") for n in species.names
        }
        spec = _specs[species] = pytree.tree_flatten(Particle(species, metas))[1]
    return spec


_UNFLATTEN = pytree.SUPPORTED_NODES[Particle].unflatten_fn  # the core's registered pytree unflatten


def particle_of(species: Species, tensors: Sequence[torch.Tensor]) -> Particle:
    """The core particle of ``species`` holding exactly ``tensors`` (in id order, no copy).

    Built through the pytree registration, so the tensors are taken as they
    are (a module converted with ``.double()`` still works). The spec of a
    particle has its tensors as direct leaves, so this calls the registered
    unflatten function with the spec's context, which is what
    ``tree_unflatten`` does, without its generic walk over the spec (this
    runs on every particle operation).

    Raises:
        AssertionError: the number of tensors is not the species' number of parameters.
    """
    assert len(tensors) == len(species.names), (
        f"expected {len(species.names)} parameters for this species, got {len(tensors)}"
    )
    return _UNFLATTEN(list(tensors), _context(species))


def _context(species: Species) -> Any:
    ctx = _contexts.get(species)
    if ctx is None:
        spec = _spec(species)
        assert spec.type is Particle and all(c.is_leaf() for c in spec.children()), spec
        ctx = _contexts[species] = spec.context
    return ctx


_EXACT_ALPHA_DTYPES = (torch.float32, torch.float64)


class _Slots:
    """Where a species' operational parameters sit, and what their dtypes allow.

    The core keeps the same facts in its private plan; the compat layer uses
    public ``nytorch_fn`` names only, so it reads them off ``species.config``.
    """

    __slots__ = ("op", "nonop", "floating", "alpha_exact")

    def __init__(self, species: Species) -> None:
        config, dtypes = species.config, species.dtypes
        names = species.names
        self.op = tuple(i for i, n in enumerate(names) if config[n].operational)
        self.nonop = tuple((i, config[n].clone) for i, n in enumerate(names) if not config[n].operational)
        self.floating = all(dtypes[names[i]].is_floating_point for i in self.op)
        # x + d*y as one add(alpha=d) rounds once; with d a power of two, d*y is exact, so that is
        # the legacy library's rounding of x + (d*y). Not so in half precision (computed in float32).
        self.alpha_exact = all(dtypes[names[i]] in _EXACT_ALPHA_DTYPES for i in self.op)


_slots_of: "weakref.WeakKeyDictionary[Species, _Slots]" = weakref.WeakKeyDictionary()


def _slots(species: Species) -> _Slots:
    found = _slots_of.get(species)
    if found is None:
        found = _slots_of[species] = _Slots(species)
    return found


def _power_of_two(c: Any) -> bool:
    if type(c) is int:
        return c != 0 and (abs(c) & (abs(c) - 1)) == 0
    return type(c) is float and c != 0.0 and math.isfinite(c) and abs(math.frexp(c)[0]) == 0.5


def combine(a: Particle, b: Particle, sign: int, *, b_scale: Any = None, writable: bool = False) -> Particle:
    """``a + sign * b`` rounded as the legacy library rounds it, in as few passes as that allows.

    The legacy library builds both operands, then adds: ``c*p + d*q`` rounds
    three times. The core fuses pending scalar factors into one ``lerp`` or
    ``add(alpha=)`` pass instead (one rounding). Here ``a`` is built as the
    legacy library builds it, and ``b``'s factor is only folded into the
    addition when that cannot change a bit. Call without gradients.

    Args:
        a, b: core particles of one species (either may carry a pending factor).
        sign: 1 or -1.
        b_scale: ``(d, q)`` when ``b`` is ``d * q``: added as ``add(alpha=d)``
            when ``d`` is a power of two and the operational tensors are
            float32/float64 (``d*q`` is then exact, except in the subnormal
            range, below 2e-38 in float32); otherwise ``b`` is built first.
        writable: ``a`` belongs to an unseen intermediate: its operational
            tensors may take the result, and ``a`` is returned.
    """
    species = a.species
    slots = _slots(species)
    lead = a.tensors  # builds a pending c*p (as the legacy library does)
    if not slots.floating or not slots.op:
        b.tensors  # noqa: B018 - built first: the core then adds as the legacy library does
        return a + b if sign == 1 else a - b
    if b_scale is not None and slots.alpha_exact and _power_of_two(b_scale[0]):
        alpha, q = sign * b_scale[0], b_scale[1].tensors
    else:
        alpha, q = sign, b.tensors
    op = slots.op
    xs, ys = [lead[i] for i in op], [q[i] for i in op]
    if writable:
        torch._foreach_add_(xs, ys, alpha=alpha)
        return a
    out = list(lead)
    for i, r in zip(op, torch._foreach_add(xs, ys, alpha=alpha)):
        out[i] = r
    for i, clone in slots.nonop:  # taken from the left operand, as the core and the legacy library do
        out[i] = lead[i].clone() if clone else lead[i]
    return particle_of(species, out)


def leaves(p: Particle) -> tuple[torch.Tensor, ...]:
    """The tensors of ``p``, materialised without recording gradients."""
    with torch.no_grad():
        return p.tensors


def bring_to(p: Particle, species: Species) -> Particle:
    """``p`` migrated to ``species`` (itself when already there)."""
    if p.species is species:
        return p
    with torch.no_grad():
        return migrate(p, species)


class Transition:
    """How the parameters of a particle of ``old`` are brought to ``new``, a later version of it.

    Computed once per pair of species (both immutable, held here and checked
    by identity by the caller) and used for every particle that catches up
    across that pair: the edits between them are read once, and each target
    slot is known to be either one of the particle's own tensors (by
    position) or the value of an ``AddParam`` edit, which ``advance`` replays
    (the core's own ``replay``: a fresh copy per particle, as ``migrate``
    does). Holds no particle's tensors.

    Attributes:
        old, new: the two species.
        pids: the parameter ids of ``new``, in its ``names`` order (None
            with ``sources``).
        sources: per slot of ``new`` (in ``new.names`` order): the position
            in ``old.names`` of the tensor kept, or the ``AddParam`` edit
            that makes it; None when the edits are not all simple ones
            (then ``advance`` goes through ``migrate``).
        kept_only: every slot is kept (no parameter was added).
        added: the slots an ``AddParam`` fills (None with ``sources``).
        ndim0: the number of dimensions of ``old``'s first slot (a tensor
            with one more is a population: ``migrate`` handles those).
    """

    __slots__ = ("old", "new", "pids", "sources", "ndim0", "kept_only", "added")

    def __init__(self, old: Species, new: Species) -> None:
        self.old = old
        self.new = new
        self.ndim0 = len(old.shapes[old.names[0]]) if old.names else 0
        self.sources: Any = self._plan(old, new)
        self.pids = None if self.sources is None else pids_of(new)
        self.kept_only = self.sources is not None and all(type(s) is int for s in self.sources)
        # the slots an AddParam fills (the others keep the particle's own objects); None: not known
        self.added = None if self.sources is None else tuple(i for i, s in enumerate(self.sources) if type(s) is not int)

    @staticmethod
    def _plan(old: Species, new: Species) -> Any:
        if old is new or not old.is_ancestor_of(new):
            return None
        slots: dict[str, Any] = {n: i for i, n in enumerate(old.names)}
        for edit in new.edits_since(old):
            kind = type(edit)
            if kind is AddParam:
                slots[edit.name] = edit
            elif kind is Remove or kind is SetNone:
                prefix = edit.name + "."
                for key in [k for k in slots if k == edit.name or k.startswith(prefix)]:
                    del slots[key]
            elif kind is not AddBuffer and kind is not SetConfig:
                return None  # anything else (an added module): migrate replays it
        try:
            return tuple(slots[n] for n in new.names)
        except KeyError:
            return None

    def advance(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``tensors`` (in ``old.names`` order) brought to ``new``: what ``migrate`` gives, without the particles.

        Raises:
            AssertionError: the number of tensors is not ``old``'s number of parameters.
        """
        sources = self.sources
        if sources is None or (tensors and tensors[0].dim() != self.ndim0):
            return leaves(bring_to(particle_of(self.old, tensors), self.new))
        assert len(tensors) == len(self.old.names), (
            f"expected {len(self.old.names)} parameters for this species, got {len(tensors)}"
        )
        if self.kept_only:
            return tuple([tensors[i] for i in sources])
        device = tensors[0].device if tensors else None
        out = []
        for src in sources:
            if type(src) is int:
                out.append(tensors[src])
            else:
                made: dict[str, torch.Tensor] = {}
                if src.value.requires_grad or src.value.device != device:
                    with torch.no_grad():  # as migrate: the copy records no gradient
                        src.replay(made, None, device)
                else:  # a copy of a tensor that needs no gradient records none anyway
                    src.replay(made, None, device)
                out.append(made[src.name])
        return tuple(out)


# -- configs ---------------------------------------------------------------


def to_core(cfg: Any) -> CoreConfig:
    """A core config from a legacy one (user attributes become tags)."""
    if isinstance(cfg, CoreConfig):
        return cfg
    extras = {k: v for k, v in vars(cfg).items() if k not in _FIELDS}
    return CoreConfig(operational=bool(cfg.operational), clone=bool(cfg.clone), tags=extras)


class BoundConfig(ParamConfig):
    """A legacy ``ParamConfig`` that writes every change through to its version.

    Setting ``operational``, ``clone`` or a user attribute on it changes the
    species of the version it came from, so every particle of that version
    sees the change, as in the legacy library.
    """

    __slots__ = ("_owner", "_pid")

    def __init__(self, core: CoreConfig, owner: Any, pid: int) -> None:
        d = self.__dict__
        d["operational"] = core.operational
        d["clone"] = core.clone
        for key, value in core.tags.items():
            d[key] = value
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_pid", pid)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        owner = self._owner
        if owner is not None:
            owner._set_config(self._pid, name, value)

    def copy(self) -> ParamConfig:
        new = ParamConfig(self.operational, self.clone)
        for key, value in self.__dict__.items():
            if key not in _FIELDS:
                object.__setattr__(new, key, value)
        return new

    def __reduce__(self):
        return (_plain_config, (dict(self.__dict__),))


def _plain_config(state: dict) -> ParamConfig:
    new = ParamConfig()
    new.__dict__.update(state)
    return new


def set_config(species: Species, pid: int, name: str, value: Any) -> Species:
    """``species`` with attribute ``name`` of parameter ``pid``'s config set to ``value``."""
    if name in _FIELDS:
        return species.with_config(pname(pid), **{name: bool(value)})
    return species.with_config(pname(pid), tags={name: value})
