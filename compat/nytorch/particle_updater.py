"""Particle updaters: bring one particle from a version to the next.

The parameters of a particle that did not make the edit (a *recipient*) are
brought across by the functional core: its core particle is migrated to the
next version's species (``nytorch_fn.migrate``), which keeps every untouched
parameter object and gives the recipient its own copy of each added one. The
particle that made the edit (the *initiator*) keeps the very objects it
added. Then the module tree is rewired as the legacy library does.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Mapping, Optional

import torch
from torch import nn
from typing_extensions import Self

from . import _bridge as br
from .base import NytoModuleBase, ParticleDataImp, VersionDataImp, _get_kernel, _set_kernel
from .kernel import ParticleUpdater
from .mtype import MetaDict, Module, ModuleDict, ModuleID, ParamDict, ParamID, ParamType, ROOT_MODULE_ID
from .utils import clone_param, copy_modules, make_modules_ref


_Parameter = nn.Parameter
_Tensor = torch.Tensor


def _remove_from(module: nn.Module, name: str, *tables: str) -> None:
    for table in tables:
        if table == "__dict__":
            module.__dict__.pop(name, None)
        elif table == "_non_persistent_buffers_set":
            module._non_persistent_buffers_set.discard(name)
        else:
            getattr(module, table).pop(name, None)


class _Base(ParticleUpdater[VersionDataImp, ParticleDataImp]):
    """Shared bookkeeping: the two species and the initiator (held weakly)."""

    module_id: ModuleID
    attr_name: str

    def _init(self, module_id: ModuleID, attr_name: str) -> None:
        self.module_id = module_id
        self.attr_name = attr_name
        self._from: Any = None
        self._to: Any = None
        self._owner: Optional[weakref.ref] = None

    @property
    def owner(self) -> Optional[ParticleDataImp]:
        """The data of the particle that made the edit (None once it is freed)."""
        return None if self._owner is None else self._owner()

    @owner.setter
    def owner(self, pdata: Optional[ParticleDataImp]) -> None:
        self._owner = None if pdata is None else weakref.ref(pdata)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_plan", None)  # a cache
        state["_owner"] = self.owner
        return state

    def __setstate__(self, state: dict) -> None:
        owner = state.pop("_owner", None)
        self.__dict__.update(state)
        self.owner = owner

    def _transition(self) -> br.Transition:
        """The transition ``_from`` -> ``_to``: computed once, for every particle that catches up.

        A cache checked by identity against both species (immutable), so it
        can never serve another pair.
        """
        plan = self.__dict__.get("_plan")
        if plan is None or plan.old is not self._from or plan.new is not self._to:
            plan = self.__dict__["_plan"] = br.Transition(self._from, self._to)
        return plan

    def set_version_data(self, vdata: VersionDataImp) -> Self:
        self._from = vdata._species
        return self

    def set_next_version_data(self, vdata: VersionDataImp) -> Self:
        self._to = vdata._species
        return self

    def set_particle_data(self, pdata: ParticleDataImp) -> Self:
        self.owner = pdata
        return self

    def _advance(
        self,
        pdata: ParticleDataImp,
        remove: set[ParamID],
        added: Mapping[ParamID, Optional[ParamType]] = {},
    ) -> None:
        """Bring ``pdata.params`` to the next version."""
        initiator = self._owner is not None and self._owner() is pdata
        if not initiator and self._from is not None and self._to is not None:
            transition = self._transition()
            if transition.removed is not None:  # edits of the id-keyed dict (the usual case): no rebuild
                transition.advance_params(pdata.params, {pid: p.requires_grad for pid, p in added.items() if p is not None})
                return
            pids = transition.pids if transition.pids is not None else br.pids_of(self._to)
            tensors = list(transition.advance(list(pdata.params.values())))
            # kept slots hold the particle's own parameters; wrap the new ones (all, when not known which)
            for i in range(len(tensors)) if transition.added is None else transition.added:
                t = tensors[i]
                kind = type(t)
                if kind is _Tensor or (kind is not _Parameter and not isinstance(t, _Parameter)):
                    source = added.get(pids[i])
                    tensors[i] = _Parameter(t, requires_grad=True if source is None else source.requires_grad)
            pdata.params = OrderedDict(zip(pids, tensors))
            return
        pdata.remove_params(set(remove) & set(pdata.params))
        for pid, param in added.items():
            if param is None or pid in pdata.params:
                continue
            pdata.params[pid] = param if initiator else clone_param(param)


class AddModuleParticleUpdater(_Base):
    """Adds a submodule (and its new modules and parameters) to a particle.

    The initiator gets the added module objects themselves; every other
    particle gets shallow copies of them wired to its own parameter copies.
    """

    add_module_id: ModuleID
    add_modules: ModuleDict
    add_params: ParamDict
    remove_modules: set[ModuleID]
    remove_params: set[ParamID]
    next_version_modules_meta: Optional[MetaDict]

    def __init__(
        self,
        module_id: ModuleID,
        attr_name: str,
        add_module_id: ModuleID,
        add_modules: ModuleDict,
        add_params: ParamDict,
        remove_modules: set[ModuleID],
        remove_params: set[ParamID],
    ) -> None:
        self._init(module_id, attr_name)
        self.add_module_id = add_module_id
        self.add_modules = add_modules
        self.add_params = add_params
        self.remove_modules = remove_modules
        self.remove_params = remove_params
        self.next_version_modules_meta = None

    def set_next_version_data(self, vdata: VersionDataImp) -> Self:
        self.next_version_modules_meta = vdata.meta
        return super().set_next_version_data(vdata)

    def run(self, pdata: ParticleDataImp) -> None:
        initiator = self.owner is pdata
        self._advance(pdata, self.remove_params, self.add_params)
        if initiator:
            pdata.add_modules(self.add_modules)
            pdata.remove_modules(self.remove_modules)
            this = pdata._module(self.module_id)
            _remove_from(this, self.attr_name, "__dict__", "_parameters", "_buffers", "_non_persistent_buffers_set")
            this._modules[self.attr_name] = pdata._module(self.add_module_id)
        else:
            assert self.next_version_modules_meta is not None, "set_next_version_data() was not called"
            pdata.add_modules(copy_modules(self.add_modules))
            pdata.remove_modules(self.remove_modules)
            this = pdata._module(self.module_id)
            _remove_from(this, self.attr_name, "__dict__", "_parameters", "_buffers", "_non_persistent_buffers_set")
            make_modules_ref(
                pdata._resolved(),
                pdata.params,
                self.next_version_modules_meta,
                {self.module_id} | set(self.add_modules.keys()),
            )
        root = pdata._module(ROOT_MODULE_ID)
        kernel = _get_kernel(root) if isinstance(root, NytoModuleBase) else None
        for mid in pdata._modules:
            mod = pdata._module(mid)
            if isinstance(mod, NytoModuleBase):
                mod.__dict__["_module_id"] = mid
                _set_kernel(mod, kernel)


class AddParamParticleUpdater(_Base):
    """Adds a parameter to a particle: the initiator gets ``add_param`` itself, others a copy.

    ``add_param`` is None when the parameter already belongs to the particle
    (it is registered under one more name).
    """

    add_param_id: ParamID
    remove_modules: set[ModuleID]
    remove_params: set[ParamID]
    add_param: Optional[ParamType]

    def __init__(
        self,
        module_id: ModuleID,
        attr_name: str,
        add_param_id: ParamID,
        remove_modules: set[ModuleID],
        remove_params: set[ParamID],
        add_param: Optional[ParamType] = None,
    ) -> None:
        self._init(module_id, attr_name)
        self.add_param_id = add_param_id
        self.remove_modules = remove_modules
        self.remove_params = remove_params
        self.add_param = add_param

    def run(self, pdata: ParticleDataImp) -> None:
        added = {} if self.add_param is None else {self.add_param_id: self.add_param}
        self._advance(pdata, self.remove_params, added)
        if self.remove_modules:
            pdata.remove_modules(set(self.remove_modules) & set(pdata._modules))
        this = pdata._module(self.module_id)
        name = self.attr_name
        state = this.__dict__  # as _remove_from(this, name, "__dict__", "_buffers", "_modules", ...)
        state.pop(name, None)
        state["_buffers"].pop(name, None)
        state["_modules"].pop(name, None)
        state["_non_persistent_buffers_set"].discard(name)
        _put_parameter(this, name, pdata.params[self.add_param_id])


_module_getattr = nn.Module.__getattr__
_module_register = nn.Module.register_parameter


def _put_parameter(module: Module, name: str, param: nn.Parameter) -> None:
    """``Module.register_parameter(module, name, param)`` for a name just cleared from the
    module's ``__dict__`` and tables, ``param`` a fresh ``nn.Parameter`` of a name the first
    registration already checked: the one check left that can fail, an attribute of that name
    on the class, is made on the class (``hasattr(module, name)`` searches the instance's
    tables first, a microsecond of the whole catch-up). Global parameter registration hooks,
    a class with its own ``__getattr__``, or a class attribute of that name take torch's own
    path (its hooks, its error)."""
    cls = type(module)
    if (nn.modules.module._global_parameter_registration_hooks or cls.__getattr__ is not _module_getattr
            or hasattr(cls, name)):
        _module_register(module, name, param)
        return
    module.__dict__["_parameters"][name] = param


class _Dropping(_Base):
    """An edit that leaves modules and parameters behind: catch up, then drop them."""

    remove_modules: set[ModuleID]
    remove_params: set[ParamID]

    def __init__(
        self, module_id: ModuleID, attr_name: str, remove_modules: set[ModuleID], remove_params: set[ParamID]
    ) -> None:
        self._init(module_id, attr_name)
        self.remove_modules = remove_modules
        self.remove_params = remove_params

    def _drop(self, pdata: ParticleDataImp) -> Module:
        """Catch ``pdata`` up, drop what the edit removed; returns the edited module."""
        self._advance(pdata, self.remove_params)
        pdata.remove_modules(set(self.remove_modules) & set(pdata._modules))
        return pdata._module(self.module_id)


class RegisterBufferParticleUpdater(_Dropping):
    """Registers a buffer; every particle shares the very same tensor."""

    persistent: bool
    remove_modules: set[ModuleID]
    remove_params: set[ParamID]
    value: Optional[Any]

    def __init__(
        self,
        module_id: ModuleID,
        attr_name: str,
        value: Optional[Any],
        persistent: bool,
        remove_modules: set[ModuleID],
        remove_params: set[ParamID],
    ) -> None:
        super().__init__(module_id, attr_name, remove_modules, remove_params)
        self.value = value
        self.persistent = persistent

    def run(self, pdata: ParticleDataImp) -> None:
        this = self._drop(pdata)
        _remove_from(this, self.attr_name, "_parameters", "_modules")
        Module.register_buffer(this, self.attr_name, self.value, self.persistent)


class SetModuleNoneParticleUpdater(_Dropping):
    """Sets a submodule attribute to None (the slot stays, as in torch)."""

    def run(self, pdata: ParticleDataImp) -> None:
        this = self._drop(pdata)
        _remove_from(this, self.attr_name, "__dict__", "_parameters", "_buffers", "_non_persistent_buffers_set")
        this._modules[self.attr_name] = None


class SetParamNoneParticleUpdater(_Dropping):
    """Sets a parameter attribute to None (the slot stays, as in torch)."""

    def run(self, pdata: ParticleDataImp) -> None:
        this = self._drop(pdata)
        _remove_from(this, self.attr_name, "__dict__", "_buffers", "_modules", "_non_persistent_buffers_set")
        Module.register_parameter(this, self.attr_name, None)


class DelModuleParticleUpdater(_Dropping):
    """Deletes a submodule attribute."""

    def run(self, pdata: ParticleDataImp) -> None:
        Module.__delattr__(self._drop(pdata), self.attr_name)


class DelParamParticleUpdater(_Base):
    """Deletes a parameter attribute."""

    remove_params: set[ParamID]

    def __init__(self, module_id: ModuleID, attr_name: str, remove_params: set[ParamID]) -> None:
        self._init(module_id, attr_name)
        self.remove_params = remove_params

    def run(self, pdata: ParticleDataImp) -> None:
        self._advance(pdata, self.remove_params)
        Module.__delattr__(pdata._module(self.module_id), self.attr_name)


class DelBufferParticleUpdater(_Base):
    """Deletes a buffer attribute."""

    def __init__(self, module_id: ModuleID, attr_name: str) -> None:
        self._init(module_id, attr_name)

    def run(self, pdata: ParticleDataImp) -> None:
        self._advance(pdata, set())
        Module.__delattr__(pdata._module(self.module_id), self.attr_name)
