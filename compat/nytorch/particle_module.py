"""ParticleModule: a NytoModule particle wrapped so that its modules hold no kernel reference."""

from __future__ import annotations

from typing import Any, Callable, Generic

from torch import nn
from typing_extensions import Self

from .base import NytoModuleBase, ParticleKernelImp, _get_kernel, _set_kernel
from .kernel import Particle, Product
from .module import NytoModule, ParamProduct, Tmodule
from .mtype import ModuleID, ParamConfig, ParamDict, ParamType, ROOT_MODULE_ID


class PMProduct(Product["ParticleModule"]):
    """The product of a ParticleModule: a ``ParamProduct`` that turns back into a ParticleModule.

    Args:
        kernel, module_id, params: as for ``ParamProduct``.

    Attributes:
        product: the wrapped ``ParamProduct``.
    """

    __slots__ = ("product",)

    product: ParamProduct

    @classmethod
    def from_ParamProduct(cls, product: ParamProduct) -> "PMProduct":
        """Wrap ``product`` (no copy)."""
        new = cls.__new__(cls)
        new.product = product
        return new

    def __init__(self, kernel: ParticleKernelImp, module_id: ModuleID, params: ParamDict) -> None:
        self.product = ParamProduct(kernel, module_id, params)

    def __repr__(self) -> str:
        return f"PMProduct({self.product!r})"

    def particle(self) -> "ParticleModule":
        """A new ParticleModule holding these parameters."""
        return ParticleModule(self.product.module())

    def module(self) -> "ParticleModule":
        """Same as ``particle()``."""
        return self.particle()

    def _wrap(self, product: ParamProduct) -> "PMProduct":
        return type(self).from_ParamProduct(product)

    @staticmethod
    def _inner(x: Any) -> Any:
        return x.product if isinstance(x, PMProduct) else x

    def unary_operator(self, fn: Callable[[ParamType, ParamConfig], ParamType]) -> "PMProduct":
        """``ParamProduct.unary_operator`` on the wrapped product."""
        return self._wrap(self.product.unary_operator(fn))

    def binary_operator(
        self, other: "PMProduct", fn: Callable[[ParamType, ParamType, ParamConfig], ParamType]
    ) -> "PMProduct":
        """``ParamProduct.binary_operator`` on the wrapped products.

        Raises:
            AssertionError: ``other`` is not a PMProduct of the same species.
        """
        assert isinstance(other, PMProduct), f"expected a PMProduct, got {type(other).__name__}"
        return self._wrap(self.product.binary_operator(other.product, fn))

    def __neg__(self) -> "PMProduct":
        return self._wrap(-self.product)

    def __pow__(self, power: Any) -> "PMProduct":
        return self._wrap(self.product ** self._inner(power))

    def __rpow__(self, base: Any) -> "PMProduct":
        return self._wrap(self._inner(base) ** self.product)

    def __add__(self, other: Any) -> "PMProduct":
        return self._wrap(self.product + self._inner(other))

    def __sub__(self, other: Any) -> "PMProduct":
        return self._wrap(self.product - self._inner(other))

    def __rsub__(self, other: Any) -> "PMProduct":
        return self._wrap(self._inner(other) - self.product)

    def __mul__(self, other: Any) -> "PMProduct":
        return self._wrap(self.product * self._inner(other))

    def __truediv__(self, other: Any) -> "PMProduct":
        return self._wrap(self.product / self._inner(other))

    def __rtruediv__(self, other: Any) -> "PMProduct":
        return self._wrap(self._inner(other) / self.product)

    def clone(self) -> "PMProduct":
        return self._wrap(self.product.clone())

    def randn(self) -> "PMProduct":
        return self._wrap(self.product.randn())

    def rand(self) -> "PMProduct":
        return self._wrap(self.product.rand())


class ParticleModule(nn.Module, Particle[PMProduct], Generic[Tmodule]):
    """A NytoModule particle whose modules drop their kernel reference.

    The wrapper keeps the kernel (``particle_kernel``) and does the particle
    operations; the wrapped modules do not point back at it. Restore the
    references for structural edits with ``restore_kernel_ref()`` (and
    ``clear_kernel_ref()`` after), or with ``GetNytoModule``.

    Args:
        root_module: the root NytoModule of a particle.

    Attributes:
        particle_kernel: the particle's kernel.
        root_module: the wrapped NytoModule.

    Raises:
        AssertionError: ``root_module`` is not the root NytoModule of a particle.
    """

    particle_kernel: ParticleKernelImp
    root_module: Tmodule

    def __init__(self, root_module: Tmodule) -> None:
        assert isinstance(root_module, NytoModule), f"expected a NytoModule, got {type(root_module).__name__}"
        assert root_module._module_id == ROOT_MODULE_ID, "expected the root module of a particle, got a submodule"
        kernel = _get_kernel(root_module)
        assert kernel is not None, "the module has no particle kernel (is it wrapped by another ParticleModule?)"
        super().__init__()
        self.particle_kernel = kernel
        self.root_module = root_module
        self.clear_kernel_ref()

    def clear_kernel_ref(self) -> None:
        """Make every NytoModule of the particle drop its kernel reference."""
        for sub in self.root_module.modules():
            if isinstance(sub, NytoModuleBase):
                _set_kernel(sub, None)

    def restore_kernel_ref(self) -> None:
        """Give every NytoModule of the particle its kernel reference back."""
        kernel = self.particle_kernel
        for sub in self.root_module.modules():
            if isinstance(sub, NytoModuleBase):
                _set_kernel(sub, kernel)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The root module's forward pass."""
        return self.root_module(*args, **kwargs)

    def product(self) -> PMProduct:
        """This particle as a ``PMProduct`` (after catching up with the newest version)."""
        kernel = self.particle_kernel
        if not kernel.version.is_newest:
            kernel.particle_update()
        return PMProduct.from_ParamProduct(ParamProduct._of_kernel(kernel, ROOT_MODULE_ID))

    def product_(self, product: PMProduct) -> Self:
        """Give this particle the values of ``product``; returns self."""
        self.restore_kernel_ref()
        try:
            self.root_module.product_(product.product)
        finally:
            self.clear_kernel_ref()
        return self

    def clone_from(self, source: "ParticleModule") -> "ParticleModule":
        """A new particle of this species holding a copy of ``source``'s state."""
        assert isinstance(source, ParticleModule), f"expected a ParticleModule, got {type(source).__name__}"
        clone = self.clone()
        clone.load_state_dict(source.state_dict())
        return clone


class GetNytoModule(Generic[Tmodule]):
    """Context manager: the wrapped NytoModule with its kernel references restored.

    Examples:
        >>> from nytorch import NytoModule, ParticleModule
        >>> class Embedder(NytoModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.weight = nn.Parameter(torch.zeros(2))
        >>> model = ParticleModule(Embedder())
        >>> with GetNytoModule(model) as net:
        ...     net.data_embed = nn.Embedding(30, 8)
        >>> model.root_module.data_embed
        Embedding(30, 8)
    """

    __slots__ = ("_module",)

    _module: ParticleModule

    def __init__(self, particle_module: ParticleModule[Tmodule]) -> None:
        assert isinstance(particle_module, ParticleModule), (
            f"expected a ParticleModule, got {type(particle_module).__name__}"
        )
        self._module = particle_module

    def __enter__(self) -> Tmodule:
        self._module.restore_kernel_ref()
        return self._module.root_module

    def __exit__(self, exc_type: Any, exc_value: Any, traceback_obj: Any) -> None:
        self._module.clear_kernel_ref()
