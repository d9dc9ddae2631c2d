"""The generic particle machinery of the legacy API: versions, particles, updaters, products.

A ``VersionKernel`` is one version of a species' metadata; versions form a
forward chain through ``next_version``. A ``ParticleKernel`` is one particle:
its version and its own data. A structural edit runs a ``VersionUpdater``
(which builds the next version's data and a ``ParticleUpdater``) and then
brings the particle that made the edit up to the new version; the other
particles follow when they are touched.

``Particle`` and ``Product`` are the two faces of particle arithmetic: a
particle (a module) turns into a product, the product does the arithmetic,
and turns back into a particle.
"""

from __future__ import annotations

import abc
from typing import Generic, Optional, TypeVar

from typing_extensions import Self

Tvdata = TypeVar("Tvdata", bound="VersionData")
Tpdata = TypeVar("Tpdata", bound="ParticleData")
Tproduct = TypeVar("Tproduct", bound="Product")
Tparticle = TypeVar("Tparticle", bound="Particle")


class VersionData(abc.ABC, Generic[Tvdata, Tpdata]):
    """Metadata of one version of a species (abstract); held by ``VersionKernel.data``."""

    @abc.abstractmethod
    def init_kernel(self, kernel: "VersionKernel") -> None:
        """Prepare ``kernel``, which is about to hold this data."""

    @abc.abstractmethod
    def init_particle(self, pdata: Tpdata) -> None:
        """Put the keys of ``pdata`` in this version's order as the particle enters it."""

    @abc.abstractmethod
    def copy(self) -> Tvdata:
        """A deep copy."""


class ParticleData(abc.ABC, Generic[Tvdata, Tpdata]):
    """The parameters of one particle (abstract); held by ``ParticleKernel.data``."""

    @abc.abstractmethod
    def init_kernel(self, kernel: "ParticleKernel") -> None:
        """Prepare ``kernel``, which is about to hold this data."""

    @abc.abstractmethod
    def copy(self, vdata: Tvdata) -> Tpdata:
        """A shallow copy sharing the parameters, wired as ``vdata`` says."""


class VersionUpdater(abc.ABC, Generic[Tvdata, Tpdata]):
    """Builds the next version (abstract).

    Called in order: ``set_version_data``, ``set_particle_data`` (the particle
    that makes the edit), ``run`` (returns the next version's data and the
    ``ParticleUpdater`` that brings particles across).
    """

    @abc.abstractmethod
    def set_version_data(self, vdata: Tvdata) -> Self:
        """Receive the current version's data."""

    @abc.abstractmethod
    def set_particle_data(self, pdata: Tpdata) -> Self:
        """Receive the data of the particle that makes the edit."""

    @abc.abstractmethod
    def run(self, vdata: Tvdata) -> tuple[Tvdata, "ParticleUpdater"]:
        """The next version's data and the particle updater."""


class ParticleUpdater(abc.ABC, Generic[Tvdata, Tpdata]):
    """Brings particles from one version to the next (abstract).

    ``set_version_data``, ``set_next_version_data`` and ``set_particle_data``
    are called once when the version is made; ``run`` once per particle.
    """

    @abc.abstractmethod
    def set_version_data(self, vdata: Tvdata) -> "ParticleUpdater[Tvdata, Tpdata]":
        """Receive the current version's data."""

    @abc.abstractmethod
    def set_next_version_data(self, vdata: Tvdata) -> "ParticleUpdater[Tvdata, Tpdata]":
        """Receive the next version's data."""

    @abc.abstractmethod
    def set_particle_data(self, pdata: Tpdata) -> "ParticleUpdater[Tvdata, Tpdata]":
        """Receive the data of the particle that made the edit (the initiator)."""

    @abc.abstractmethod
    def run(self, pdata: Tpdata) -> None:
        """Bring the particle holding ``pdata`` to the next version."""


