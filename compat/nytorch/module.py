"""NytoModule (a particle that is an ``nn.Module``) and ParamProduct (its arithmetic).

Every operator computes its result when it runs and returns a real object:
``0.5 * net`` a new NytoModule particle, ``0.5 * net.product()`` a new
ParamProduct. The arithmetic is the legacy library's, parameter by
parameter (``_arith``), so results have nytorch 1.1.0's bits. A product
made from a module holds that module's very parameter objects; the tensors
of a computed product become ``nn.Parameter`` objects (with the
``requires_grad`` of the parameter they came from) when a module is built
from it or its ``params`` are read.
"""

from __future__ import annotations

import numbers
import warnings
from collections import OrderedDict
from typing import Any, Callable, Optional, TypeVar

import torch
from torch import nn
from typing_extensions import Self

from . import _arith as ar
from . import _bridge as br
from .base import (
    _NO_KERNEL,
    NytoModuleBase,
    ParticleDataImp,
    ParticleKernelImp,
    VersionDataImp,
    _get_kernel,
    spawn,
)
from .kernel import Particle, ParticleKernel, Product
from .mtype import Module, ModuleID, ParamConfig, ParamDict, ParamID, ParamType, ROOT_MODULE_ID
from .version_updater import (
    AddModuleVersionUpdater,
    AddParamVersionUpdater,
    DelBufferVersionUpdater,
    DelModuleVersionUpdater,
    DelParamVersionUpdater,
    RegisterBufferVersionUpdater,
    SetModuleNoneVersionUpdater,
    SetParamNoneVersionUpdater,
)

Tmodule = TypeVar("Tmodule", bound="NytoModule")


class _TypeAssertionError(TypeError, AssertionError):
    """A wrong type where the legacy library asserted: both a TypeError and an AssertionError."""


def unary_lambda_wrapper(fn: Callable[[ParamType], torch.Tensor]) -> Callable[[ParamType, ParamConfig], ParamType]:
    """Turn ``fn(param) -> tensor`` into a ``unary_operator`` function.

    Operational parameters become ``Parameter(fn(p))``; the others a copy
    (``clone=True``) or ``p`` itself. ``requires_grad`` is kept.
    """

    def wrapped(p: ParamType, conf: ParamConfig) -> ParamType:
        if conf.operational:
            return ParamType(fn(p), requires_grad=p.requires_grad)
        if conf.clone:
            return ParamType(p.clone(), requires_grad=p.requires_grad)
        return p

    return wrapped


def binary_lambda_wrapper(
    fn: Callable[[ParamType, ParamType], torch.Tensor],
) -> Callable[[ParamType, ParamType, ParamConfig], ParamType]:
    """Turn ``fn(lp, rp) -> tensor`` into a ``binary_operator`` function.

    Operational parameters become ``Parameter(fn(lp, rp))``; the others a
    copy of ``lp`` (``clone=True``) or ``lp`` itself. ``requires_grad`` is
    taken from ``lp``.
    """

    def wrapped(lp: ParamType, rp: ParamType, conf: ParamConfig) -> ParamType:
        if conf.operational:
            return ParamType(fn(lp, rp), requires_grad=lp.requires_grad)
        if conf.clone:
            return ParamType(lp.clone(), requires_grad=lp.requires_grad)
        return lp

    return wrapped


def module_to_product(module: Tmodule) -> "ParamProduct":
    """The product of ``module``'s particle (its module id is remembered).

    Raises:
        AssertionError: ``module`` has no particle kernel.
    """
    kernel = _get_kernel(module)
    assert kernel is not None, _NO_KERNEL
    return ParamProduct._of_kernel(kernel, module._module_id)


def product_to_module(product: "ParamProduct") -> Module:
    """A new particle holding ``product``'s parameters; returns its module ``product.module_id``.

    The new particle is of the product's species and version. When the
    module is not the root, it keeps its particle's root alive.
    """
    params = product.params
    return spawn(product.kernel.data, product._version, OrderedDict(params), product.module_id)


