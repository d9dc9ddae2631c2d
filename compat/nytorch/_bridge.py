"""The boundary between the legacy id-keyed world and the functional core.

A legacy species is, for the core, a *flat* species: one parameter named
``p<id>`` per parameter id (ids are given in registration order, so the
core's ``names`` order is the id order), plus the buffers registered through
``NytoModule.register_buffer`` as ``b<module id>_<name>``. The module tree
lives in the legacy ``ModuleMeta`` records; the core keeps what particles
share: parameter slots, shapes, dtypes, configs, and the version chain of
edits that ``migrate`` replays.

A compat particle is its parameter objects (the real ``nn.Parameter``
objects of its modules), in id order; its arithmetic runs on them directly
(``_arith``). A core ``nytorch_fn.Particle`` of them (``particle_of``) is
built only where the core itself must act (``migrate`` of edits that are
not simple ones), and ``touch()`` replays the usual edits on the id-keyed
parameter dict (``Transition``), as ``migrate`` would.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from nytorch_fn import AddBuffer, AddParam, Remove, SetConfig, SetNone, Species, migrate
from nytorch_fn import ParamConfig as CoreConfig
from nytorch_fn import Particle
from nytorch_fn import particle as capture

from .mtype import ParamConfig

_FIELDS = ("operational", "clone")
DEFAULT_CORE = CoreConfig()

_pids: "weakref.WeakKeyDictionary[Species, tuple[int, ...]]" = weakref.WeakKeyDictionary()


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


def particle_of(species: Species, tensors: Sequence[torch.Tensor]) -> Particle:
    """The core particle of ``species`` holding exactly ``tensors`` (in id order, no copy).

    Only for the core's own operations (``migrate``); the legacy layer's
    arithmetic runs on the tensors themselves (``_arith``).

    Raises:
        AssertionError: the number of tensors is not the species' number of parameters.
    """
    names = species.names
    assert len(tensors) == len(names), f"expected {len(names)} parameters for this species, got {len(tensors)}"
    return Particle(species, dict(zip(names, tensors)))


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

    __slots__ = ("old", "new", "pids", "sources", "ndim0", "kept_only", "added", "removed", "appended")

    def __init__(self, old: Species, new: Species) -> None:
        self.old = old
        self.new = new
        self.ndim0 = len(old.shapes[old.names[0]]) if old.names else 0
        self.sources: Any = self._plan(old, new)
        self.pids = None if self.sources is None else pids_of(new)
        self.kept_only = self.sources is not None and all(type(s) is int for s in self.sources)
        # the slots an AddParam fills (the others keep the particle's own objects); None: not known
        self.added = None if self.sources is None else tuple(i for i, s in enumerate(self.sources) if type(s) is not int)
        # the same as edits of an id-keyed dict: drop ``removed``, then append ``appended`` ((id, AddParam)
        # in id order); None when that does not give ``new``'s order (then ``advance`` rebuilds)
        self.removed: Any = None
        self.appended: Any = None
        if self.sources is not None:
            old_ids, new_ids = pids_of(old), self.pids
            kept = [i for i, s in zip(new_ids, self.sources) if type(s) is int]
            added = [(i, s) for i, s in zip(new_ids, self.sources) if type(s) is not int]
            if kept == [old_ids[s] for s in self.sources if type(s) is int] and list(new_ids) == kept + [i for i, _ in added]:
                kept_set = set(kept)
                self.removed = tuple(i for i in old_ids if i not in kept_set)
                self.appended = tuple(added)

    def advance_params(self, params: "dict[int, Any]", grads: Mapping[int, bool]) -> None:
        """Bring an id-keyed parameter dict of a particle of ``old`` to ``new``, in place (``removed`` and ``appended`` known).

        Kept parameters stay the same objects; each added one is a new
        ``nn.Parameter`` holding a fresh copy of the edit's value (what
        ``migrate`` gives), with ``requires_grad`` from ``grads`` (by id,
        True where missing).

        Raises:
            AssertionError: ``params`` does not hold ``old``'s ids.
        """
        assert len(params) == len(self.old.names), (
            f"expected {len(self.old.names)} parameters for this species, got {len(params)}"
        )
        for pid in self.removed:
            del params[pid]
        if self.appended:
            device = next(iter(params.values())).device if params else None
            for pid, edit in self.appended:
                params[pid] = _Parameter(_fresh(edit.value, device), grads.get(pid, True))

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
        return tuple([tensors[src] if type(src) is int else _fresh(src.value, device) for src in sources])


def _fresh(value: torch.Tensor, device: Any) -> torch.Tensor:
    """A new copy of an edit's ``value`` on ``device`` (None: its own), recording no gradient (as ``migrate``)."""
    if value.requires_grad:
        with torch.no_grad():
            return _copy(value, device)
    return _copy(value, device)


def _copy(value: torch.Tensor, device: Any) -> torch.Tensor:
    if device is not None and value.device != device:
        return value.to(device, copy=True)
    return value.clone()


def _Parameter(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:  # noqa: N802 - what nn.Parameter does for a plain tensor
    return _make_subclass(nn.Parameter, t, requires_grad)


_make_subclass = torch.Tensor._make_subclass


# -- configs ---------------------------------------------------------------


def legacy_config(core: CoreConfig) -> ParamConfig:
    """A plain, writable legacy config with the values of a core one (tags become attributes)."""
    cfg = ParamConfig(core.operational, core.clone)
    for key, value in core.tags.items():
        object.__setattr__(cfg, key, value)
    return cfg


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