class VersionKernel(Generic[Tvdata, Tpdata]):
    """One version of a species' metadata, linked forward to the next one.

    Attributes:
        next_version: the next version, None for the newest.
        particle_updater: brings particles of this version to ``next_version``.
        data: this version's metadata.
    """

    __slots__ = ("next_version", "particle_updater", "data", "__weakref__")

    next_version: Optional["VersionKernel[Tvdata, Tpdata]"]
    particle_updater: Optional[ParticleUpdater[Tvdata, Tpdata]]
    data: Tvdata

    def __init__(self, data: Tvdata) -> None:
        self.next_version = None
        self.particle_updater = None
        self.data = data
        data.init_kernel(self)

    def __repr__(self) -> str:
        return f"VersionKernel({self.data!r})"

    @property
    def is_newest(self) -> bool:
        """True when no later version exists."""
        return self.next_version is None

    def version_update(self, version_updater: VersionUpdater[Tvdata, Tpdata], particle_data: Tpdata) -> None:
        """Make the next version with ``version_updater``; ``particle_data`` is the initiator's data.

        Raises:
            AssertionError: this version already has a next one.
        """
        assert self.next_version is None, "only the newest version can be edited (touch() the particle first)"
        next_data, updater = (
            version_updater.set_version_data(self.data).set_particle_data(particle_data).run(self.data)
        )
        updater.set_version_data(self.data).set_next_version_data(next_data).set_particle_data(particle_data)
        self.particle_updater = updater
        self.next_version = VersionKernel(next_data)

    def particle_update(self, particle_data: Tpdata) -> None:
        """Bring ``particle_data`` from this version to the next.

        Raises:
            AssertionError: this is the newest version.
        """
        assert self.particle_updater is not None, "this version has no particle updater (it is the newest)"
        assert self.next_version is not None, "this version has no next version (it is the newest)"
        self.particle_updater.run(particle_data)
        self.next_version.data.init_particle(particle_data)

    def del_next_version(self) -> None:
        """Forget the next version (used to roll back an edit that failed)."""
        self.next_version = None
        self.particle_updater = None

    def copy(self) -> "VersionKernel":
        """A new, unlinked version holding a deep copy of the data (a new species)."""
        return VersionKernel(self.data.copy())


class ParticleKernel(Generic[Tvdata, Tpdata]):
    """One particle: its version and its own data.

    Attributes:
        version: the version the particle is at (not necessarily the newest).
        data: the particle's parameters and modules.
    """

    __slots__ = ("version", "data", "__weakref__")

    version: VersionKernel[Tvdata, Tpdata]
    data: Tpdata

    def __init__(self, version: VersionKernel[Tvdata, Tpdata], data: Tpdata) -> None:
        self.version = version
        self.data = data
        data.init_kernel(self)

    def __repr__(self) -> str:
        return f"ParticleKernel({self.data!r})"

    def create(self, data: Tpdata) -> "ParticleKernel[Tvdata, Tpdata]":
        """A new particle of the same species (at this particle's version) holding ``data``."""
        return ParticleKernel(self.version, data)

    def version_update(self, version_updater: VersionUpdater[Tvdata, Tpdata]) -> None:
        """Catch up, make a new version with ``version_updater`` and move this particle to it.

        If moving the particle fails, the new version is removed again and
        the error propagates.
        """
        if not self.version.is_newest:
            self.particle_update()
        self.version.version_update(version_updater, self.data)
        try:
            self.particle_update()
        except BaseException:
            self.version.del_next_version()
            raise

    def particle_update(self) -> None:
        """Bring this particle through every later version to the newest."""
        while not self.version.is_newest:
            nxt = self.version.next_version
            assert nxt is not None
            self.version.particle_update(self.data)
            self.version = nxt

    def detach(self) -> "ParticleKernel[Tvdata, Tpdata]":
        """A particle of a new species (a copy of this version) sharing this particle's parameters."""
        return ParticleKernel(self.version.copy(), self.data.copy(self.version.data))


