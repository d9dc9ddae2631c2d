"""Species: the immutable structure shared by particles, as a persistent version chain."""

from __future__ import annotations

import copy
from typing import Any, Iterator, Literal, Mapping, Sequence

import attrs
import torch
from pyrsistent import PMap, PSet, pmap, pset
from torch import nn

from . import _skeleton as sk
from ._config import DEFAULT_CONFIG, ParamConfig
from ._errors import UnknownNameError, describe

_CONFIG_KEYS = ("operational", "clone", "tags")


# ---------------------------------------------------------------------------
# Edits: what made a version. Each knows how to replay itself on a particle's
# tensors (``migrate``); the species side is done by ``Species`` itself.
# ---------------------------------------------------------------------------


def _grow(value: torch.Tensor, population: int | None, device: torch.device | None) -> torch.Tensor:
    """A fresh copy of ``value`` on ``device``, repeated along a leading population dimension if asked."""
    if device is not None and value.device != device:
        value = value.to(device)
    if population is None:
        return value.clone()
    return value.unsqueeze(0).expand(population, *value.shape).clone()


def _drop_under(tensors: dict[str, torch.Tensor], path: str) -> None:
    prefix = path + "."
    for key in [k for k in tensors if k == path or k.startswith(prefix)]:
        del tensors[key]


@attrs.frozen(eq=False)
class AddParam:
    """A parameter ``name`` was added with value ``value`` (kept as a private copy).

    Attributes:
        name: the new parameter's dotted path.
        value: its value at the time of the edit; each migrated particle gets
            its own copy.
        config: its ``ParamConfig``.

    Examples:
        >>> s2 = nf.particle(nn.Linear(2, 1)).species.add_param("scale", torch.ones(1))
        >>> type(s2.edit).__name__, s2.edit.name
        ('AddParam', 'scale')
    """

    name: str
    value: torch.Tensor = attrs.field(repr=lambda t: f"<tensor {tuple(t.shape)} {t.dtype}>")
    config: ParamConfig = DEFAULT_CONFIG

    def replay(self, tensors: dict[str, torch.Tensor], population: int | None, device: torch.device | None = None) -> None:
        """Apply this edit to a particle's tensors (``migrate`` calls it; it changes ``tensors`` in place).

        Args:
            tensors: name -> tensor of the version before this edit; updated
                to the version after it (a private dict of the caller's).
            population: ``N`` when the tensors are a population's, else None.
            device: where added values go (None: where the edit keeps them).
        """
        tensors[self.name] = _grow(self.value, population, device)


@attrs.frozen(eq=False)
class AddModule:
    """A submodule was added at ``name``; ``values`` holds copies of its parameters (or None: a None slot).

    Attributes:
        name: the submodule's dotted path.
        values: ``(relative name, value)`` per parameter of the submodule, or
            None for an empty (None) slot.
    """

    name: str
    values: tuple[tuple[str, torch.Tensor], ...] | None = attrs.field(
        repr=lambda v: "None" if v is None else f"<{len(v)} tensors>"
    )

    def replay(self, tensors: dict[str, torch.Tensor], population: int | None, device: torch.device | None = None) -> None:
        """Apply this edit to a particle's tensors (``migrate`` calls it; it changes ``tensors`` in place).

        Args:
            tensors: name -> tensor of the version before this edit; updated
                to the version after it (a private dict of the caller's).
            population: ``N`` when the tensors are a population's, else None.
            device: where added values go (None: where the edit keeps them).
        """
        _drop_under(tensors, self.name)
        for rel, value in self.values or ():
            tensors[f"{self.name}.{rel}"] = _grow(value, population, device)


@attrs.frozen(eq=False)
class AddBuffer:
    """A buffer was registered at ``name`` (buffers live in the species, not in particles).

    Attributes:
        name: the buffer's dotted path.
        persistent: whether it is part of a ``state_dict``.
    """

    name: str
    persistent: bool = True

    def replay(self, tensors: dict[str, torch.Tensor], population: int | None, device: torch.device | None = None) -> None:
        """Apply this edit to a particle's tensors (``migrate`` calls it; it changes ``tensors`` in place).

        Args:
            tensors: name -> tensor of the version before this edit; updated
                to the version after it (a private dict of the caller's).
            population: ``N`` when the tensors are a population's, else None.
            device: where added values go (None: where the edit keeps them).
        """
        pass