def _as_params(pids: Any, tensors: Any, grads: Any) -> OrderedDict:
    """id -> parameter: result tensors wrapped with the given ``requires_grad`` (a parameter that already is one is kept)."""
    made: OrderedDict = OrderedDict()
    for pid, t, g in zip(pids, tensors, grads):
        if type(t) is torch.Tensor:  # a fresh result: what Parameter.__new__ does for one, minus its frame
            t = _make_param(ParamType, t, g)
        elif not (isinstance(t, ParamType) and t.requires_grad == g):
            t = ParamType(t, requires_grad=g)
        made[pid] = t
    return made


_make_param = torch.Tensor._make_subclass


def _adopt(data: ParticleDataImp, module_id: ModuleID) -> Module:
    """Module ``module_id`` of a new particle, which from now on its root module owns."""
    root = data._root()
    data._weaken_root()
    module = data._module(module_id)
    if module_id != ROOT_MODULE_ID:
        module.__dict__["_nyto_pin"] = root
    return module


def product_assign_to_module(product: "ParamProduct", module: Tmodule) -> None:
    """Give ``module``'s particle the values of ``product``, in place (same parameter objects).

    Raises:
        AssertionError: the product is of another species or version, or the
            module has no particle kernel.
    """
    kernel = _get_kernel(module)
    assert kernel is not None, _NO_KERNEL
    assert product.kernel.version is kernel.version, (
        "the product is of another species (or an older version of this one); "
        "products can only be assigned to particles of the same species and version"
    )
    kernel.data.assign(product.params)