class Product(abc.ABC, Generic[Tparticle]):
    """The arithmetic face of a particle (abstract).

    Subclasses implement the operators; ``particle()`` turns the result back
    into a particle.
    """

    def __pos__(self: Tproduct) -> Tproduct:
        return self.clone()

    @abc.abstractmethod
    def __neg__(self: Tproduct) -> Tproduct: ...

    @abc.abstractmethod
    def __pow__(self: Tproduct, power) -> Tproduct: ...

    @abc.abstractmethod
    def __rpow__(self: Tproduct, base) -> Tproduct: ...

    @abc.abstractmethod
    def __add__(self: Tproduct, other) -> Tproduct: ...

    def __radd__(self: Tproduct, other) -> Tproduct:
        return self.__add__(other)

    @abc.abstractmethod
    def __sub__(self: Tproduct, other) -> Tproduct: ...

    @abc.abstractmethod
    def __rsub__(self: Tproduct, other) -> Tproduct: ...

    @abc.abstractmethod
    def __mul__(self: Tproduct, other) -> Tproduct: ...

    def __rmul__(self: Tproduct, other) -> Tproduct:
        return self.__mul__(other)

    @abc.abstractmethod
    def __truediv__(self: Tproduct, other) -> Tproduct: ...

    @abc.abstractmethod
    def __rtruediv__(self: Tproduct, other) -> Tproduct: ...

    @abc.abstractmethod
    def particle(self) -> Tparticle:
        """The particle holding this product's parameters."""

    @abc.abstractmethod
    def clone(self: Tproduct) -> Tproduct:
        """A copy."""

    @abc.abstractmethod
    def randn(self: Tproduct) -> Tproduct:
        """Operational parameters redrawn from N(0, 1)."""

    @abc.abstractmethod
    def rand(self: Tproduct) -> Tproduct:
        """Operational parameters redrawn from U[0, 1)."""


def _no_product(other: object) -> None:
    assert not isinstance(other, Product), (
        "a particle cannot be combined with a product; call .product() on the particle too, "
        f"got {type(other).__name__}"
    )


class Particle(abc.ABC, Generic[Tproduct]):
    """A model that supports particle arithmetic through its product (abstract).

    Every operator turns the operands into products, combines them and turns
    the result back into a particle; the in-place forms (``+=`` ...) import the
    result into this particle with ``product_``.
    """

    def __pos__(self: Tparticle) -> Tparticle:
        return self.clone()

    def __neg__(self: Tparticle) -> Tparticle:
        return (-self.product()).particle()

    def _operand(self, other):
        _no_product(other)
        return other.product() if isinstance(other, type(self)) else other

    def __pow__(self: Tparticle, power) -> Tparticle:
        return (self.product() ** self._operand(power)).particle()

    def __rpow__(self: Tparticle, base) -> Tparticle:
        _no_product(base)
        return (base ** self.product()).particle()

    def __ipow__(self, power) -> Self:
        return self.product_(self.product() ** self._operand(power))

    def __add__(self: Tparticle, other) -> Tparticle:
        return (self.product() + self._operand(other)).particle()

    def __radd__(self: Tparticle, other) -> Tparticle:
        return self.__add__(other)

    def __iadd__(self, other) -> Self:
        return self.product_(self.product() + self._operand(other))

    def __sub__(self: Tparticle, other) -> Tparticle:
        return (self.product() - self._operand(other)).particle()

    def __rsub__(self: Tparticle, other) -> Tparticle:
        _no_product(other)
        return (other - self.product()).particle()

    def __isub__(self, other) -> Self:
        return self.product_(self.product() - self._operand(other))

    def __mul__(self: Tparticle, other) -> Tparticle:
        return (self.product() * self._operand(other)).particle()

    def __rmul__(self: Tparticle, other) -> Tparticle:
        return self.__mul__(other)

    def __imul__(self, other) -> Self:
        return self.product_(self.product() * self._operand(other))

    def __truediv__(self: Tparticle, other) -> Tparticle:
        return (self.product() / self._operand(other)).particle()

    def __rtruediv__(self: Tparticle, other) -> Tparticle:
        _no_product(other)
        return (other / self.product()).particle()

    def __itruediv__(self, other) -> Self:
        return self.product_(self.product() / self._operand(other))

    @abc.abstractmethod
    def product(self) -> Tproduct:
        """This particle as a product."""

    @abc.abstractmethod
    def product_(self, product: Tproduct) -> Self:
        """Import ``product``'s values into this particle; returns self."""

    def clone(self: Tparticle) -> Tparticle:
        """A new particle of the same species with copied values."""
        return self.product().clone().particle()

    def randn(self: Tparticle) -> Tparticle:
        """A new particle whose operational parameters are drawn from N(0, 1)."""
        return self.product().randn().particle()

    def rand(self: Tparticle) -> Tparticle:
        """A new particle whose operational parameters are drawn from U[0, 1)."""
        return self.product().rand().particle()