@attrs.frozen(eq=False)
class Remove:
    """The parameter, submodule or buffer at ``name`` was removed; ``kind`` says which.

    Attributes:
        name: the removed path.
        kind: ``"param"``, ``"module"``, ``"buffer"`` or ``"alias"`` (a tied name).
    """

    name: str
    kind: str

    def replay(self, tensors: dict[str, torch.Tensor], population: int | None, device: torch.device | None = None) -> None:
        """Apply this edit to a particle's tensors (``migrate`` calls it; it changes ``tensors`` in place).

        Args:
            tensors: name -> tensor of the version before this edit; updated
                to the version after it (a private dict of the caller's).
            population: ``N`` when the tensors are a population's, else None.
            device: where added values go (None: where the edit keeps them).
        """
        _drop_under(tensors, self.name)


@attrs.frozen(eq=False)
class SetNone:
    """The parameter, submodule or buffer at ``name`` was set to None; ``kind`` says which.

    Attributes:
        name: the path set to None (the attribute stays, as in torch).
        kind: ``"param"``, ``"module"``, ``"buffer"`` or ``"alias"``.
    """

    name: str
    kind: str

    def replay(self, tensors: dict[str, torch.Tensor], population: int | None, device: torch.device | None = None) -> None:
        """Apply this edit to a particle's tensors (``migrate`` calls it; it changes ``tensors`` in place).

        Args:
            tensors: name -> tensor of the version before this edit; updated
                to the version after it (a private dict of the caller's).
            population: ``N`` when the tensors are a population's, else None.
            device: where added values go (None: where the edit keeps them).
        """
        _drop_under(tensors, self.name)


@attrs.frozen(eq=False)
class SetConfig:
    """The config of the parameters under ``name`` (None: all) was changed by ``changes``.

    Attributes:
        name: a parameter name, a submodule prefix, or None (every parameter).
        changes: the ``with_config`` keywords (``operational``, ``clone``, ``tags``).
    """

    name: str | None
    changes: PMap

    def replay(self, tensors: dict[str, torch.Tensor], population: int | None, device: torch.device | None = None) -> None:
        """Apply this edit to a particle's tensors (``migrate`` calls it; it changes ``tensors`` in place).

        Args:
            tensors: name -> tensor of the version before this edit; updated
                to the version after it (a private dict of the caller's).
            population: ``N`` when the tensors are a population's, else None.
            device: where added values go (None: where the edit keeps them).
        """
        pass


Edit = AddParam | AddModule | AddBuffer | Remove | SetNone | SetConfig


# ---------------------------------------------------------------------------
# Species
# ---------------------------------------------------------------------------


def _check_name_type(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"expected a dotted path string such as 'layer0.weight', got {describe(name)}")


class _taken:
    """Turns torch's "attribute already exists" ``KeyError`` into a message naming the clash."""

    def __init__(self, name: str, module: nn.Module, leaf: str) -> None:
        self.name, self.module, self.leaf = name, module, leaf

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> Literal[False]:
        if kind is KeyError:
            raise ValueError(
                f"expected a new attribute name, but {self.leaf!r} is already an attribute of "
                f"{type(self.module).__name__} at {self.name.rpartition('.')[0] or 'the root'!r} ({error})"
            ) from error
        return False


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


