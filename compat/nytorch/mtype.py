"""Shared types of the legacy API: ids, ``ModuleMeta`` and ``ParamConfig``.

``ParamConfig`` here is the legacy, mutable record that user callbacks
receive (``apply_param_config``); the species stores the immutable
``nytorch_fn.ParamConfig`` and converts at the boundary: ``operational`` and
``clone`` map to the same fields, every user attribute (``is_weight``, ...)
maps to an entry of ``tags``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional
from typing import OrderedDict as OrderedDictType

from torch import nn

ModuleID = int
ParamID = int
Module = nn.Module
ParamType = nn.Parameter
ROOT_MODULE_ID: ModuleID = 0

_FIELDS = ("operational", "clone")


class ModuleMeta:
    """Maps a module's attribute names to the ids of its submodules and parameters.

    Attributes:
        sub_modules: attribute name -> submodule id (None: a None slot).
        sub_params: attribute name -> parameter id (None: a None slot).

    A version never changes the metas it holds; an edit builds new ones.
    """

    __slots__ = ("sub_modules", "sub_params")

    def __init__(
        self,
        sub_modules: Mapping[str, Optional[ModuleID]],
        sub_params: Mapping[str, Optional[ParamID]],
    ) -> None:
        self.sub_modules = sub_modules if isinstance(sub_modules, OrderedDict) else OrderedDict(sub_modules)
        self.sub_params = sub_params if isinstance(sub_params, OrderedDict) else OrderedDict(sub_params)

    def copy(self) -> "ModuleMeta":
        """A copy with its own two dictionaries."""
        return ModuleMeta(OrderedDict(self.sub_modules), OrderedDict(self.sub_params))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModuleMeta):
            return NotImplemented
        return self.sub_modules == other.sub_modules and self.sub_params == other.sub_params

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ModuleMeta(sub_modules={self.sub_modules}, sub_params={self.sub_params})"


class ParamConfig:
    """How particle operations treat one parameter (the legacy, mutable form).

    Attributes:
        operational: the parameter takes part in particle operations.
        clone: when not operational, results get a copy (True) or the very
            same parameter object (False).

    Users may add attributes of their own (``config.is_weight = True``) for
    custom operators; they are kept by the species and shown in ``repr``.
    """

    operational: bool = True
    clone: bool = True

    def __init__(self, operational: bool = True, clone: bool = True) -> None:
        self.operational = operational
        self.clone = clone

    def __repr__(self) -> str:
        return f"ParamConfig({', '.join(k + '=' + repr(v) for k, v in self.__dict__.items())})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParamConfig):
            return NotImplemented
        return vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> "ParamConfig":
        """A copy, user attributes included."""
        new = ParamConfig(self.operational, self.clone)
        for key, value in self.__dict__.items():
            if key not in _FIELDS:
                object.__setattr__(new, key, value)
        return new


ModuleDict = OrderedDictType[ModuleID, Module]
ParamDict = OrderedDictType[ParamID, ParamType]
MetaDict = OrderedDictType[ModuleID, ModuleMeta]
ConfigDict = OrderedDictType[ParamID, ParamConfig]
