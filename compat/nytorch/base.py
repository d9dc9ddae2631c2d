"""Version data, particle data and the base class of NytoModule.

``VersionDataImp`` is one version of a species: the module tree as
``ModuleMeta`` records in a pyrsistent map keyed by module id, and a core
``nytorch_fn.Species`` (a flat one, see ``_bridge``) holding the parameter
slots, their configs and the edit history. ``ParticleDataImp`` is one
particle: its modules and its parameter objects, keyed by id.

Reference cycles: a root NytoModule holds its particle kernel strongly, the
kernel holds the root *weakly* and the other modules strongly, and non-root
NytoModules hold the kernel weakly. So a particle is freed by reference
counting as soon as its root module is unreachable, with no ``gc.collect()``.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterator, Optional

from pyrsistent import PMap, pmap
from torch import nn

from . import _bridge as br
from ._arith import Plan, plan_of
from .kernel import ParticleData, ParticleKernel, VersionData, VersionKernel
from .mtype import (
    ModuleDict,
    ModuleID,
    ModuleMeta,
    ParamConfig,
    ParamDict,
    ParamID,
    ROOT_MODULE_ID,
)
from .utils import copy_modules, make_modules_ref

VersionKernelImp = VersionKernel["VersionDataImp", "ParticleDataImp"]
ParticleKernelImp = ParticleKernel["VersionDataImp", "ParticleDataImp"]

_WEAK = object()  # marks the weakly held root in ParticleDataImp._modules


def _legacy_copy(cfg: Any) -> ParamConfig:
    """A writable legacy copy of a config (legacy or core), user attributes included."""
    if isinstance(cfg, ParamConfig):
        return cfg.copy()
    return br.legacy_config(cfg)


def create_new_group(ref: nn.Module) -> ParticleKernelImp:
    """A new species (version kernel) and its first particle (particle kernel) for ``ref``.

    Args:
        ref: the root module; it must have no parameters and no submodules yet.

    Raises:
        AssertionError: ``ref`` already has parameters or submodules.
    """
    assert len(list(ref.children())) == 0, "create_new_group: the module must have no submodules yet"
    assert len(list(ref.parameters())) == 0, "create_new_group: the module must have no parameters yet"
    vdata = VersionDataImp(
        OrderedDict([(ROOT_MODULE_ID, ModuleMeta(OrderedDict(), OrderedDict()))]),
        OrderedDict(),
        species=br.empty_species(),
    )
    return ParticleKernel(VersionKernel(vdata), ParticleDataImp(OrderedDict([(ROOT_MODULE_ID, ref)]), OrderedDict()))


def _get_kernel(module: "NytoModuleBase") -> Optional[ParticleKernelImp]:
    ref = module.__dict__.get("_pk")
    if type(ref) is weakref.ref:
        return ref()
    return ref


def _set_kernel(module: "NytoModuleBase", kernel: Optional[ParticleKernelImp]) -> None:
    state = module.__dict__
    if kernel is None or state.get("_module_id", ROOT_MODULE_ID) == ROOT_MODULE_ID:
        state["_pk"] = kernel
    else:
        state["_pk"] = weakref.ref(kernel)


class NytoModuleBase(nn.Module):
    """Base class of NytoModule: an ``nn.Module`` that is a module of a particle.

    Attributes:
        _module_id: the module's id within its particle (0 for the root).
        _particle_kernel: the particle's kernel; None while a ParticleModule
            wraps the particle (see ``ParticleModule.clear_kernel_ref``).
    """

    _module_id: ModuleID

    def __init__(self) -> None:
        super().__init__()
        self.__dict__["_module_id"] = ROOT_MODULE_ID
        kernel = create_new_group(self)
        kernel.data._weaken_root()

    _particle_kernel = property(_get_kernel, _set_kernel)

    @property
    def _version_kernel(self) -> VersionKernelImp:
        """The version the particle is at.

        Raises:
            AssertionError: the module has no particle kernel.
        """
        kernel = _get_kernel(self)
        assert kernel is not None, _NO_KERNEL
        return kernel.version

    @property
    def is_root(self) -> bool:
        """True for the root module of its particle."""
        return self._module_id == ROOT_MODULE_ID

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pk"] = _get_kernel(self)
        state.pop("_nyto_pin", None)
        return state

    def __setstate__(self, state: dict) -> None:
        kernel = state.pop("_pk", None)
        super().__setstate__(state)
        _set_kernel(self, kernel)


_NO_KERNEL = (
    "this NytoModule has no particle kernel: it is wrapped by a ParticleModule "
    "(use GetNytoModule or restore_kernel_ref()), or its root module was freed"
)


# ---------------------------------------------------------------------------
# read-only ordered views
# ---------------------------------------------------------------------------


_sorted_keys: dict = {}  # id(pmap) -> (pmap, its keys sorted): metas are read on every particle op


class _MetaView(Mapping):
    """module id -> ModuleMeta, in id order (read-only)."""

    __slots__ = ("_map", "_keys")

    def __init__(self, m: PMap) -> None:
        self._map = m
        keys = _sorted_keys.get(id(m))
        if keys is None or keys[0] is not m:
            keys = (m, sorted(m.keys()))
            if len(_sorted_keys) > 256:
                _sorted_keys.clear()
            _sorted_keys[id(m)] = keys
        self._keys = keys[1]

    def __getitem__(self, mid: ModuleID) -> ModuleMeta:
        return self._map[mid]

    def __iter__(self) -> Iterator[ModuleID]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, mid: object) -> bool:
        return mid in self._map

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}: {self._map[k]!r}" for k in self._keys) + "}"


class _ConfigView(Mapping):
    """param id -> ParamConfig, in id order; changing a config changes its version."""

    __slots__ = ("_owner", "_species", "_cache")

    def __init__(self, owner: "VersionDataImp") -> None:
        self._owner = owner
        self._species = owner.species
        self._cache: dict = {}

    def __getitem__(self, pid: ParamID) -> br.ParamConfig:
        cfg = self._cache.get(pid)
        if cfg is None:
            core = self._species.config.get(br.pname(pid)) if isinstance(pid, int) else None
            if core is None:
                raise KeyError(pid)
            cfg = self._cache[pid] = br.BoundConfig(core, self._owner, pid)
        return cfg

    def __iter__(self) -> Iterator[ParamID]:
        return iter(br.pids_of(self._species))

    def __len__(self) -> int:
        return len(self._species.names)

    def __contains__(self, pid: object) -> bool:
        return isinstance(pid, int) and br.pname(pid) in self._species.config

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k}: {self[k]!r}" for k in self) + "}"


class _ModulesView(OrderedDict):
    """The modules of a particle whose root is held weakly (a snapshot)."""


# ---------------------------------------------------------------------------
# build plans
# ---------------------------------------------------------------------------


class _BuildPlan:
    """How the modules of a particle are wired in one version: computed once, used on every particle op.

    Derived from a ``_meta`` map alone, which it holds and is checked
    against by identity (``plan.meta is vdata._meta``): every edit of a
    version's module tree replaces the map (pyrsistent, immutable; the
    ``ModuleMeta`` records in it are never changed in place), so a plan can
    never serve another tree. It holds no parameter, module or value.

    Attributes:
        meta: the map it was made from.
        mids: the module ids in id order.
        wiring: per module, in id order: ``(mid, ((name, submodule id or
            None), ...), ((name, parameter id or None), ...))``.
    """

    __slots__ = ("meta", "mids", "wiring")

    def __init__(self, meta: PMap) -> None:
        self.meta = meta
        self.mids = tuple(sorted(meta.keys()))
        self.wiring = tuple(
            (mid, tuple(meta[mid].sub_modules.items()), tuple(meta[mid].sub_params.items())) for mid in self.mids
        )


# ---------------------------------------------------------------------------
# VersionDataImp
# ---------------------------------------------------------------------------


class VersionDataImp(VersionData["VersionDataImp", "ParticleDataImp"]):
    """The metadata of one version of a species.

    Args:
        meta: module id -> ``ModuleMeta`` (which attributes of each module
            hold which submodule and parameter ids).
        config: parameter id -> ``ParamConfig``.
        species: the core species of this version (built from ``config`` and
            the first particle's parameters when omitted).

    Attributes:
        meta: module id -> ``ModuleMeta``, a read-only mapping in id order
            over a pyrsistent map.
        config: parameter id -> ``ParamConfig``, in id order; setting an
            attribute of one of them changes the config for every particle
            of this version.
        species: the ``nytorch_fn.Species`` of this version.
    """

    __slots__ = ("_meta", "_species", "_pending", "_plan", "_arith")

    def __init__(self, meta: Mapping, config: Mapping, *, species: Any = None) -> None:
        self._meta = pmap({int(k): v for k, v in meta.items()})
        self._pending: Optional[OrderedDict] = None
        self._plan: Optional[_BuildPlan] = None
        self._arith: Optional[Plan] = None
        if species is None:
            if len(config):
                # legacy configs, kept as given (writable) until the first particle enters
                self._pending = config if isinstance(config, OrderedDict) else OrderedDict(config)
            else:
                species = br.empty_species()
        self._species = species

    def __repr__(self) -> str:
        return f"VersionDataImp(meta={self.meta!r}, config={self.config!r})"

    def __getstate__(self) -> tuple:
        # the build and arithmetic plans are caches: not pickled (nor deep-copied)
        return (None, {"_meta": self._meta, "_species": self._species, "_pending": self._pending})

    def __setstate__(self, state: tuple) -> None:
        for key in ("_plan", "_arith"):
            object.__setattr__(self, key, None)
        for key, value in state[1].items():
            object.__setattr__(self, key, value)

    def _build_plan(self) -> "_BuildPlan":
        """The wiring of this version's module tree (cached for the current ``_meta`` only)."""
        plan = self._plan
        if plan is None or plan.meta is not self._meta:
            plan = self._plan = _BuildPlan(self._meta)
        return plan

    def _arith_plan(self) -> Plan:
        """Where this version's operational parameters sit (cached for the current species only)."""
        plan = self._arith
        species = self._species
        if plan is None or plan.species is not species:
            plan = self._arith = plan_of(self.species)
        return plan

    # -- documented attributes ----------------------------------------------

    @property
    def species(self) -> Any:
        """The ``nytorch_fn.Species`` of this version."""
        if self._species is None:
            raise AssertionError("this version's species is not known yet (no particle has entered it)")
        return self._species

    @property
    def meta(self) -> Mapping:
        return _MetaView(self._meta)

    @meta.setter
    def meta(self, value: Mapping) -> None:
        self._meta = pmap({int(k): v for k, v in value.items()})

    @property
    def config(self) -> Mapping:
        if self._species is None:
            return self._pending  # the legacy configs given to the constructor, writable
        return _ConfigView(self)

    @config.setter
    def config(self, value: Mapping) -> None:
        species = self.species
        known = set(br.pids_of(species))
        for pid in known - set(value):
            species = species.remove(br.pname(pid))
        for pid, cfg in value.items():
            core = br.to_core(cfg)
            if pid in known and species.config[br.pname(pid)] != core:
                species = species.with_config(
                    br.pname(pid), operational=core.operational, clone=core.clone, tags=dict(core.tags)
                )
        self._species = species

    def _set_config(self, pid: ParamID, name: str, value: Any) -> None:
        self._species = br.set_config(self.species, pid, name, value)

    # -- VersionData ----------------------------------------------------------

    def init_kernel(self, kernel: VersionKernel) -> None:
        return None

    def init_particle(self, pdata: "ParticleDataImp") -> None:
        if self._species is None:
            self._adopt(pdata.params)
        order = self._build_plan().mids  # the sorted module ids, cached for this ``_meta``
        if tuple(pdata._modules) != order:
            if order and set(pdata._modules.keys()) != set(order):
                missing = set(order) - set(pdata._modules.keys())
                assert not missing, f"the particle lacks modules {sorted(missing)} of this version"
            pdata._modules = OrderedDict((mid, pdata._modules[mid]) for mid in order)
        ids = br.pids_of(self._species)
        if tuple(pdata.params.keys()) != ids:
            pdata.params = OrderedDict((pid, pdata.params[pid]) for pid in ids)

    def _adopt(self, params: Mapping) -> None:
        """Build the species of a user-made version from the first particle's parameters."""
        pending = {int(k): v for k, v in (self._pending or {}).items()}
        slots = [(pid, p.shape, p.dtype, p.requires_grad) for pid, p in sorted(params.items()) if pid in pending]
        self._species = br.species_from(slots, pending)
        self._pending = None

    def copy(self) -> "VersionDataImp":
        """A deep copy: the same metadata under a new species (its own identity and history)."""
        new = VersionDataImp.__new__(VersionDataImp)
        new._meta = pmap({k: v.copy() for k, v in self._meta.items()})
        new._pending = None if self._pending is None else OrderedDict((k, _legacy_copy(v)) for k, v in self._pending.items())
        new._species = None if self._species is None else br.fresh_copy(self._species)
        new._plan = None
        new._arith = None
        return new

    def _derive(self) -> "VersionDataImp":
        """The starting point of the next version: same metadata, same species chain."""
        new = VersionDataImp.__new__(VersionDataImp)
        new._meta = self._meta
        new._pending = None
        new._species = self.species
        new._plan = None
        new._arith = None
        return new

    # -- queries ---------------------------------------------------------------

    def get_sub_modules(self, root: ModuleID) -> set[ModuleID]:
        """Every module id reachable from ``root`` (``root`` included)."""
        seen: set[ModuleID] = set()
        stack = [root]
        meta = self._meta
        while stack:
            mid = stack.pop()
            if mid in seen:
                continue
            seen.add(mid)
            stack.extend(sub for sub in meta[mid].sub_modules.values() if sub is not None)
        return seen

    def get_sub_params(self, root: ModuleID) -> set[ParamID]:
        """Every parameter id held by a module reachable from ``root``."""
        out: set[ParamID] = set()
        for mid in self.get_sub_modules(root):
            out.update(pid for pid in self._meta[mid].sub_params.values() if pid is not None)
        return out

    def get_garbage_modules(self) -> set[ModuleID]:
        """Module ids that the root no longer reaches."""
        return set(self._meta.keys()) - self.get_sub_modules(ROOT_MODULE_ID)

    def get_garbage_params(self) -> set[ParamID]:
        """Parameter ids that the root no longer reaches."""
        return set(self._param_ids()) - self.get_sub_params(ROOT_MODULE_ID)

    def _param_ids(self) -> tuple[ParamID, ...]:
        if self._species is None:
            return tuple(sorted(int(k) for k in self._pending or {}))
        return br.pids_of(self._species)

    # -- edits (on a version under construction) ------------------------------

    def remove_modules(self, modules: set[ModuleID]) -> None:
        """Drop the metadata of ``modules`` (and the buffers registered on them)."""
        if not modules:
            return
        evolver = self._meta.evolver()
        for mid in modules:
            del evolver[mid]
        self._meta = evolver.persistent()
        if self._species is not None:
            prefixes = tuple(br.bname(mid, "") for mid in modules)
            species = self._species
            for name in species.buffer_names:
                if name.startswith(prefixes):
                    species = species.remove(name)
            self._species = species

    def remove_params(self, params: set[ParamID]) -> None:
        """Drop the parameter slots ``params``."""
        if not params:
            return
        if self._species is None:
            for pid in params:
                del self._pending[pid]  # type: ignore[index]
            return
        species = self._species
        for pid in sorted(params):
            species = species.remove(br.pname(pid))
        self._species = species

    def _set_meta(self, mid: ModuleID, meta: ModuleMeta) -> None:
        self._meta = self._meta.set(mid, meta)

    def _next_pid(self) -> ParamID:
        ids = self._param_ids()
        return max(ids) + 1 if ids else 0

    def _next_mid(self) -> ModuleID:
        return max(self._meta.keys()) + 1 if self._meta else 0

    def _add_param(self, pid: ParamID, value: Any) -> None:
        self._species = self.species.add_param(br.pname(pid), value.detach())

    def _set_buffer(self, mid: ModuleID, attr: str, tensor: Any, persistent: bool) -> None:
        species = self.species
        name = br.bname(mid, attr)
        if name in species.buffers:
            species = species.remove(name)
        self._species = species.add_buffer(name, tensor, persistent, copy=False)

    def _del_buffer(self, mid: ModuleID, attr: str) -> None:
        name = br.bname(mid, attr)
        if self._species is not None and name in self._species.buffers:
            self._species = self._species.remove(name)

    def _collect_garbage(self) -> tuple[set[ModuleID], set[ParamID]]:
        modules = self.get_garbage_modules()
        self.remove_modules(modules)
        params = self.get_garbage_params()
        self.remove_params(params)
        return modules, params


# ---------------------------------------------------------------------------
# ParticleDataImp
# ---------------------------------------------------------------------------


class ParticleDataImp(ParticleData["VersionDataImp", "ParticleDataImp"]):
    """The modules and parameter objects of one particle.

    Args:
        modules: module id -> module.
        params: parameter id -> ``nn.Parameter``.

    Attributes:
        modules: module id -> module (read it; the root is held weakly when
            it is a NytoModule, so the mapping returned is a snapshot).
        params: parameter id -> ``nn.Parameter``, in id order.
    """

    __slots__ = ("_modules", "_root_ref", "params")

    def __init__(self, modules: Mapping, params: Mapping) -> None:
        self._modules: OrderedDict = OrderedDict(modules)
        self._root_ref: Optional[weakref.ref] = None
        self.params: ParamDict = params if isinstance(params, OrderedDict) else OrderedDict(params)

    def __repr__(self) -> str:
        return f"ParticleDataImp(modules={self.modules!r}, params={self.params!r})"

    @property
    def modules(self) -> ModuleDict:
        if self._root_ref is None:
            return self._modules
        return _ModulesView((mid, self._module(mid)) for mid in self._modules)

    @modules.setter
    def modules(self, value: Mapping) -> None:
        self._modules = OrderedDict(value)
        self._root_ref = None

    def __getstate__(self) -> dict:
        weak = self._root_ref is not None
        return {"modules": self._resolved(), "params": self.params, "weak_root": weak}

    def __setstate__(self, state: dict) -> None:
        self._modules = OrderedDict(state["modules"])
        self._root_ref = None
        self.params = state["params"]
        if state.get("weak_root"):
            self._weaken_root()

    def _module(self, mid: ModuleID) -> nn.Module:
        mod = self._modules[mid]
        if mod is _WEAK:
            mod = self._root_ref()  # type: ignore[misc]
            assert mod is not None, "the root module of this particle has been freed"
        return mod

    def _root(self) -> Optional[nn.Module]:
        """The root module, or None if there is none (or it was freed)."""
        mod = self._modules.get(ROOT_MODULE_ID)
        if mod is _WEAK:
            return self._root_ref()  # type: ignore[misc]
        return mod

    def _resolved(self) -> OrderedDict:
        if self._root_ref is None:
            return self._modules
        return OrderedDict((mid, self._module(mid)) for mid in self._modules)

    def particle(self, vdata: VersionDataImp) -> Any:
        """This particle as a core ``nytorch_fn.Particle`` of ``vdata``'s species (no copy)."""
        return br.particle_of(vdata.species, list(self.params.values()))

    # -- ParticleData ---------------------------------------------------------

    def init_kernel(self, kernel: ParticleKernel) -> None:
        weak = None
        for mod in self._resolved().values():
            if isinstance(mod, NytoModuleBase):
                state = mod.__dict__
                if state.get("_module_id", ROOT_MODULE_ID) == ROOT_MODULE_ID:
                    state["_pk"] = kernel
                else:  # as _set_kernel does; one weak reference serves all
                    if weak is None:
                        weak = weakref.ref(kernel)
                    state["_pk"] = weak

    def _weaken_root(self) -> None:
        """Hold the root weakly when it holds the kernel itself (it then owns the particle).

        Called once the root has an owner (the caller that returns it), so a
        particle is freed by reference counting when its root is unreachable.
        """
        root = self._modules.get(ROOT_MODULE_ID)
        if isinstance(root, NytoModuleBase) and _get_kernel(root) is not None:
            self._root_ref = weakref.ref(root)
            self._modules[ROOT_MODULE_ID] = _WEAK

    def copy(self, vdata: VersionDataImp) -> "ParticleDataImp":
        return self.create(vdata, self.params)

    def add_modules(self, modules: Mapping) -> None:
        """Add ``modules`` (their ids must be new)."""
        clash = set(self._modules) & set(modules)
        assert not clash, f"module ids {sorted(clash)} already exist"
        self._modules.update(modules)

    def add_params(self, params: Mapping) -> None:
        """Add ``params`` (their ids must be new)."""
        clash = set(self.params) & set(params)
        assert not clash, f"parameter ids {sorted(clash)} already exist"
        self.params.update(params)

    def remove_modules(self, modules: set[ModuleID]) -> None:
        """Remove the modules with these ids."""
        for mid in modules:
            del self._modules[mid]
            if mid == ROOT_MODULE_ID:
                self._root_ref = None

    def remove_params(self, params: set[ParamID]) -> None:
        """Remove the parameters with these ids."""
        for pid in params:
            del self.params[pid]

    def assign(self, params: Mapping) -> None:
        """Give this particle's parameters the values of ``params`` (same ids), in place.

        The parameter objects stay the same; their data is replaced.

        Raises:
            AssertionError: the ids differ.
        """
        assert list(params.keys()) == list(self.params.keys()), (
            f"expected parameters with ids {list(self.params.keys())}, got {list(params.keys())}"
        )
        for mine, theirs in zip(self.params.values(), params.values()):
            if mine is None or theirs is None or mine is theirs:
                continue
            mine.data = theirs.data

    def create(self, vdata: VersionDataImp, params: Mapping) -> "ParticleDataImp":
        """A new particle with this one's structure (modules copied) and ``params``.

        The new particle owns its module objects and its parameter dictionary.
        """
        plan = vdata._build_plan()
        source = self._modules
        if tuple(source) != plan.mids:  # not this version's tree: the generic path (and its errors)
            modules = copy_modules(self._resolved())
            make_modules_ref(modules, params, vdata.meta, set(modules.keys()))
            return ParticleDataImp(modules, OrderedDict(params))
        # copy_modules + make_modules_ref, without copying the dictionaries that the wiring replaces
        modules: OrderedDict = OrderedDict()
        for mid, mod in source.items():
            if mod is _WEAK:
                mod = self._root_ref()  # type: ignore[misc]
                assert mod is not None, "the root module of this particle has been freed"
            modules[mid] = _copy_module(mod)
        return _wired(modules, plan.wiring, OrderedDict(params), params)


_object_new = object.__new__
_nyto_classes: dict = {}  # class -> is it a NytoModuleBase (isinstance through ABCMeta costs a microsecond)


def _is_nyto(cls: type) -> bool:
    found = _nyto_classes.get(cls)
    if found is None:
        if len(_nyto_classes) > 1024:  # classes made on the fly: keep the cache from holding them all
            _nyto_classes.clear()
        found = _nyto_classes[cls] = issubclass(cls, NytoModuleBase)
    return found


def spawn(source: ParticleDataImp, version: VersionKernelImp, params: OrderedDict, module_id: ModuleID) -> nn.Module:
    """Module ``module_id`` of a new particle of ``version``: ``source``'s modules (copied) holding ``params``.

    What ``ParticleKernel(version, source.create(version.data, params))``
    gives, with its root module holding the particle (the kernel holds it
    weakly), in one pass over the modules. ``params`` (id -> parameter, in
    this version's id order) is taken over, not copied. A submodule result
    keeps its particle's root alive (``_nyto_pin``).
    """
    vdata = version.data
    plan = vdata._build_plan()
    src = source._modules
    kernel = ParticleKernel.__new__(ParticleKernel)
    kernel.version = version
    if tuple(src) != plan.mids:  # not this version's tree: the generic path (and its errors)
        data = source.create(vdata, params)
        kernel.data = data
        data.init_kernel(kernel)
        root = data._root()
        data._weaken_root()
        module = data._module(module_id)
    else:
        modules: OrderedDict = OrderedDict()
        weak = None
        for mid, mod in src.items():
            if mod is _WEAK:
                mod = source._root_ref()  # type: ignore[misc]
                assert mod is not None, "the root module of this particle has been freed"
            cls = type(mod)
            clone = _object_new(cls) if cls.__new__ is _object_new else cls.__new__(cls)
            state = clone.__dict__  # copy_module, less the tables the wiring below replaces
            state.update(mod.__dict__)
            state["_buffers"] = state["_buffers"].copy()
            kept = state.get("_non_persistent_buffers_set")
            if kept is not None:
                state["_non_persistent_buffers_set"] = set(kept)
            nyto = _nyto_classes.get(cls)
            if nyto is None:
                nyto = _is_nyto(cls)
            if nyto:  # as ParticleDataImp.init_kernel
                state.pop("_nyto_pin", None)
                if state.get("_module_id", ROOT_MODULE_ID) == ROOT_MODULE_ID:
                    state["_pk"] = kernel
                else:
                    if weak is None:
                        weak = weakref.ref(kernel)
                    state["_pk"] = weak
            modules[mid] = clone
        data = _wired(modules, plan.wiring, params, params)  # make_modules_ref
        kernel.data = data
        module = modules[module_id]
        root = modules.get(ROOT_MODULE_ID)
        if root is not None and _is_nyto(type(root)) and root.__dict__.get("_pk") is kernel:
            data._root_ref = weakref.ref(root)  # as _weaken_root: the root owns the particle
            modules[ROOT_MODULE_ID] = _WEAK
    if module_id != ROOT_MODULE_ID:
        module.__dict__["_nyto_pin"] = root
    return module



def _wired(modules: dict, wiring: Any, params: OrderedDict, lookup: Mapping) -> "ParticleDataImp":
    """Particle data over ``modules`` (copies, keyed by module id), each wired to its
    submodules and to its parameters from ``lookup`` (by id) as ``wiring`` says, holding ``params``."""
    for mid, subs, slots in wiring:
        module = modules[mid]
        state = module.__dict__
        # plain dicts, as torch's own modules hold
        state["_modules"] = {name: None if sub is None else modules[sub] for name, sub in subs} if subs else {}
        state["_parameters"] = {name: None if pid is None else lookup[pid] for name, pid in slots} if slots else {}
        if "_flat_weights_names" in state:  # RNNs cache references to their weights
            module._init_flat_weights()
    data = ParticleDataImp.__new__(ParticleDataImp)
    data._modules = modules
    data._root_ref = None
    data.params = params
    return data

def _copy_module(module: nn.Module) -> nn.Module:
    """``utils.copy_module`` less the copies of ``_parameters`` and ``_modules`` (rebuilt by the caller)."""
    clone = module.__new__(type(module))
    state = module.__dict__.copy()
    state.pop("_nyto_pin", None)
    object.__setattr__(clone, "__dict__", state)
    state["_buffers"] = state["_buffers"].copy()
    if "_non_persistent_buffers_set" in state:
        state["_non_persistent_buffers_set"] = set(state["_non_persistent_buffers_set"])
    return clone