class Layout:
    """Per-species positions and sizes that operations read (computed once per species).

    Plain tuples, so hot paths (and code traced by ``torch.compile``, which
    cannot look into pyrsistent's C-implemented vectors) never query the maps.

    Attributes:
        configs, shapes, dtypes: per parameter, in ``names`` order.
        buffers: ``(name, tensor or None)`` per buffer, in ``buffer_names`` order.
        unfit: ``(name, dtype)`` of the first operational parameter that is not
            floating point (or complex), or None.
        op: positions (in ``names`` order) of the operational parameters.
        nonop: ``(position, clone)`` of the non-operational ones.
        all_op: every parameter is operational.
        nonfloat: some parameter is not floating point.
        ndim0: the number of dimensions of the first parameter (a population has one more).
        groups: ``(dtype, positions)`` per dtype, in order of first appearance.
        numel: elements per parameter.
    """

    __slots__ = (
        "op", "nonop", "all_op", "nonfloat", "ndim0", "groups", "numel", "configs", "shapes", "dtypes",
        "buffers", "unfit",
    )

    def __init__(self, species: "Species") -> None:
        names = species.names
        configs = [species.config[n] for n in names]
        self.configs = tuple(configs)
        self.shapes = tuple(species.shapes[n] for n in names)
        self.dtypes = tuple(species.dtypes[n] for n in names)
        self.buffers = tuple((n, species.buffers[n]) for n in species.buffer_names)
        self.unfit = next(
            (
                (n, dt)
                for n, dt, c in zip(names, self.dtypes, configs)
                if c.operational and not (dt.is_floating_point or dt.is_complex)
            ),
            None,
        )
        self.op = tuple(i for i, c in enumerate(configs) if c.operational)
        self.nonop = tuple((i, c.clone) for i, c in enumerate(configs) if not c.operational)
        self.all_op = not self.nonop
        self.nonfloat = any(not dt.is_floating_point for dt in self.dtypes)
        self.ndim0 = len(self.shapes[0]) if names else 0
        groups: dict[torch.dtype, list[int]] = {}
        for i, dt in enumerate(self.dtypes):
            groups.setdefault(dt, []).append(i)
        self.groups = tuple((dt, tuple(ix)) for dt, ix in groups.items())
        self.numel = tuple(shape.numel() for shape in self.shapes)


