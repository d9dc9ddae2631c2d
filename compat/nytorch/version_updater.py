"""Version updaters: build the next version of a species for one structural edit.

Each ``run`` starts from the current version's data (never changing it),
applies the edit to the module metadata (a pyrsistent map of ``ModuleMeta``)
and to the core species (``add_param`` / ``remove`` / ``add_buffer`` edits,
so ``nytorch_fn.migrate`` can replay them), drops what the root no longer
reaches, and returns the new data with the matching particle updater.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch
from typing_extensions import Self

from .base import ParticleDataImp, VersionDataImp
from .kernel import ParticleUpdater, VersionUpdater
from .mtype import Module, ModuleDict, ModuleID, ModuleMeta, ParamDict, ParamID, ParamType
from .particle_updater import (
    AddModuleParticleUpdater,
    AddParamParticleUpdater,
    DelBufferParticleUpdater,
    DelModuleParticleUpdater,
    DelParamParticleUpdater,
    RegisterBufferParticleUpdater,
    SetModuleNoneParticleUpdater,
    SetParamNoneParticleUpdater,
)


def _meta_of(vdata: VersionDataImp, module_id: ModuleID) -> ModuleMeta:
    try:
        return vdata._meta[module_id]
    except KeyError:
        raise KeyError(f"expected a module id of this particle (one of {sorted(vdata._meta.keys())}), got {module_id!r}") from None


def _edited(
    meta: ModuleMeta,
    name: str,
    *,
    module: Any = ...,
    param: Any = ...,
) -> ModuleMeta:
    """``meta`` with ``name`` dropped from both tables, then set in one of them (``...``: not set)."""
    subs = OrderedDict(meta.sub_modules)
    params = OrderedDict(meta.sub_params)
    if module is not ...:
        params.pop(name, None)
        subs[name] = module
    elif param is not ...:
        subs.pop(name, None)
        params[name] = param
    else:
        subs.pop(name, None)
        params.pop(name, None)
    return ModuleMeta(subs, params)


class _Simple(VersionUpdater[VersionDataImp, ParticleDataImp]):
    module_id: ModuleID
    attr_name: str

    def __init__(self, module_id: ModuleID, attr_name: str) -> None:
        self.module_id = module_id
        self.attr_name = attr_name

    def set_version_data(self, vdata: VersionDataImp) -> Self:
        return self

    def set_particle_data(self, pdata: ParticleDataImp) -> Self:
        return self


class AddModuleVersionUpdater(VersionUpdater[VersionDataImp, ParticleDataImp]):
    """Adds ``add_module`` as attribute ``attr_name`` of module ``module_id``.

    Modules and parameters of ``add_module`` that the initiating particle does
    not hold yet get new ids (in ``add_module.modules()`` order, then each
    module's parameter order); ones it already holds keep theirs.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.zeros(2))
        >>> net0, net1 = Net(), nn.Linear(2, 2)
        >>> net0._particle_kernel.version_update(AddModuleVersionUpdater(net0._module_id, "attar_net1", net1))
        >>> net0.attar_net1 is net1
        True
    """

    module_id: ModuleID
    attr_name: str
    add_module: Module
    owner_modules: Optional[ModuleDict]
    owner_params: Optional[ParamDict]

    def __init__(self, module_id: ModuleID, attr_name: str, add_module: Module) -> None:
        self.module_id = module_id
        self.attr_name = attr_name
        self.add_module = add_module
        self.owner_modules = None
        self.owner_params = None

    def set_version_data(self, vdata: VersionDataImp) -> Self:
        return self

    def set_particle_data(self, pdata: ParticleDataImp) -> Self:
        self.owner_modules = pdata._resolved()
        self.owner_params = pdata.params
        return self

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        assert self.owner_modules is not None and self.owner_params is not None, "set_particle_data() was not called"
        if not isinstance(self.add_module, Module):
            raise TypeError(f"expected an nn.Module to add, got {type(self.add_module).__name__}")
        new = vdata._derive()
        meta = _meta_of(new, self.module_id)
        module_ids = {id(m): mid for mid, m in self.owner_modules.items()}
        param_ids = {id(p): pid for pid, p in self.owner_params.items() if p is not None}
        next_mid, next_pid = new._next_mid(), new._next_pid()
        add_modules: ModuleDict = OrderedDict()
        add_params: ParamDict = OrderedDict()
        for mod in self.add_module.modules():
            if id(mod) not in module_ids:
                module_ids[id(mod)] = next_mid
                add_modules[next_mid] = mod
                next_mid += 1
            for p in mod._parameters.values():
                if p is not None and id(p) not in param_ids:
                    param_ids[id(p)] = next_pid
                    add_params[next_pid] = p
                    next_pid += 1
        for mid, mod in add_modules.items():
            new._set_meta(
                mid,
                ModuleMeta(
                    OrderedDict((n, None if s is None else module_ids[id(s)]) for n, s in mod._modules.items()),
                    OrderedDict((n, None if p is None else param_ids[id(p)]) for n, p in mod._parameters.items()),
                ),
            )
        for pid, p in add_params.items():
            new._add_param(pid, p)
        add_module_id = module_ids[id(self.add_module)]
        new._set_meta(self.module_id, _edited(meta, self.attr_name, module=add_module_id))
        new._del_buffer(self.module_id, self.attr_name)
        removed_modules, removed_params = new._collect_garbage()
        return new, AddModuleParticleUpdater(
            self.module_id, self.attr_name, add_module_id, add_modules, add_params, removed_modules, removed_params
        )


class AddParamVersionUpdater(VersionUpdater[VersionDataImp, ParticleDataImp]):
    """Adds ``add_param`` as attribute ``attr_name`` of module ``module_id``.

    A parameter the initiating particle already holds keeps its id (it is
    registered under one more name); a new one gets the next id.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.zeros(2))
        >>> net = Net()
        >>> add_param = nn.Parameter(torch.ones(3))
        >>> net._particle_kernel.version_update(AddParamVersionUpdater(net._module_id, "attar_add_param", add_param))
        >>> net.attar_add_param is add_param
        True
    """

    module_id: ModuleID
    attr_name: str
    add_param: ParamType
    owner_params: Optional[ParamDict]

    def __init__(self, module_id: ModuleID, attr_name: str, add_param: ParamType) -> None:
        self.module_id = module_id
        self.attr_name = attr_name
        self.add_param = add_param
        self.owner_params = None

    def set_version_data(self, vdata: VersionDataImp) -> Self:
        return self

    def set_particle_data(self, pdata: ParticleDataImp) -> Self:
        self.owner_params = pdata.params
        return self

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        assert self.owner_params is not None, "set_particle_data() was not called"
        if not isinstance(self.add_param, ParamType):
            raise TypeError(f"expected an nn.Parameter to add, got {type(self.add_param).__name__}")
        new = vdata._derive()
        meta = _meta_of(new, self.module_id)
        pid = next((k for k, p in self.owner_params.items() if p is self.add_param), None)
        fresh = pid is None
        if fresh:
            pid = new._next_pid()
            new._add_param(pid, self.add_param)
        new._set_meta(self.module_id, _edited(meta, self.attr_name, param=pid))
        new._del_buffer(self.module_id, self.attr_name)
        removed_modules, removed_params = new._collect_garbage()
        return new, AddParamParticleUpdater(
            self.module_id, self.attr_name, pid, removed_modules, removed_params, self.add_param if fresh else None
        )


class RegisterBufferVersionUpdater(_Simple):
    """Registers buffer ``value`` as attribute ``attr_name`` of module ``module_id``.

    Every particle of the species gets the very same tensor.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.zeros(2))
        >>> net = Net()
        >>> add_tensor = torch.ones(3)
        >>> net._particle_kernel.version_update(RegisterBufferVersionUpdater(net._module_id, "attar_add_tensor", add_tensor))
        >>> net.attar_add_tensor is add_tensor
        True
    """

    value: Optional[torch.Tensor]
    persistent: bool

    def __init__(
        self, module_id: ModuleID, attr_name: str, value: Optional[torch.Tensor], persistent: bool = True
    ) -> None:
        super().__init__(module_id, attr_name)
        self.value = value
        self.persistent = persistent

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        if self.value is not None and not isinstance(self.value, torch.Tensor):
            raise TypeError(
                f"cannot assign '{type(self.value).__name__}' as buffer '{self.attr_name}' "
                "(torch.Tensor or None expected)"
            )
        new = vdata._derive()
        new._set_meta(self.module_id, _edited(_meta_of(new, self.module_id), self.attr_name))
        new._set_buffer(self.module_id, self.attr_name, self.value, bool(self.persistent))
        removed_modules, removed_params = new._collect_garbage()
        return new, RegisterBufferParticleUpdater(
            self.module_id, self.attr_name, self.value, self.persistent, removed_modules, removed_params
        )


class SetModuleNoneVersionUpdater(_Simple):
    """Sets submodule attribute ``attr_name`` of module ``module_id`` to None.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attar_module = nn.Linear(2, 2)
        >>> net = Net()
        >>> net._particle_kernel.version_update(SetModuleNoneVersionUpdater(net._module_id, "attar_module"))
        >>> net.attar_module is None
        True
    """

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        new = vdata._derive()
        new._set_meta(self.module_id, _edited(_meta_of(new, self.module_id), self.attr_name, module=None))
        new._del_buffer(self.module_id, self.attr_name)
        removed_modules, removed_params = new._collect_garbage()
        return new, SetModuleNoneParticleUpdater(self.module_id, self.attr_name, removed_modules, removed_params)


class SetParamNoneVersionUpdater(_Simple):
    """Sets parameter attribute ``attr_name`` of module ``module_id`` to None.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attar_param = nn.Parameter(torch.zeros(2))
        >>> net = Net()
        >>> net._particle_kernel.version_update(SetParamNoneVersionUpdater(net._module_id, "attar_param"))
        >>> net.attar_param is None
        True
    """

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        new = vdata._derive()
        new._set_meta(self.module_id, _edited(_meta_of(new, self.module_id), self.attr_name, param=None))
        new._del_buffer(self.module_id, self.attr_name)
        removed_modules, removed_params = new._collect_garbage()
        return new, SetParamNoneParticleUpdater(self.module_id, self.attr_name, removed_modules, removed_params)


class DelModuleVersionUpdater(_Simple):
    """Deletes submodule attribute ``attr_name`` of module ``module_id``.

    Raises:
        KeyError: the module has no submodule attribute of that name.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attar_module = nn.Linear(2, 2)
        >>> net = Net()
        >>> net._particle_kernel.version_update(DelModuleVersionUpdater(net._module_id, "attar_module"))
        >>> hasattr(net, "attar_module")
        False
    """

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        new = vdata._derive()
        meta = _meta_of(new, self.module_id)
        if self.attr_name not in meta.sub_modules:
            raise KeyError(
                f"expected a submodule attribute of module {self.module_id} "
                f"(one of {list(meta.sub_modules)}), got {self.attr_name!r}"
            )
        new._set_meta(self.module_id, _edited(meta, self.attr_name))
        removed_modules, removed_params = new._collect_garbage()
        return new, DelModuleParticleUpdater(self.module_id, self.attr_name, removed_modules, removed_params)


class DelParamVersionUpdater(_Simple):
    """Deletes parameter attribute ``attr_name`` of module ``module_id``.

    Raises:
        KeyError: the module has no parameter attribute of that name.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attar_param = nn.Parameter(torch.zeros(2))
        >>> net = Net()
        >>> net._particle_kernel.version_update(DelParamVersionUpdater(net._module_id, "attar_param"))
        >>> hasattr(net, "attar_param")
        False
    """

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        new = vdata._derive()
        meta = _meta_of(new, self.module_id)
        if self.attr_name not in meta.sub_params:
            raise KeyError(
                f"expected a parameter attribute of module {self.module_id} "
                f"(one of {list(meta.sub_params)}), got {self.attr_name!r}"
            )
        new._set_meta(self.module_id, _edited(meta, self.attr_name))
        _, removed_params = new._collect_garbage()
        return new, DelParamParticleUpdater(self.module_id, self.attr_name, removed_params)


class DelBufferVersionUpdater(_Simple):
    """Deletes buffer attribute ``attr_name`` of module ``module_id``.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.zeros(2))
        >>> net = Net()
        >>> net.register_buffer("attar_buffer", torch.randn(3, 3))
        >>> net._particle_kernel.version_update(DelBufferVersionUpdater(net._module_id, "attar_buffer"))
        >>> hasattr(net, "attar_buffer")
        False
    """

    def run(self, vdata: VersionDataImp) -> tuple[VersionDataImp, ParticleUpdater]:
        _meta_of(vdata, self.module_id)
        new = vdata._derive()
        new._del_buffer(self.module_id, self.attr_name)
        return new, DelBufferParticleUpdater(self.module_id, self.attr_name)
