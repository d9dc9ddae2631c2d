"""NytoModule (a particle that is an ``nn.Module``) and ParamProduct (its arithmetic).

A ``ParamProduct`` holds a core ``nytorch_fn.Particle`` whose tensors are,
for a product made from a module, that module's very parameter objects.
Arithmetic is the core's (fused ``foreach`` kernels, ``a*p + b*q`` in one
pass), run under ``torch.no_grad()``; turning the result back into a module
wraps each new tensor in an ``nn.Parameter`` with the ``requires_grad`` of the
parameter it came from.
"""

from __future__ import annotations

import numbers
import warnings
from collections import OrderedDict
from typing import Any, Callable, Optional, TypeVar

import torch
from torch import nn
from typing_extensions import Self

from . import _bridge as br
from . import _fuse
from .base import (
    _NO_KERNEL,
    NytoModuleBase,
    ParticleDataImp,
    ParticleKernelImp,
    VersionDataImp,
    _get_kernel,
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
    return _spawn(product.kernel.data, product._version, product.params, product.module_id)


def _spawn(source: ParticleDataImp, version: Any, params: ParamDict, module_id: ModuleID) -> Module:
    """Module ``module_id`` of a new particle of ``version`` with ``source``'s structure and ``params``."""
    data = source.create(version.data, params)
    ParticleKernel(version, data)
    return _adopt(data, module_id)


def _spawn_tensors(source: ParticleDataImp, version: Any, tensors: Any, grads: Any, module_id: ModuleID) -> Module:
    """``_spawn`` with result tensors (in id order), made parameters with the given ``requires_grad``."""
    params = OrderedDict(zip(br.pids_of(version.data.species), _as_params(tensors, grads)))
    return _spawn(source, version, params, module_id)


def _as_params(tensors: Any, grads: Any) -> list:
    """Result tensors as parameters with the given ``requires_grad`` (a parameter that already is one is kept)."""
    made = []
    for t, g in zip(tensors, grads):
        if type(t) is torch.Tensor:  # a fresh result: what Parameter.__new__ does for one, minus its frame
            t = _make_param(ParamType, t, g)
        elif not (isinstance(t, ParamType) and t.requires_grad == g):
            t = ParamType(t, requires_grad=g)
        made.append(t)
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
        params: parameter id -> ``nn.Parameter`` (materialised on first read).
        vdata, pdata: the version data and particle data of ``kernel``.

    Arithmetic with numbers, 0-d tensors and products of the same species
    runs on the functional core without recording gradients. Products of
    different species raise ``AssertionError``.

    Example:
        >>> new_net = (0.5 * net1.product() + 0.5 * net2.product()).module()
    """

    __slots__ = ("kernel", "module_id", "_particle", "_grads", "_params", "_version", "_pin", "_scale")

    kernel: ParticleKernelImp
    module_id: ModuleID

    def __init__(self, kernel: ParticleKernelImp, module_id: ModuleID, params: ParamDict) -> None:
        version = kernel.version
        species = version.data.species
        ids = br.pids_of(species)
        assert tuple(params.keys()) == ids, (
            f"expected parameters with ids {list(ids)} (this version's), got {list(params.keys())}"
        )
        tensors = list(params.values())
        self._set(kernel, module_id, br.particle_of(species, tensors), tuple(t.requires_grad for t in tensors), version)
        self._params = params if all(isinstance(t, ParamType) for t in tensors) else None

    def _set(self, kernel: Any, module_id: ModuleID, particle: Any, grads: tuple, version: Any) -> None:
        self.kernel = kernel
        self.module_id = module_id
        self._particle = particle
        self._grads = grads
        self._version = version
        self._params = None
        self._pin = kernel.data._root()
        self._scale = None

    @classmethod
    def _of_kernel(cls, kernel: ParticleKernelImp, module_id: ModuleID) -> "ParamProduct":
        data = kernel.data
        params = data.params
        version = kernel.version
        tensors = list(params.values())
        self = cls.__new__(cls)
        self.kernel = kernel
        self.module_id = module_id
        self._particle = br.particle_of(version.data.species, tensors)
        self._grads = tuple([t.requires_grad for t in tensors])
        self._version = version
        self._params = params
        self._pin = data._root()
        self._scale = None
        return self

    def _derive(self, particle: Any, grads: Optional[tuple] = None, scale: Any = None) -> "ParamProduct":
        new = ParamProduct.__new__(ParamProduct)
        new.kernel = self.kernel
        new.module_id = self.module_id
        new._particle = particle
        new._grads = self._grads if grads is None else grads
        new._version = self._version
        new._params = None
        new._pin = self._pin
        new._scale = scale  # (d, q) when particle is d * q (see _bridge.combine)
        return new

    def __repr__(self) -> str:
        return f"ParamProduct({self.params!r})"

    # -- attributes -------------------------------------------------------------

    @property
    def params(self) -> ParamDict:
        params = self._params
        if params is None:
            made = _as_params(br.leaves(self._particle), self._grads)
            params = self._params = OrderedDict(zip(br.pids_of(self._particle.species), made))
        return params

    @params.setter
    def params(self, value: ParamDict) -> None:
        species = self._particle.species
        tensors = list(value.values())
        self._particle = br.particle_of(species, tensors)
        self._grads = tuple(t.requires_grad for t in tensors)
        self._params = OrderedDict(value)
        self._scale = None

    @property
    def vdata(self) -> VersionDataImp:
        """The version data of the product's particle."""
        return self.kernel.version.data

    @property
    def pdata(self) -> ParticleDataImp:
        """The particle data of the product's particle."""
        return self.kernel.data

    def _core(self) -> Any:
        """The core particle, brought to the current config of the product's version."""
        return br.bring_to(self._particle, self._version.data.species)

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
        return [view[pid] for pid in br.pids_of(self._core().species)]

    def unary_operator(self, fn: Callable[[ParamType, ParamConfig], ParamType]) -> "ParamProduct":
        """A new product with ``fn(param, config)`` for every parameter (no gradient recorded).

        Example:
            >>> new_net = net.product().unary_operator(lambda p, conf: nn.Parameter(p + 10.)).module()
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
        species = self._core().species
        for pid, r in zip(br.pids_of(species), results):
            if not isinstance(r, torch.Tensor):
                raise TypeError(f"the operator must return a tensor for parameter {pid}, got {type(r).__name__}")
        grads = tuple(r.requires_grad if isinstance(r, ParamType) else g for r, g in zip(results, self._grads))
        new = self._derive(br.particle_of(species, results), grads)
        return new

    def _check_other(self, other: Any) -> None:
        assert isinstance(other, ParamProduct), f"expected a ParamProduct, got {type(other).__name__}"
        assert other.kernel.version is self.kernel.version, _OTHER_SPECIES

    # -- arithmetic -------------------------------------------------------------------

    def _binary(self, other: Any, op: Callable[[Any, Any], Any], fallback: Callable) -> "ParamProduct":
        assert not isinstance(other, NytoModule), (
            "a product cannot be combined with a NytoModule; call .product() on the module too"
        )
        if isinstance(other, ParamProduct):
            self._check_other(other)
            with torch.no_grad():
                mine, theirs = self._core(), other._core()
                scale = other._scale if other._scale is not None and other._scale[1].species is theirs.species else None
                own = self._scale
                if (op is _ADD or op is _SUB) and own is not None and own[1].species is mine.species:
                    # this product is c*q: build a private c*q, which the sum may then be written into
                    return self._derive(_arith(op, own[1] * own[0], theirs, b_scale=scale, writable=True))
                return self._derive(_arith(op, mine, theirs, b_scale=scale))
        if _is_scalar(other):
            with torch.no_grad():
                mine = self._core()
                scale = (other, mine) if op is _MUL and type(other) in _FAST_SCALARS else None
                return self._derive(op(mine, other), scale=scale)
        return self.unary_operator(unary_lambda_wrapper(fallback))

    def __neg__(self) -> "ParamProduct":
        with torch.no_grad():
            return self._derive(-self._core())

    def __pow__(self, power: Any) -> "ParamProduct":
        return self._binary(power, lambda a, b: a**b, lambda p: p**power)

    def __rpow__(self, base: Any) -> "ParamProduct":
        return self._binary(base, lambda a, b: b**a, lambda p: base**p)

    def __add__(self, other: Any) -> "ParamProduct":
        return self._binary(other, _ADD, lambda p: p + other)

    def __sub__(self, other: Any) -> "ParamProduct":
        return self._binary(other, _SUB, lambda p: p - other)

    def __rsub__(self, other: Any) -> "ParamProduct":
        return self._binary(other, lambda a, b: b - a, lambda p: other - p)

    def __mul__(self, other: Any) -> "ParamProduct":
        return self._binary(other, _MUL, lambda p: p * other)

    def __truediv__(self, other: Any) -> "ParamProduct":
        return self._binary(other, lambda a, b: a / b, lambda p: p / other)

    def __rtruediv__(self, other: Any) -> "ParamProduct":
        return self._binary(other, lambda a, b: b / a, lambda p: other / p)

    def clone(self) -> "ParamProduct":
        """A copy (non-operational parameters as their config says)."""
        with torch.no_grad():
            return self._derive(self._core().clone())

    def randn(self) -> "ParamProduct":
        """Operational parameters redrawn from N(0, 1) (torch's global RNG)."""
        with torch.no_grad():
            return self._derive(self._core().randn())

    def rand(self) -> "ParamProduct":
        """Operational parameters redrawn from U[0, 1) (torch's global RNG)."""
        with torch.no_grad():
            return self._derive(self._core().rand())


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


def _apply_configs(vdata: VersionDataImp, pids: Any, fn: Callable[[ParamID, ParamConfig], None]) -> None:
    view = vdata.config
    wanted = set(pids)
    for pid in list(view):
        if pid in wanted:
            fn(pid, view[pid])


_FAST_SCALARS = (int, float)
_set_grad_enabled = torch._C._set_grad_enabled
_OTHER_SPECIES = (
    "particles of different species (or of different versions of one species: touch() them first) "
    "cannot be combined"
)
_ADD = lambda a, b: a + b  # noqa: E731
_SUB = lambda a, b: a - b  # noqa: E731
_RSUB = lambda a, b: b - a  # noqa: E731
_MUL = lambda a, b: a * b  # noqa: E731
_DIV = lambda a, b: a / b  # noqa: E731
_RDIV = lambda a, b: b / a  # noqa: E731
_POW = lambda a, b: a**b  # noqa: E731
_RPOW = lambda a, b: b**a  # noqa: E731


def _arith(op: Callable[[Any, Any], Any], a: Any, b: Any, *, b_scale: Any = None, writable: bool = False) -> Any:
    """``op(a, b)`` on core particles (``b`` may be a number); sums and differences rounded as the legacy library's.

    ``b_scale``: ``(d, q)`` when ``b`` is ``d * q``. ``writable``: ``a``'s
    operational tensors belong to an unseen intermediate and may receive the
    result. See ``_bridge.combine``.
    """
    if (op is _ADD or op is _SUB) and type(b) is br.Particle:
        return br.combine(a, b, 1 if op is _ADD else -1, b_scale=b_scale, writable=writable)
    return op(a, b)


class NytoModule(NytoModuleBase, Particle[ParamProduct]):
    """An ``nn.Module`` that is a particle: arithmetic, products, versions.

    Subclass it instead of ``nn.Module``. Every structural change (adding,
    deleting or setting to None a parameter, submodule or buffer) makes a new
    version of the species; other particles catch up on ``touch()`` and
    automatically before a particle operation or an edit.

    Example:
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
        _check_name(self, name, "module")
        if module is None:
            return self._version_update(SetModuleNoneVersionUpdater(self._module_id, name))
        if not isinstance(module, Module):
            raise _TypeAssertionError(f"{torch.typename(module)} is not a Module subclass")
        self._version_update(AddModuleVersionUpdater(self._module_id, name, module))

    def register_buffer(self, name: str, tensor: Optional[torch.Tensor], persistent: bool = True) -> None:
        """Add (or replace) buffer ``name``, shared by every particle of the species; makes a new version.

        Example:
            >>> self.register_buffer("running_mean", torch.zeros(num_features))
        """
        if "_buffers" not in self.__dict__:
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        _check_name(self, name, "buffer")
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise _TypeAssertionError(
                f"cannot assign '{torch.typename(tensor)}' object to buffer '{name}' (torch Tensor or None required)"
            )
        self._version_update(RegisterBufferVersionUpdater(self._module_id, name, tensor, persistent))

    # -- particle arithmetic ----------------------------------------------------

    # ``self OP other`` is ``(self.product() OP other.product()).particle()``
    # (kernel.Particle). For the common operands (a Python int or float, or a
    # module of the very same class) this does the same steps inline, with
    # one no_grad and no intermediate products; anything else, or a subclass
    # that overrides ``product``/``touch``/``_operand``, takes the generic way.

    def _operands(self, other: Any) -> Any:
        """``(kernel, theirs, b_scale)`` for the inline path, both particles caught up; None: the generic path."""
        cls = type(self)
        if not (cls.product is _PRODUCT and cls.touch is _TOUCH and cls._operand is _OPERAND):
            return None
        kernel = _get_kernel(self)
        if kernel is None:
            return None
        kind = type(other)
        if not (kind in _FAST_SCALARS or kind is cls or (kind is _Pending and other.cls is cls)):
            return None
        if kernel.version.next_version is not None:
            kernel.particle_update()
        return (kernel, *_theirs(other, kernel.version))

    def _fast(self, other: Any, op: Callable[[Any, Any], Any]) -> Any:
        found = self._operands(other)
        if found is None:
            return None
        kernel, theirs, b_scale = found
        cls = type(self)
        version = kernel.version
        species = version.data.species
        data = kernel.data
        root = data._root()  # keeps the particle alive (as a product's pin does)
        tensors = list(data.params.values())
        grad = torch.is_grad_enabled()
        _set_grad_enabled(False)  # torch.no_grad(), without its two context objects: this runs per operator
        try:
            mine = br.particle_of(species, tensors)
            value = _arith(op, mine, theirs, b_scale=b_scale)
            if _fusable(cls) and _consumed(op, cls):
                scale = (other, mine) if op is _MUL and type(other) in _FAST_SCALARS else None
                grads = [t.requires_grad for t in tensors]
                return _Pending(cls, version, data, root, self._module_id, grads, value, scale)
            result = value.tensors
        finally:
            _set_grad_enabled(grad)
        return _spawn_tensors(data, version, result, [t.requires_grad for t in tensors], self._module_id)

    def _fast_inplace(self, other: Any, op: Callable[[Any, Any], Any]) -> Any:
        """``self OP= other`` inline: the result's data goes into this particle's parameter objects (as ``product_``)."""
        found = self._operands(other)
        if found is None:
            return None
        kernel, theirs, b_scale = found
        tensors = list(kernel.data.params.values())
        grad = torch.is_grad_enabled()
        _set_grad_enabled(False)
        try:
            result = _arith(op, br.particle_of(kernel.version.data.species, tensors), theirs, b_scale=b_scale).tensors
        finally:
            _set_grad_enabled(grad)
        for param, new in zip(tensors, result):
            if param is not new:  # a shared non-operational parameter stays as it is
                param.data = new
        return self

    def __add__(self, other: Any) -> Any:
        out = self._fast(other, _ADD)
        return Particle.__add__(self, _built(other)) if out is None else out

    def __sub__(self, other: Any) -> Any:
        out = self._fast(other, _SUB)
        return Particle.__sub__(self, _built(other)) if out is None else out

    def __rsub__(self, other: Any) -> Any:
        out = self._fast(other, _RSUB) if type(other) in _FAST_SCALARS else None
        return Particle.__rsub__(self, other) if out is None else out

    def __mul__(self, other: Any) -> Any:
        out = self._fast(other, _MUL)
        return Particle.__mul__(self, _built(other)) if out is None else out

    def __truediv__(self, other: Any) -> Any:
        out = self._fast(other, _DIV)
        return Particle.__truediv__(self, _built(other)) if out is None else out

    def __rtruediv__(self, other: Any) -> Any:
        out = self._fast(other, _RDIV) if type(other) in _FAST_SCALARS else None
        return Particle.__rtruediv__(self, other) if out is None else out

    def __pow__(self, power: Any) -> Any:
        out = self._fast(power, _POW)
        return Particle.__pow__(self, _built(power)) if out is None else out

    def __rpow__(self, base: Any) -> Any:
        out = self._fast(base, _RPOW) if type(base) in _FAST_SCALARS else None
        return Particle.__rpow__(self, base) if out is None else out

    def __iadd__(self, other: Any) -> Any:
        out = self._fast_inplace(other, _ADD)
        return Particle.__iadd__(self, _built(other)) if out is None else out

    def __isub__(self, other: Any) -> Any:
        out = self._fast_inplace(other, _SUB)
        return Particle.__isub__(self, _built(other)) if out is None else out

    def __imul__(self, other: Any) -> Any:
        out = self._fast_inplace(other, _MUL)
        return Particle.__imul__(self, _built(other)) if out is None else out

    def __itruediv__(self, other: Any) -> Any:
        out = self._fast_inplace(other, _DIV)
        return Particle.__itruediv__(self, _built(other)) if out is None else out

    def __ipow__(self, power: Any) -> Any:
        out = self._fast_inplace(power, _POW)
        return Particle.__ipow__(self, _built(power)) if out is None else out

    # -- particles ---------------------------------------------------------------

    def touch(self) -> Self:
        """Bring this particle to the newest version of its species; returns self.

        Example:
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

        Example:
            >>> net3 = net1.clone_from(net2)
            >>> net3._version_kernel is net1._version_kernel, net3.my_param is net1.my_param
            (True, False)
        """
        clone = self.clone()
        clone.load_state_dict(source.state_dict())
        return clone

    def detach(self: Tmodule) -> Tmodule:
        """The same parameter objects as a particle of a new species.

        Example:
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

        Example:
            >>> net.set_param_config(operational=False, name="my_module")
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


# ---------------------------------------------------------------------------
# Results that stay unbuilt inside one expression (see _fuse.py)
# ---------------------------------------------------------------------------

_DUNDERS = (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
    "__truediv__", "__rtruediv__", "__pow__", "__rpow__",
    "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ipow__",
)  # fmt: skip
_OWN_DUNDERS = tuple(getattr(NytoModule, name) for name in _DUNDERS)
_SYMBOL = {_ADD: "+", _SUB: "-", _RSUB: "-", _MUL: "*", _DIV: "/", _RDIV: "/", _POW: "**", _RPOW: "**"}


def _fusable(cls: type) -> bool:
    """Every operator of ``cls`` is NytoModule's own, so an operand of ``cls`` only meets our code."""
    own = _OWN_DUNDERS
    return (
        _fuse.ENABLED
        and cls.__add__ is own[0] and cls.__radd__ is own[1] and cls.__sub__ is own[2] and cls.__rsub__ is own[3]
        and cls.__mul__ is own[4] and cls.__rmul__ is own[5] and cls.__truediv__ is own[6]
        and cls.__rtruediv__ is own[7] and cls.__pow__ is own[8] and cls.__rpow__ is own[9]
        and cls.__iadd__ is own[10] and cls.__isub__ is own[11] and cls.__imul__ is own[12]
        and cls.__itruediv__ is own[13] and cls.__ipow__ is own[14]
    )  # fmt: skip


def _theirs(other: Any, version: Any) -> tuple:
    """``(operand, b_scale)`` for the inline arithmetic: a number, or the particle of a module
    (caught up) or pending value of ``version`` (``AssertionError`` for another species)."""
    kind = type(other)
    if kind in _FAST_SCALARS:
        return other, None
    if kind is _Pending:
        assert other.version is version, _OTHER_SPECIES
        return other.value, other.scale
    okernel = _get_kernel(other)
    assert okernel is not None, _NO_KERNEL
    if okernel.version.next_version is not None:
        okernel.particle_update()
    assert okernel.version is version, _OTHER_SPECIES
    return br.particle_of(version.data.species, list(okernel.data.params.values())), None


def _built(value: Any) -> Any:
    """A pending value as the module it stands for (for the generic operator path); anything else as is."""
    return value._module() if type(value) is _Pending else value


def _consumed(op: Callable[[Any, Any], Any], cls: type) -> bool:
    """Whether this operator's result can only reach another of our operators in the caller's expression."""
    return _fuse.result_is_consumed(_fuse.caller(_OUR_CODES), _SYMBOL[op], cls, _Pending)


class _Pending:
    """An operator's result that only our operators will ever see: a core particle, no module yet.

    Never returned to user code (``_fuse.result_is_consumed`` proves it);
    the operator whose result leaves the expression builds the module, from
    ``data``'s structure, exactly as the eager path would have.
    """

    __slots__ = ("cls", "version", "data", "root", "module_id", "grads", "value", "scale")

    def __init__(self, cls, version, data, root, module_id, grads, value, scale=None) -> None:  # noqa: ANN001
        self.cls, self.version, self.data, self.root = cls, version, data, root
        self.module_id, self.grads, self.value = module_id, grads, value
        self.scale = scale  # (d, q) when value is d * q

    def _module(self) -> Module:
        """The module the eager path would have returned."""
        with torch.no_grad():
            tensors = self.value.tensors
        return _spawn_tensors(self.data, self.version, tensors, self.grads, self.module_id)

    def _op(self, other: Any, op: Callable[[Any, Any], Any]) -> Any:
        cls, version = self.cls, self.version
        kind = type(other)
        if not (
            kind in _FAST_SCALARS
            or (kind is cls and _get_kernel(other) is not None)
            or (kind is _Pending and other.cls is cls)
        ):  # anything else: as the eager path, on the module this would have been
            return op(self._module(), other)
        theirs, scale = _theirs(other, version)
        grad = torch.is_grad_enabled()
        _set_grad_enabled(False)
        try:
            value = _arith(op, self.value, theirs, b_scale=scale, writable=True)
            if _fusable(cls) and _consumed(op, cls):
                scale = (other, self.value) if op is _MUL and kind in _FAST_SCALARS else None
                return _Pending(cls, version, self.data, self.root, self.module_id, self.grads, value, scale)
            tensors = value.tensors
        finally:
            _set_grad_enabled(grad)
        return _spawn_tensors(self.data, version, tensors, self.grads, self.module_id)

    def __add__(self, other: Any) -> Any:
        return self._op(other, _ADD)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return self._op(other, _SUB)

    def __rsub__(self, other: Any) -> Any:
        return self._op(other, _RSUB)

    def __mul__(self, other: Any) -> Any:
        return self._op(other, _MUL)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Any:
        return self._op(other, _DIV)

    def __rtruediv__(self, other: Any) -> Any:
        return self._op(other, _RDIV)

    def __pow__(self, other: Any) -> Any:
        return self._op(other, _POW)

    def __rpow__(self, other: Any) -> Any:
        return self._op(other, _RPOW)


_OUR_CODES = frozenset(
    id(f.__code__)
    for f in (
        *(getattr(NytoModule, name) for name in _DUNDERS), NytoModule._fast, _consumed,
        *(getattr(_Pending, name) for name in _DUNDERS if not name.startswith("__i")), _Pending._op,
    )
)  # fmt: skip