@attrs.frozen(eq=False, repr=False)
class Species:
    """The immutable structure that particles share, one node of a version chain.

    Species compare by identity. Every edit returns a new Species whose
    ``parent`` is this one and whose ``edit`` records what changed; this one
    is left as it was. The maps are pyrsistent, so an edit shares structure
    with its parent instead of copying it.

    Attributes:
        names: parameter names (dotted paths). At capture they are in
            ``module.named_parameters()`` order; later additions are appended
            in edit order (as the legacy library numbers parameter ids).
            A Parameter shared at two paths (tied weights) has one entry, the
            first path; the others are listed in ``tied``.
        config: name -> ``ParamConfig``.
        shapes: name -> ``torch.Size`` of the parameter (a single particle's shape).
        dtypes: name -> ``torch.dtype``.
        requires_grad: name -> bool, what ``to_module`` gives each Parameter.
        buffers: buffer name -> tensor (or None); ``buffer_names`` fixes their order.
        nonpersistent: names of buffers left out of a ``state_dict``.
        tied: alias path -> canonical name, for parameters and buffers.
        modules: every submodule path ("" is the root).
        skeleton: the module with meta tensors, used for forward passes;
            never mutate it.
        parent: the previous version (None for a captured species).
        edit: what made this version from ``parent`` (``AddParam``,
            ``AddModule``, ``AddBuffer``, ``Remove``, ``SetNone`` or
            ``SetConfig``; None for a captured species).
        version: how many edits lie between this version and the captured one.

    Examples:
        >>> p = nf.particle(nn.Linear(2, 1))
        >>> s2 = p.species.add_param("scale", torch.ones(1))
        >>> s2.parent is p.species, s2.names, s2.version
        (True, ('weight', 'bias', 'scale'), 1)
        >>> p.species.names                          # the old version is unchanged
        ('weight', 'bias')
        >>> p.species.shapes["weight"], p.species.dtypes["bias"], p.species.buffer_names
        (torch.Size([1, 2]), torch.float32, ())
    """

    names: tuple[str, ...]
    config: PMap
    shapes: PMap
    dtypes: PMap
    requires_grad: PMap
    buffers: PMap
    buffer_names: tuple[str, ...]
    nonpersistent: PSet
    tied: PMap
    modules: PSet
    skeleton: nn.Module = attrs.field(repr=False)
    parent: "Species | None" = None
    edit: Edit | None = None
    version: int = 0
    _cache: dict = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        # computed when the version is made, not on first use: code traced by
        # torch.compile reads the layout but cannot build it (pyrsistent's
        # vectors are implemented in C)
        self._cache["layout"] = Layout(self)

    # -- reading ------------------------------------------------------------

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:4]) + (", ..." if len(self.names) > 4 else "")
        return (
            f"Species({type(self.skeleton).__name__}, version={self.version}, "
            f"{len(self.names)} params: [{shown}], id=0x{id(self):x})"
        )

    def index(self, name: str) -> int:
        """Position of parameter ``name`` in ``names``.

        Args:
            name: a parameter name.

        Returns:
            Its index in ``names`` (and in ``Particle.tensors``).

        Raises:
            UnknownNameError: the species has no parameter ``name``.
        """
        table = self._cache.get("index")
        if table is None:
            table = {n: i for i, n in enumerate(self.names)}
            self._cache["index"] = table
        try:
            return table[name]
        except KeyError:
            raise UnknownNameError(self._unknown(name, "a parameter name")) from None

    def layout(self) -> Layout:
        """Operational positions, dtype groups and sizes of this version (computed with it).

        Used by the library's hot paths; plain tuples that ``torch.compile``
        can trace.

        Returns:
            The ``Layout`` of this version.
        """
        return self._cache["layout"]

    def moded_skeleton(self, training: bool) -> nn.Module:
        """The skeleton in training (True) or eval (False) mode, for forward passes.

        Args:
            training: the mode wanted.

        Returns:
            ``skeleton`` itself when it is already in that mode, else a copy
            made once and kept (never mutate either).
        """
        if training == self.skeleton.training:
            return self.skeleton
        key = ("skeleton", training)
        moded = self._cache.get(key)
        if moded is None:
            moded = self._cache[key] = copy.deepcopy(self.skeleton).train(training)
        return moded

    def kind(self, name: str) -> str:
        """What ``name`` is: ``"param"``, ``"buffer"``, ``"module"`` or ``"alias"``.

        Args:
            name: a dotted path (a slot set to None counts as what it was).

        Returns:
            ``"param"``, ``"buffer"``, ``"module"`` or ``"alias"`` (a tied name).

        Raises:
            KeyError: ``name`` is none of them.
            TypeError: ``name`` is not a string.

        Examples:
            >>> species = nf.particle(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))).species
            >>> species.kind("0.weight"), species.kind("1"), species.kind("1.running_mean")
            ('param', 'module', 'buffer')
        """
        _check_name_type(name)
        if name in self.config:
            return "param"
        if name in self.buffers:
            return "buffer"
        if name in self.modules and name != "":
            return "module"
        if name in self.tied:
            return "alias"
        empty = self._empty_slot(name)
        if empty is not None:
            return empty
        raise UnknownNameError(self._unknown(name, "a parameter, buffer or submodule path"))

    def _empty_slot(self, name: object) -> str | None:
        """``"param"``/``"buffer"``/``"module"`` when ``name`` is a slot set to None in the skeleton."""
        if not isinstance(name, str) or not name:
            return None
        prefix, leaf = sk.split(name)
        if prefix not in self.modules:
            return None
        module = sk.get_module(self.skeleton, prefix)
        for kind, slots in (("param", module._parameters), ("buffer", module._buffers), ("module", module._modules)):
            if leaf in slots and slots[leaf] is None:
                return kind
        return None

    def _unknown(self, name: object, what: str) -> str:
        known = ", ".join(repr(n) for n in self.names[:6])
        more = ", ..." if len(self.names) > 6 else ""
        return f"expected {what} of this species (parameters: {known}{more}), got {name!r}"

    def is_ancestor_of(self, other: "Species") -> bool:
        """True when ``other`` is this species or a later version of it.

        Args:
            other: a species.

        Returns:
            Whether ``other``'s version chain passes through this species.
        """
        node: Species | None = other
        while node is not None and node.version >= self.version:
            if node is self:
                return True
            node = node.parent
        return False

    def edits_since(self, ancestor: "Species") -> list[Edit]:
        """The edits from ``ancestor`` to this version, oldest first.

        Args:
            ancestor: this species or an earlier version of it.

        Returns:
            The ``edit`` of every version after ``ancestor`` up to this one.

        Raises:
            ValueError: ``ancestor`` is not an earlier version of this one.
        """
        chain: list[Edit] = []
        node: Species | None = self
        while node is not None and node is not ancestor:
            chain.append(node.edit)  # type: ignore[arg-type]
            node = node.parent
        if node is None:
            raise ValueError(f"{ancestor!r} is not an earlier version of {self!r}")
        chain.reverse()
        return chain

    def replay(
        self,
        since: "Species",
        tensors: "Sequence[torch.Tensor]",
        *,
        population: int | None = None,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """A particle's tensors of version ``since`` brought to this version.

        Replays the edits from ``since`` to here, oldest first: each added
        parameter arrives as a fresh copy of the value its edit carried
        (repeated along a leading population dimension of ``population``
        members, on ``device``); removed or None-d ones disappear; config and
        buffer edits change no tensor. Tensors no edit touched are returned as
        they came.

        Args:
            since: an earlier version of this species.
            tensors: a particle's tensors of version ``since``, in its ``names`` order.
            population: ``N`` when they are a population's, else None.
            device: where added values go (None: where the edits keep them).

        Returns:
            The tensors in this version's ``names`` order (``migrate`` builds
            the particle from them).

        Raises:
            ValueError: ``since`` is not an earlier version of this one.
        """
        current = dict(zip(since.names, tensors))
        for edit in self.edits_since(since):
            edit.replay(current, population, device)
        return tuple(current[n] for n in self.names)

    def history(self) -> Iterator["Species"]:
        """This version and its ancestors, newest first.

        Returns:
            An iterator over the version chain, ending at the captured species.

        Examples:
            >>> s = nf.particle(nn.Linear(2, 1)).species
            >>> s3 = s.add_param("a", torch.ones(1)).remove("a")
            >>> [type(v.edit).__name__ for v in s3.history()]
            ['Remove', 'AddParam', 'NoneType']
        """
        node: Species | None = self
        while node is not None:
            yield node
            node = node.parent

    # -- editing ------------------------------------------------------------

    def _derive(self, edit: Edit, **changes: Any) -> "Species":
        return attrs.evolve(self, parent=self, edit=edit, version=self.version + 1, cache={}, **changes)

    def _check_new_path(self, name: object) -> tuple[str, str]:
        if not isinstance(name, str) or not name or name.startswith(".") or name.endswith("."):
            raise UnknownNameError(f"expected a non-empty dotted path such as 'layer0.weight', got {name!r}")
        prefix, leaf = sk.split(name)
        if prefix not in self.modules:
            raise UnknownNameError(self._unknown(prefix, "an existing submodule path"))
        for table, what in ((self.config, "parameter"), (self.buffers, "buffer"), (self.tied, "tied alias")):
            if name in table:
                raise ValueError(f"expected a new name, but {name!r} is already a {what} of this species")
        if name in self.modules:
            raise ValueError(f"expected a new name, but {name!r} is already a submodule of this species")
        return prefix, leaf

    def add_param(self, name: str, value: torch.Tensor, *, config: ParamConfig | None = None) -> "Species":
        """A new version with parameter ``name`` (a dotted path under an existing module).

        Args:
            name: e.g. ``"layer0.scale"``; its prefix must be a submodule.
            value: the initial value; the edit keeps a private copy, and every
                particle migrated to the new version gets its own copy of it.
            config: the parameter's ``ParamConfig`` (default: operational, clone).

        Returns:
            The new version; its ``names`` end with ``name``.

        Raises:
            KeyError: the prefix is not a submodule.
            ValueError: ``name`` already exists.
            TypeError: ``value`` is not a tensor.

        Examples:
            >>> p = nf.particle(nn.Sequential(nn.Linear(2, 2)))
            >>> s2 = p.species.add_param("0.scale", torch.ones(2))
            >>> s2.names, nf.migrate(p, s2).params["0.scale"]
            (('0.weight', '0.bias', '0.scale'), tensor([1., 1.]))
        """
        prefix, leaf = self._check_new_path(name)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"add_param({name!r}): expected a tensor value, got {describe(value)}")
        if config is None:
            config = DEFAULT_CONFIG
        if not isinstance(config, ParamConfig):
            raise TypeError(f"add_param({name!r}): expected a ParamConfig, got {describe(config)}")
        # an nn.Parameter says whether it trains; a plain float tensor becomes a trainable one
        if isinstance(value, nn.Parameter):
            requires_grad = value.requires_grad
        else:
            requires_grad = value.is_floating_point() or value.is_complex()
        value = value.detach().clone()
        skeleton, module = sk.copy_path(self.skeleton, prefix)
        with _taken(name, module, leaf):
            module.register_parameter(leaf, nn.Parameter(sk.meta_like(value), requires_grad=requires_grad))
        return self._derive(
            AddParam(name, value, config),
            names=self.names + (name,),
            config=self.config.set(name, config),
            shapes=self.shapes.set(name, value.shape),
            dtypes=self.dtypes.set(name, value.dtype),
            requires_grad=self.requires_grad.set(name, requires_grad),
            skeleton=skeleton,
        )

    def add_module(self, name: str, module: nn.Module | None) -> "Species":
        """A new version with submodule ``module`` at ``name`` (None: an empty slot).

        The module is captured as ``particle()`` captures one: its parameters
        are copied into the edit and appended to ``names`` (as
        ``name + "." + their path``) with the default config; its buffers are
        copied into the species. The module is not changed.

        Args:
            name: a new dotted path under an existing submodule (``"head"``).
            module: the submodule, or None for an empty slot.

        Returns:
            The new version.

        Raises:
            KeyError: the prefix is not a submodule.
            ValueError: ``name`` already exists.
            TypeError: ``module`` is neither an ``nn.Module`` nor None.

        Examples:
            >>> s = nf.particle(nn.Sequential(nn.Linear(2, 2))).species
            >>> s.add_module("head", nn.Linear(2, 1)).names
            ('0.weight', '0.bias', 'head.weight', 'head.bias')
        """
        prefix, leaf = self._check_new_path(name)
        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(f"add_module({name!r}): expected an nn.Module or None, got {describe(module)}")
        skeleton, parent_module = sk.copy_path(self.skeleton, prefix)
        if module is None:
            with _taken(name, parent_module, leaf):
                parent_module.add_module(leaf, None)
            return self._derive(AddModule(name, None), skeleton=skeleton)
        sub = _capture(module, copy=True)
        with _taken(name, parent_module, leaf):
            parent_module.add_module(leaf, sub.skeleton)
        full = lambda n: f"{name}.{n}"  # noqa: E731
        names = tuple(full(n) for n in sub.names)
        evolver = {t: getattr(self, t).evolver() for t in ("config", "shapes", "dtypes", "requires_grad", "buffers", "tied")}
        for n in sub.names:
            evolver["config"][full(n)] = DEFAULT_CONFIG
            evolver["shapes"][full(n)] = sub.shapes[n]
            evolver["dtypes"][full(n)] = sub.dtypes[n]
            evolver["requires_grad"][full(n)] = sub.requires_grad[n]
        for n in sub.buffer_names:
            evolver["buffers"][full(n)] = sub.buffers[n]
        for alias, canonical in sub.tied.items():
            evolver["tied"][full(alias)] = full(canonical)
        values = tuple((n, v) for n, v in zip(sub.names, sub.leaves))
        return self._derive(
            AddModule(name, values),
            names=self.names + names,
            buffer_names=self.buffer_names + tuple(full(n) for n in sub.buffer_names),
            nonpersistent=self.nonpersistent.update(full(n) for n in sub.nonpersistent),
            modules=self.modules.update(full(m) if m else name for m in sub.modules),
            skeleton=skeleton,
            **{k: e.persistent() for k, e in evolver.items()},
        )

    def add_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True, *, copy: bool = True) -> "Species":
        """A new version with buffer ``name`` (None registers an empty slot).

        Buffers live in the species (shared by all its particles), not in particles.

        Args:
            name: a new dotted path under an existing submodule.
            tensor: the buffer's value, or None.
            persistent: whether it belongs in a ``state_dict``.
            copy: keep a copy of ``tensor`` (default) or share its storage.

        Returns:
            The new version.

        Raises:
            KeyError: the prefix is not a submodule.
            ValueError: ``name`` already exists.
            TypeError: ``tensor`` is neither a tensor nor None, ``persistent`` not a bool.

        Examples:
            >>> s = nf.particle(nn.Linear(2, 1)).species.add_buffer("steps", torch.zeros(()))
            >>> s.buffer_names, s.buffers["steps"]
            (('steps',), tensor(0.))
        """
        prefix, leaf = self._check_new_path(name)
        if tensor is not None and not isinstance(tensor, torch.Tensor):
            raise TypeError(f"add_buffer({name!r}): expected a tensor or None, got {describe(tensor)}")
        if tensor is not None:
            tensor = tensor.detach().clone() if copy else tensor.detach()
        skeleton, module = sk.copy_path(self.skeleton, prefix)
        if not isinstance(persistent, bool):
            raise TypeError(f"add_buffer({name!r}): persistent expects a bool, got {describe(persistent)}")
        with _taken(name, module, leaf):
            module.register_buffer(leaf, sk.meta_like(tensor), persistent=persistent)
        return self._derive(
            AddBuffer(name, persistent),
            buffers=self.buffers.set(name, tensor),
            buffer_names=self.buffer_names + (name,),
            nonpersistent=self.nonpersistent if persistent else self.nonpersistent.add(name),
            skeleton=skeleton,
        )

    def _without(self, name: str, kind: str) -> dict[str, Any]:
        """The fields of a species with everything at or under ``name`` gone."""
        if kind == "module":
            dropped = [n for n in self.names if _under(n, name)]
            dropped_buffers = [n for n in self.buffer_names if _under(n, name)]
        elif kind == "param":  # (an empty slot has nothing to drop)
            dropped, dropped_buffers = [name] if name in self.config else [], []
        elif kind == "buffer":
            dropped, dropped_buffers = [], [name] if name in self.buffers else []
        else:
            dropped, dropped_buffers = [], []
        for alias, canonical in self.tied.items():
            if (canonical in dropped or canonical in dropped_buffers) and not _under(alias, name):
                raise ValueError(
                    f"cannot remove {name!r}: {canonical!r} is tied to {alias!r}, which would be left "
                    f"without a value; remove {alias!r} first"
                )
        gone = set(dropped)
        fields: dict[str, Any] = {}
        if dropped:
            fields["names"] = tuple(n for n in self.names if n not in gone)
            for table in ("config", "shapes", "dtypes", "requires_grad"):
                evolver = getattr(self, table).evolver()
                for n in dropped:
                    del evolver[n]
                fields[table] = evolver.persistent()
        if dropped_buffers:
            gone_buffers = set(dropped_buffers)
            fields["buffer_names"] = tuple(n for n in self.buffer_names if n not in gone_buffers)
            evolver = self.buffers.evolver()
            for n in dropped_buffers:
                del evolver[n]
            fields["buffers"] = evolver.persistent()
            fields["nonpersistent"] = self.nonpersistent.difference(gone_buffers)
        aliases = [a for a in self.tied if _under(a, name)]
        if aliases:
            evolver = self.tied.evolver()
            for a in aliases:
                del evolver[a]
            fields["tied"] = evolver.persistent()
        if kind == "module":
            fields["modules"] = pset(m for m in self.modules if not _under(m, name))
        return fields

    def _edit_slot(self, name: str, *, remove: bool) -> "Species":
        kind = self.kind(name)
        fields = self._without(name, kind)
        prefix, leaf = sk.split(name)
        skeleton, module = sk.copy_path(self.skeleton, prefix)
        table = {"param": "_parameters", "alias": "_parameters", "buffer": "_buffers", "module": "_modules"}[kind]
        slots = getattr(module, table)
        if kind == "alias" and leaf not in slots:
            slots = module._buffers
        if remove:
            del slots[leaf]
            module._non_persistent_buffers_set.discard(leaf)
        else:
            slots[leaf] = None
        edit = Remove(name, kind) if remove else SetNone(name, kind)
        return self._derive(edit, skeleton=skeleton, **fields)

    def remove(self, name: str) -> "Species":
        """A new version without the parameter, submodule or buffer at ``name``.

        Args:
            name: the dotted path to remove (a submodule takes everything under it).

        Returns:
            The new version.

        Raises:
            KeyError: ``name`` is none of them (or the root ``""``).
            ValueError: removing it would leave a tied alias without a value.

        Examples:
            >>> s = nf.particle(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))).species
            >>> s.remove("1").names
            ('0.weight', '0.bias')
        """
        return self._edit_slot(name, remove=True)

    def set_none(self, name: str) -> "Species":
        """A new version where the parameter, submodule or buffer at ``name`` is None.

        The attribute stays (as ``module.name = None`` leaves it in torch);
        its tensors leave the particles.

        Args:
            name: the dotted path to set to None.

        Returns:
            The new version.

        Raises:
            KeyError: ``name`` is none of them.

        Examples:
            >>> s = nf.particle(nn.Linear(2, 1)).species.set_none("bias")
            >>> s.names, s.kind("bias")
            (('weight',), 'param')
        """
        return self._edit_slot(name, remove=False)

    def with_config(self, name: str | None = None, **changes: Any) -> "Species":
        """A new version with the config of some parameters changed.

        Args:
            name: a parameter name, a submodule prefix (every parameter under
                it), or None (every parameter).
            **changes: ``operational`` and ``clone`` (bools), ``tags`` (a
                mapping merged into each parameter's tags).

        Returns:
            The new version; its particles' values are unchanged (no migration needed
            beyond the species).

        Raises:
            TypeError: an unknown keyword, a non-bool ``operational``/``clone``,
                ``tags`` not a mapping.
            KeyError: ``name`` is neither a parameter nor a submodule.

        Examples:
            >>> p = nf.particle(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
            >>> s = p.species.with_config("0", operational=False, tags={"frozen": True})
            >>> s.config["0.weight"].operational, s.config["1.weight"].operational
            (False, True)
            >>> r = nf.migrate(p, s) * 0.0                     # layer "0" stays out of arithmetic
            >>> torch.equal(r.params["0.weight"], p.params["0.weight"]), bool((r.params["1.weight"] == 0).all())
            (True, True)
        """
        unknown = sorted(set(changes) - set(_CONFIG_KEYS))
        if unknown:
            raise TypeError(f"with_config: expected keys among {_CONFIG_KEYS}, got {unknown}")
        for key in ("operational", "clone"):
            if key in changes and not isinstance(changes[key], bool):
                raise TypeError(f"with_config: {key} expects a bool, got {describe(changes[key])}")
        tags = changes.get("tags")
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"with_config: tags expects a mapping, got {describe(tags)}")
        if name is not None:
            _check_name_type(name)
        if name is None:
            targets = self.names
        elif name in self.config:
            targets = (name,)
        elif name in self.modules:
            targets = tuple(n for n in self.names if _under(n, name))
        else:
            raise UnknownNameError(self._unknown(name, "a parameter name or submodule prefix"))
        evolver = self.config.evolver()
        for n in targets:
            old = self.config[n]
            new_tags = old.tags.update(tags) if tags else old.tags
            evolver[n] = attrs.evolve(
                old,
                operational=changes.get("operational", old.operational),
                clone=changes.get("clone", old.clone),
                tags=new_tags,
            )
        return self._derive(SetConfig(name, pmap(changes)), config=evolver.persistent())


