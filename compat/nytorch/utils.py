"""Helpers on modules and parameters: shallow module copies, wiring, parameter clones."""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional, Set

import torch
from torch import nn

from .mtype import MetaDict, Module, ModuleDict, ModuleID, ParamDict, ParamType

_PRIVATE_KEYS = ("_nyto_pin",)


def copy_module(module: Module) -> Module:
    """A shallow copy of ``module``: a new object with its own attribute and
    parameter/buffer/submodule dictionaries, sharing their values.

    Args:
        module: the module to copy (None gives None).
    """
    if module is None:
        return module
    clone = module.__new__(type(module))
    state = module.__dict__.copy()
    for key in _PRIVATE_KEYS:
        state.pop(key, None)
    object.__setattr__(clone, "__dict__", state)
    state["_parameters"] = state["_parameters"].copy()
    state["_buffers"] = state["_buffers"].copy()
    state["_modules"] = state["_modules"].copy()
    if "_non_persistent_buffers_set" in state:
        state["_non_persistent_buffers_set"] = set(state["_non_persistent_buffers_set"])
    return clone


def copy_modules(modules: ModuleDict) -> ModuleDict:
    """Shallow copies (``copy_module``) of every module, under the same ids."""
    return OrderedDict((mid, copy_module(mod)) for mid, mod in modules.items())


def make_modules_ref(
    modules: ModuleDict,
    params: ParamDict,
    metas: MetaDict,
    targets: Optional[Set[ModuleID]] = None,
) -> None:
    """Wire modules to their submodules and parameters as ``metas`` says.

    For every module id in ``targets`` (default: all), the module's
    ``_modules`` and ``_parameters`` are rebuilt from its ``ModuleMeta``,
    taking submodules from ``modules`` and parameters from ``params`` by id.

    Raises:
        KeyError: ``metas`` names an id that ``modules`` or ``params`` lacks.
        AssertionError: ``modules`` and ``metas`` hold different ids.

    Examples:
        >>> from nytorch.mtype import ModuleMeta
        >>> net0, net1 = nn.Module(), nn.Module()
        >>> param0, param1 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(2))
        >>> modules = OrderedDict([(0, net0), (1, net1)])
        >>> params = OrderedDict([(0, param0), (1, param1)])
        >>> metas = OrderedDict([
        ...     (0, ModuleMeta(sub_modules=OrderedDict([("m1", 1)]), sub_params=OrderedDict([("p0", 0)]))),
        ...     (1, ModuleMeta(sub_modules=OrderedDict(), sub_params=OrderedDict([("p1", 1)]))),
        ... ])
        >>> make_modules_ref(modules, params, metas)
        >>> net0.m1 is net1 and net0.p0 is param0 and net1.p1 is param1
        True
    """
    if targets is None:
        targets = modules.keys()
    if len(modules) != len(metas) or any(mid not in metas for mid in modules):
        raise AssertionError(f"modules and metas must hold the same ids, got {sorted(modules)} and {sorted(metas)}")
    unknown = [mid for mid in targets if mid not in metas]
    assert not unknown, f"targets {sorted(unknown)} are not module ids"
    for mid in targets:
        module = modules[mid]
        meta = metas[mid]
        state = module.__dict__
        # plain dicts, as torch's own modules hold
        state["_modules"] = {name: None if sub is None else modules[sub] for name, sub in meta.sub_modules.items()}
        state["_parameters"] = {name: None if pid is None else params[pid] for name, pid in meta.sub_params.items()}
        if "_flat_weights_names" in state:  # RNNs cache references to their weights
            module._init_flat_weights()


def clone_param(param: ParamType) -> ParamType:
    """A new Parameter with a copy of ``param``'s values and its ``requires_grad``."""
    with torch.no_grad():
        return nn.Parameter(param.clone(), requires_grad=param.requires_grad)


def clone_params(params: Mapping) -> ParamDict:
    """``clone_param`` of every parameter (None stays None), under the same ids."""
    return OrderedDict((k, None if v is None else clone_param(v)) for k, v in params.items())