def _is_scalar(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dim() == 0
    return isinstance(x, numbers.Real)


class ParamProduct(Product[Tmodule]):
    """The arithmetic face of a NytoModule particle.

    Args:
        kernel: the particle kernel the product comes from.
        module_id: which module ``module()`` returns.
        params: parameter id -> parameter, in id order.

    Attributes:
        kernel, module_id: as given.
        params: parameter id -> ``nn.Parameter`` (made on first read for a
            computed product).
        vdata, pdata: the version data and particle data of ``kernel``.

    Arithmetic with numbers, 0-d tensors and products of the same species
    is computed at once, parameter by parameter as nytorch 1.1.0 computes
    it, without recording gradients. Products of different species raise
    ``AssertionError``.

    Examples:
        >>> from nytorch import NytoModule
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.my_param = nn.Parameter(torch.tensor([0., 1., 2.]))
        >>> net1 = Net(); net2 = net1.clone(); net2.my_param.data = torch.tensor([2., 3., 4.])
        >>> new_net = (0.5 * net1.product() + 0.5 * net2.product()).module()
        >>> new_net.my_param
        Parameter containing:
        tensor([1., 2., 3.], requires_grad=True)
    """

    __slots__ = ("kernel", "module_id", "_values", "_grads", "_species", "_params", "_version", "_pin")

    kernel: ParticleKernelImp
    module_id: ModuleID

    def __init__(self, kernel: ParticleKernelImp, module_id: ModuleID, params: ParamDict) -> None:
        version = kernel.version
        species = version.data.species
        ids = br.pids_of(species)
        assert tuple(params.keys()) == ids, (
            f"expected parameters with ids {list(ids)} (this version's), got {list(params.keys())}"
        )
        self._set(kernel, module_id, version, species, list(params.values()))
        self._params = params if all(isinstance(t, ParamType) for t in self._values) else None

    def _set(self, kernel: Any, module_id: ModuleID, version: Any, species: Any, values: list) -> None:
        self.kernel = kernel
        self.module_id = module_id
        self._version = version
        self._species = species
        self._values = values
        self._grads = tuple([t.requires_grad for t in values])
        self._params = None
        self._pin = kernel.data._root()  # keeps the source particle (its modules) alive

    @classmethod
    def _of_kernel(cls, kernel: ParticleKernelImp, module_id: ModuleID) -> "ParamProduct":
        params = kernel.data.params
        version = kernel.version
        self = cls.__new__(cls)
        self._set(kernel, module_id, version, version.data.species, list(params.values()))
        self._params = params
        return self

    def _derive(self, values: list, species: Any, grads: Optional[tuple] = None) -> "ParamProduct":
        new = ParamProduct.__new__(ParamProduct)
        new.kernel = self.kernel
        new.module_id = self.module_id
        new._version = self._version
        new._species = species
        new._values = values
        new._grads = self._grads if grads is None else grads
        new._params = None
        new._pin = self._pin
        return new

    def __repr__(self) -> str:
        return f"ParamProduct({self.params!r})"

    # -- attributes -------------------------------------------------------------

    @property
    def params(self) -> ParamDict:
        params = self._params
        if params is None:
            params = self._params = _as_params(br.pids_of(self._species), self._values, self._grads)
        return params

    @params.setter
    def params(self, value: ParamDict) -> None:
        values = list(value.values())
        self._values = values
        self._grads = tuple(t.requires_grad for t in values)
        self._params = OrderedDict(value)

    @property
    def vdata(self) -> VersionDataImp:
        """The version data of the product's particle."""
        return self.kernel.version.data

    @property
    def pdata(self) -> ParticleDataImp:
        """The particle data of the product's particle."""
        return self.kernel.data

    def _now(self) -> tuple:
        """``(tensors, species)``: the values under the current config of the product's version."""
        species = self._version.data.species
        if self._species is species:
            return self._values, species
        return list(br.Transition(self._species, species).advance(self._values)), species

    # -- conversion -----------------------------------------------------------------

    def particle(self) -> Tmodule:  # type: ignore[override]
        """A new NytoModule particle holding these parameters (module ``module_id`` of it)."""
        return product_to_module(self)  # type: ignore[return-value]

    def module(self) -> Tmodule:
        """Same as ``particle()``."""
        return product_to_module(self)  # type: ignore[return-value]

    # -- custom operators ---------------------------------------------------------

    def _configs(self) -> list:
        view = self._version.data.config
        return [view[pid] for pid in br.pids_of(self._version.data.species)]

    def unary_operator(self, fn: Callable[[ParamType, ParamConfig], ParamType]) -> "ParamProduct":
        """A new product with ``fn(param, config)`` for every parameter (no gradient recorded).

        Examples:
            >>> from nytorch import NytoModule
            >>> class Net(NytoModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.my_param = nn.Parameter(torch.tensor([0., 1., 2.]))
            >>> net = Net()
            >>> new_net = net.product().unary_operator(lambda p, conf: nn.Parameter(p + 10.)).module()
            >>> new_net.my_param
            Parameter containing:
            tensor([10., 11., 12.], requires_grad=True)
        """
        params = self.params
        configs = self._configs()
        with torch.no_grad():
            results = [fn(p, c) for p, c in zip(params.values(), configs)]
        return self._from_results(results)

    def binary_operator(
        self, other: "ParamProduct", fn: Callable[[ParamType, ParamType, ParamConfig], ParamType]
    ) -> "ParamProduct":
        """A new product with ``fn(mine, theirs, config)`` for every parameter (no gradient recorded).

        Raises:
            AssertionError: ``other`` is not a product of the same species and version.
        """
        self._check_other(other)
        left, right = self.params, other.params
        configs = self._configs()
        with torch.no_grad():
            results = [fn(a, b, c) for a, b, c in zip(left.values(), right.values(), configs)]
        return self._from_results(results)

    def _from_results(self, results: list) -> "ParamProduct":
        species = self._version.data.species
        for pid, r in zip(br.pids_of(species), results):
            if not isinstance(r, torch.Tensor):
                raise TypeError(f"the operator must return a tensor for parameter {pid}, got {type(r).__name__}")
        grads = tuple(r.requires_grad if isinstance(r, ParamType) else g for r, g in zip(results, self._grads))
        new = self._derive(list(results), species, grads)
        if all(isinstance(r, ParamType) for r in results):
            new._params = OrderedDict(zip(br.pids_of(species), results))  # the very objects fn made
        return new

    def _check_other(self, other: Any) -> None:
        assert isinstance(other, ParamProduct), f"expected a ParamProduct, got {type(other).__name__}"
        assert other.kernel.version is self.kernel.version, _OTHER_SPECIES

    # -- arithmetic -------------------------------------------------------------------

    def _plan(self, species: Any) -> ar.Plan:
        vdata = self._version.data
        return vdata._arith_plan() if vdata._species is species else ar.plan_of(species)

    def _scalar(self, other: Any, kind: int) -> "ParamProduct":
        mine, species = self._now()
        return self._derive(ar.apply(self._plan(species), kind, mine, other), species)

    def _binary(self, other: Any, kind: int, fallback: Callable) -> "ParamProduct":
        okind = type(other)
        if okind is float or okind is int:
            return self._scalar(other, kind)
        assert not isinstance(other, NytoModule), (
            "a product cannot be combined with a NytoModule; call .product() on the module too"
        )
        if isinstance(other, ParamProduct):
            self._check_other(other)
            mine, species = self._now()
            theirs, their_species = other._now()
            assert their_species is species, _OTHER_SPECIES
            return self._derive(ar.apply(self._plan(species), kind, mine, list(theirs)), species)
        if _is_scalar(other):
            return self._scalar(other, kind)
        return self.unary_operator(unary_lambda_wrapper(fallback))

    def _reflected(self, other: Any, kind: int, fallback: Callable) -> "ParamProduct":
        okind = type(other)
        if okind is float or okind is int:
            return self._scalar(other, kind)
        assert not isinstance(other, NytoModule), (
            "a product cannot be combined with a NytoModule; call .product() on the module too"
        )
        if _is_scalar(other):
            return self._scalar(other, kind)
        return self.unary_operator(unary_lambda_wrapper(fallback))

    def __neg__(self) -> "ParamProduct":
        return self._scalar(None, ar.NEG)

    def __pow__(self, power: Any) -> "ParamProduct":
        return self._binary(power, ar.POW, lambda p: p**power)

    def __rpow__(self, base: Any) -> "ParamProduct":
        return self._reflected(base, ar.RPOW, lambda p: base**p)

    def __add__(self, other: Any) -> "ParamProduct":
        return self._binary(other, ar.ADD, lambda p: p + other)

    def __sub__(self, other: Any) -> "ParamProduct":
        return self._binary(other, ar.SUB, lambda p: p - other)

    def __rsub__(self, other: Any) -> "ParamProduct":
        return self._reflected(other, ar.RSUB, lambda p: other - p)

    def __mul__(self, other: Any) -> "ParamProduct":
        return self._binary(other, ar.MUL, lambda p: p * other)

    def __truediv__(self, other: Any) -> "ParamProduct":
        return self._binary(other, ar.DIV, lambda p: p / other)

    def __rtruediv__(self, other: Any) -> "ParamProduct":
        return self._reflected(other, ar.RDIV, lambda p: other / p)

    def _each(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ParamProduct":
        mine, species = self._now()
        return self._derive(ar.apply_each(self._plan(species), mine, fn), species)

    def clone(self) -> "ParamProduct":
        """A copy (non-operational parameters as their config says)."""
        return self._each(torch.Tensor.clone)

    def randn(self) -> "ParamProduct":
        """Operational parameters redrawn from N(0, 1) (torch's global RNG, one draw per parameter in id order)."""
        return self._each(torch.randn_like)

    def rand(self) -> "ParamProduct":
        """Operational parameters redrawn from U[0, 1) (torch's global RNG, one draw per parameter in id order)."""
        return self._each(torch.rand_like)


# ---------------------------------------------------------------------------
# NytoModule
# ---------------------------------------------------------------------------


def _check_name(module: nn.Module, name: Any, what: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{what} name should be a string. Got {torch.typename(name)}")
    if name == "":
        raise KeyError(f'{what} name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{what} name can\'t contain "."')
    if hasattr(type(module), name) and not (
        name in module._parameters or name in module._modules or name in module._buffers
    ):
        raise KeyError(f"attribute '{name}' already exists")


def _catch_up(module: nn.Module) -> None:
    kernel = _get_kernel(module)
    if kernel is not None and kernel.version.next_version is not None:
        kernel.particle_update()


def _apply_configs(vdata: VersionDataImp, pids: Any, fn: Callable[[ParamID, ParamConfig], None]) -> None:
    view = vdata.config
    wanted = set(pids)
    for pid in list(view):
        if pid in wanted:
            fn(pid, view[pid])


_OTHER_SPECIES = (
    "particles of different species (or of different versions of one species: touch() them first) "
    "cannot be combined"
)


class NytoModule(NytoModuleBase, Particle[ParamProduct]):
    """An ``nn.Module`` that is a particle: arithmetic, products, versions.

    Subclass it instead of ``nn.Module``. Every structural change (adding,
    deleting or setting to None a parameter, submodule or buffer) makes a new
    version of the species; other particles catch up on ``touch()`` and
    automatically before a particle operation or an edit.

    Examples:
        >>> class Net(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.my_param = nn.Parameter(torch.Tensor([0., 1., 2.]))
        >>> (2 * Net()).my_param
        Parameter containing:
        tensor([0., 2., 4.], requires_grad=True)
    """

    # -- attribute protocol ---------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, NytoModuleBase):
            mine, theirs = _get_kernel(self), _get_kernel(value)
            if mine is theirs and value._module_id == ROOT_MODULE_ID:
                warnings.warn("circular references to the root module", stacklevel=2)
            if mine is not theirs and value._module_id != ROOT_MODULE_ID:
                warnings.warn("modules from different particles refer to the same module", stacklevel=2)
        if isinstance(value, ParamType):
            return self.register_parameter(name, value)
        if isinstance(value, Module):
            return self.add_module(name, value)
        state = self.__dict__
        if not name.startswith("_"):  # catch up first: the name may be one another particle added
            kernel = _get_kernel(self)
            if kernel is not None and kernel.version.next_version is not None:
                kernel.particle_update()
        if name in state.get("_parameters", ()):
            return self.register_parameter(name, value)
        if name in state.get("_modules", ()):
            return self.add_module(name, value)
        if name in state.get("_buffers", ()):
            return self.register_buffer(name, value)
        return super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        kernel = _get_kernel(self)
        if kernel is not None and kernel.version.next_version is not None:
            kernel.particle_update()
        if name in self._modules:
            self._version_update(DelModuleVersionUpdater(self._module_id, name))
        elif name in self._parameters:
            self._version_update(DelParamVersionUpdater(self._module_id, name))
        elif name in self._buffers:
            self._version_update(DelBufferVersionUpdater(self._module_id, name))
        else:
            super().__delattr__(name)

    def _version_update(self, updater: Any) -> None:
        kernel = _get_kernel(self)
        assert kernel is not None, _NO_KERNEL
        kernel.version_update(updater)

    def register_parameter(self, name: str, param: Optional[ParamType]) -> None:
        """Add (or replace, or set to None) parameter ``name``; makes a new version."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        _check_name(self, name, "parameter")
        if param is None:
            return self._version_update(SetParamNoneVersionUpdater(self._module_id, name))
        if not isinstance(param, ParamType):
            raise _TypeAssertionError(
                f"cannot assign '{torch.typename(param)}' object to parameter '{name}' "
                "(torch.nn.Parameter or None required)"
            )
        self._version_update(AddParamVersionUpdater(self._module_id, name, param))

    def add_module(self, name: str, module: Optional[Module]) -> None:
        """Add (or replace, or set to None) submodule ``name``; makes a new version."""
        if "_modules" not in self.__dict__:
            raise AttributeError("cannot assign module before Module.__init__() call")
        _catch_up(self)  # the names another particle added are checked too, as in the legacy library
        _check_name(self, name, "module")
        if module is None:
            return self._version_update(SetModuleNoneVersionUpdater(self._module_id, name))
        if not isinstance(module, Module):
            raise _TypeAssertionError(f"{torch.typename(module)} is not a Module subclass")
        if name in self._parameters:  # as torch's Module.__setattr__, which the legacy library runs here
            raise TypeError(
                f"cannot assign '{torch.typename(module)}' as parameter '{name}' (torch.nn.Parameter or None expected)"
            )
        self._version_update(AddModuleVersionUpdater(self._module_id, name, module))

    def register_buffer(self, name: str, tensor: Optional[torch.Tensor], persistent: bool = True) -> None:
        """Add (or replace) buffer ``name``, shared by every particle of the species; makes a new version.

        Examples:
            >>> from nytorch import NytoModule
            >>> class Norm(NytoModule):
            ...     def __init__(self, num_features):
            ...         super().__init__()
            ...         self.register_buffer("running_mean", torch.zeros(num_features))
            >>> Norm(3).running_mean
            tensor([0., 0., 0.])
        """
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        _catch_up(self)  # the names another particle added are checked too, as in the legacy library
        _check_name(self, name, "buffer")
        if name not in self._buffers and (name in self.__dict__ or name in self._parameters or name in self._modules):
            raise KeyError(f"attribute '{name}' already exists")  # as torch's register_buffer (the legacy refusal)
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise _TypeAssertionError(
                f"cannot assign '{torch.typename(tensor)}' object to buffer '{name}' (torch Tensor or None required)"
            )
        self._version_update(RegisterBufferVersionUpdater(self._module_id, name, tensor, persistent))

    # -- particle arithmetic ----------------------------------------------------

    # ``self OP other`` is ``(self.product() OP other.product()).particle()``
    # (kernel.Particle). For the common operands (a Python int or float, or a
    # module of the very same class) ``_inline`` does the same steps without
    # the intermediate products; anything else, or a subclass that overrides
    # ``product``/``touch``/``_operand``, takes the generic way. Both give a
    # new, real module computed now.

    def __add__(self, other: Any) -> Any:
        out = _inline(self, other, ar.ADD)
        return Particle.__add__(self, other) if out is None else out

    def __radd__(self, other: Any) -> Any:
        out = _inline(self, other, ar.ADD)
        return Particle.__radd__(self, other) if out is None else out

    def __sub__(self, other: Any) -> Any:
        out = _inline(self, other, ar.SUB)
        return Particle.__sub__(self, other) if out is None else out

    def __rsub__(self, other: Any) -> Any:
        out = _inline(self, other, ar.RSUB) if type(other) in _NUMBERS else None
        return Particle.__rsub__(self, other) if out is None else out

    def __mul__(self, other: Any) -> Any:
        out = _inline(self, other, ar.MUL)
        return Particle.__mul__(self, other) if out is None else out

    def __rmul__(self, other: Any) -> Any:
        out = _inline(self, other, ar.MUL)
        return Particle.__rmul__(self, other) if out is None else out

    def __truediv__(self, other: Any) -> Any:
        out = _inline(self, other, ar.DIV)
        return Particle.__truediv__(self, other) if out is None else out

    def __rtruediv__(self, other: Any) -> Any:
        out = _inline(self, other, ar.RDIV) if type(other) in _NUMBERS else None
        return Particle.__rtruediv__(self, other) if out is None else out

    def __pow__(self, power: Any) -> Any:
        out = _inline(self, power, ar.POW)
        return Particle.__pow__(self, power) if out is None else out

    def __rpow__(self, base: Any) -> Any:
        out = _inline(self, base, ar.RPOW) if type(base) in _NUMBERS else None
        return Particle.__rpow__(self, base) if out is None else out

    def __iadd__(self, other: Any) -> Any:
        out = _inline_inplace(self, other, ar.ADD)
        return Particle.__iadd__(self, other) if out is None else out

    def __isub__(self, other: Any) -> Any:
        out = _inline_inplace(self, other, ar.SUB)
        return Particle.__isub__(self, other) if out is None else out

    def __imul__(self, other: Any) -> Any:
        out = _inline_inplace(self, other, ar.MUL)
        return Particle.__imul__(self, other) if out is None else out

    def __itruediv__(self, other: Any) -> Any:
        out = _inline_inplace(self, other, ar.DIV)
        return Particle.__itruediv__(self, other) if out is None else out

    def __ipow__(self, power: Any) -> Any:
        out = _inline_inplace(self, power, ar.POW)
        return Particle.__ipow__(self, power) if out is None else out

    # -- particles ---------------------------------------------------------------

    def touch(self) -> Self:
        """Bring this particle to the newest version of its species; returns self.

        Examples:
            >>> from nytorch import NytoModule
            >>> class Net(NytoModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.weight = nn.Parameter(torch.zeros(2))
            >>> net1 = Net()
            >>> net2 = net1.clone(); net1.my_param = nn.Parameter(torch.randn(2, 2))
            >>> hasattr(net2, "my_param"), hasattr(net2.touch(), "my_param")
            (False, True)
        """
        kernel = _get_kernel(self)
        assert kernel is not None, _NO_KERNEL
        if kernel.version.next_version is not None:
            kernel.particle_update()
        return self

    def product(self) -> ParamProduct:
        """This particle as a ``ParamProduct`` (after catching up with the newest version)."""
        return module_to_product(self.touch())

    def product_(self, product: ParamProduct) -> Self:
        """Give this particle the values of ``product`` (same parameter objects); returns self."""
        product_assign_to_module(product, self)
        return self

    def clone_from(self: Tmodule, source: Module) -> Tmodule:
        """A new particle of this species holding a copy of ``source``'s state (another species).

        Examples:
            >>> from nytorch import NytoModule
            >>> class Net(NytoModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.my_param = nn.Parameter(torch.zeros(2))
            >>> net1, net2 = Net(), Net()     # two species
            >>> net3 = net1.clone_from(net2)
            >>> net3._version_kernel is net1._version_kernel, net3.my_param is net1.my_param
            (True, False)
        """
        clone = self.clone()
        clone.load_state_dict(source.state_dict())
        return clone

    def detach(self: Tmodule) -> Tmodule:
        """The same parameter objects as a particle of a new species.

        Examples:
            >>> from nytorch import NytoModule
            >>> class Net(NytoModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.my_param = nn.Parameter(torch.zeros(2))
            >>> net1 = Net()
            >>> net2 = net1.detach()
            >>> net2._version_kernel is net1._version_kernel, net2.my_param is net1.my_param
            (False, True)
        """
        kernel = _get_kernel(self.touch())
        assert kernel is not None, _NO_KERNEL
        return _adopt(kernel.detach().data, self._module_id)  # type: ignore[return-value]

    # -- configs -----------------------------------------------------------------

    def apply_param_config(self, fn: Callable[[ParamID, ParamConfig], None], name: Optional[str] = None) -> None:
        """Call ``fn(param_id, config)`` on the configs of this module's parameters (or of ``name``'s).

        ``fn`` changes the config in place (``config.operational = False``,
        or a user attribute such as ``config.is_weight = True``); the change
        applies to every particle of the species.

        Raises:
            ValueError: ``name`` is not a parameter or submodule of this module (or is None).
        """
        self.touch()
        vdata = self._version_kernel.data
        if name is None:
            pids = vdata.get_sub_params(self._module_id)
        else:
            meta = vdata.meta[self._module_id]
            if meta.sub_modules.get(name) is not None:
                pids = vdata.get_sub_params(meta.sub_modules[name])
            elif meta.sub_params.get(name) is not None:
                pids = {meta.sub_params[name]}
            else:
                raise ValueError(f"attar {name} is None or not exists")
        _apply_configs(vdata, pids, fn)

    def set_param_config(
        self, operational: Optional[bool] = None, clone: Optional[bool] = None, name: Optional[str] = None
    ) -> None:
        """Set ``operational`` and/or ``clone`` for this module's parameters (or ``name``'s).

        Examples:
            >>> from nytorch import NytoModule
            >>> class Net(NytoModule):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.my_module = nn.Linear(1, 1)
            ...         self.my_param = nn.Parameter(torch.ones(1))
            >>> net = Net()
            >>> net.set_param_config(operational=False, name="my_module")
            >>> torch.equal((2 * net).my_module.weight, net.my_module.weight), (2 * net).my_param.item()
            (True, 2.0)
        """

        def change(pid: ParamID, conf: ParamConfig) -> None:
            if operational is not None:
                conf.operational = operational
            if clone is not None:
                conf.clone = clone

        self.apply_param_config(change, name)

    def get_param_id(self, target_param: ParamType) -> ParamID:
        """The id of ``target_param`` in this particle.

        Raises:
            ValueError: the parameter is not one of this particle's.
        """
        kernel = _get_kernel(self)
        assert kernel is not None, _NO_KERNEL
        for pid, param in kernel.data.params.items():
            if param is target_param:
                return pid
        raise ValueError(f"can not found param: {target_param}")


_PRODUCT, _TOUCH, _OPERAND = NytoModule.product, NytoModule.touch, Particle._operand
_NUMBERS = (int, float)


def _operands(self: NytoModule, other: Any) -> Any:
    """``(kernel, theirs)`` for the inline path, both particles caught up; None: take the generic path.

    ``theirs`` is the number, or the other module's parameters (a list in
    id order). Catches up as ``product()`` does: ``self`` first, then
    ``other``; a module of another species (or version) raises the generic
    path's ``AssertionError``.
    """
    cls = type(self)
    if not (cls.product is _PRODUCT and cls.touch is _TOUCH and cls._operand is _OPERAND):
        return None
    kind = type(other)
    if not (kind is float or kind is int or kind is cls):
        return None
    kernel = _get_kernel(self)
    if kernel is None:
        return None
    if kernel.version.next_version is not None:
        kernel.particle_update()
    if kind is not cls:
        return kernel, other
    okernel = _get_kernel(other)
    assert okernel is not None, _NO_KERNEL
    if okernel.version.next_version is not None:
        okernel.particle_update()
    assert okernel.version is kernel.version, _OTHER_SPECIES
    return kernel, list(okernel.data.params.values())


def _inline(self: NytoModule, other: Any, kind: int) -> Any:
    """``self OP other`` as a new module (module ``self._module_id`` of a new particle); None: not inline."""
    found = _operands(self, other)
    if found is None:
        return None
    kernel, theirs = found
    version = kernel.version
    vdata = version.data
    data = kernel.data
    mine = list(data.params.values())
    plan = vdata._arith_plan()
    out = ar.apply(plan, kind, mine, theirs)
    return spawn(data, version, _as_params(plan.ids, out, [t.requires_grad for t in mine]), self._module_id)


def _inline_inplace(self: NytoModule, other: Any, kind: int) -> Any:
    """``self OP= other``: the result's data goes into this particle's parameter objects, as ``product_``."""
    found = _operands(self, other)
    if found is None:
        return None
    kernel, theirs = found
    mine = list(kernel.data.params.values())
    out = ar.apply(kernel.version.data._arith_plan(), kind, mine, theirs)
    for param, new in zip(mine, out):
        if param is not new:  # a shared non-operational parameter stays as it is
            param.data = new
    return self