@attrs.frozen
class _Captured:
    """A species-to-be and the first particle's tensors (before wrapping)."""

    names: tuple
    leaves: tuple
    shapes: PMap
    dtypes: PMap
    requires_grad: PMap
    buffers: PMap
    buffer_names: tuple
    nonpersistent: PSet
    tied: PMap
    modules: PSet
    skeleton: nn.Module


def _capture(module: nn.Module, *, copy: bool) -> _Captured:
    take = (lambda t: t.detach().clone()) if copy else (lambda t: t.detach())
    names, leaves = [], []
    seen: dict[int, str] = {}
    shapes, dtypes, grads = {}, {}, {}
    tied: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied[name] = seen[id(param)]
            continue
        seen[id(param)] = name
        names.append(name)
        leaves.append(take(param))
        shapes[name] = param.shape
        dtypes[name] = param.dtype
        grads[name] = param.requires_grad
    buffer_names, buffers, nonpersistent = [], {}, set()
    seen_buffers: dict[int, str] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for leaf, buf in sub._buffers.items():
            name = f"{prefix}.{leaf}" if prefix else leaf
            if buf is not None and id(buf) in seen_buffers:
                tied[name] = seen_buffers[id(buf)]
                continue
            if name in buffers:
                continue
            if buf is not None:
                seen_buffers[id(buf)] = name
            buffer_names.append(name)
            buffers[name] = None if buf is None else take(buf)
            if leaf in sub._non_persistent_buffers_set:
                nonpersistent.add(name)
    return _Captured(
        names=tuple(names),
        leaves=tuple(leaves),
        shapes=pmap(shapes),
        dtypes=pmap(dtypes),
        requires_grad=pmap(grads),
        buffers=pmap(buffers),
        buffer_names=tuple(buffer_names),
        nonpersistent=pset(nonpersistent),
        tied=pmap(tied),
        modules=pset(sk.module_paths(module)),
        skeleton=sk.capture_skeleton(module),
    )


def capture(module: nn.Module, *, copy: bool = True) -> tuple[Species, tuple[torch.Tensor, ...]]:
    """A new root species for ``module`` and the tensors of its first particle."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"particle(): expected an nn.Module, got {describe(module)}")
    c = _capture(module, copy=copy)
    species = Species(
        names=c.names,
        config=pmap({n: DEFAULT_CONFIG for n in c.names}),
        shapes=c.shapes,
        dtypes=c.dtypes,
        requires_grad=c.requires_grad,
        buffers=c.buffers,
        buffer_names=c.buffer_names,
        nonpersistent=c.nonpersistent,
        tied=c.tied,
        modules=c.modules,
        skeleton=c.skeleton,
    )
    return species, c.leaves
