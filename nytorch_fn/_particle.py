"""Particles: immutable parameter pytrees, their arithmetic, and the one-pass primitives.

A particle is a value. Every operation computes its result tensors when it
runs (nothing is pending, memoised or resolved later), and each operator is
the plain torch expression applied tensor by tensor, so ``0.3 * p + 0.7 * q``
holds exactly ``0.3 * a + 0.7 * b`` for every pair of tensors, with torch's
own promotion and rounding, for single particles, populations and inside
``torch.func.vmap``. Work fused into fewer passes is explicit and named:
``lerp`` (``torch.lerp`` per tensor) and ``lincomb`` (a linear combination
with one allocation). Writing in place happens only where a caller passes
``donate=True`` to such a call.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ._checks import check_generator, require_floating
from ._config import ParamConfig
from ._errors import (
    NotAPopulationError,
    OperandError,
    OperandShapeError,
    OperatorResultError,
    PopulationSizeError,
    SpeciesMismatchError,
    describe,
)
from ._species import Species


def transforms_active() -> bool:
    """True inside ``torch.func.vmap``/``grad``/...: ``torch._foreach_*`` has no batching rule there."""
    return torch._C._functorch.peek_interpreter_stack() is not None


class ParamsView(Mapping):
    """A read-only mapping ``name -> tensor`` in ``species.names`` order."""

    __slots__ = ("_particle",)

    def __init__(self, particle: "Particle") -> None:
        self._particle = particle

    def __getitem__(self, name: str) -> torch.Tensor:
        p = self._particle
        return p.tensors[p.species.index(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._particle.species.names)

    def __len__(self) -> int:
        return len(self._particle.species.names)

    def __contains__(self, name: object) -> bool:
        return name in self._particle.species.config

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{n!r}: <{tuple(t.shape)} {t.dtype}>" for n, t in self.items()) + "}"


class Particle:
    """An immutable set of parameter values for one species (a pytree).

    A particle is what a model *is* once its structure is factored out into
    its ``species``: a tuple of tensors in ``species.names`` order. A
    *population* is a particle of the same species whose every tensor has a
    leading population dimension ``N`` (shape ``[N, ...]``).

    Arithmetic (``+ - * / **``, unary ``-``/``+``, reflected forms) takes
    Python numbers, 0-d tensors, particles of the same species (an older
    version is migrated first) and, for a population, ``[N]`` vectors (one
    value per member). Each operator is the same torch expression evaluated
    tensor by tensor (``p * 0.3`` holds ``t * 0.3`` for every tensor ``t``),
    computed when it runs, with torch's promotion and rounding. Only
    operational parameters take part; the others are copied (``clone=True``)
    or shared (``clone=False``) from the left particle. Results keep each
    parameter's dtype and shape, and the arithmetic is differentiable.

    A population is indexed like a tensor's first dimension: an int
    (negative too) gives one member as a single particle, a slice, an index
    tensor, a list or a boolean mask gives a population (views for an int
    or a slice, copies otherwise). ``len(pop)`` is ``N``; ``len()`` and
    indexing of a single particle raise ``NotAPopulationError``.

    Particles are registered as torch pytree nodes (leaves: the tensors in
    ``names`` order), so ``torch.func.grad``, ``vmap`` and
    ``torch.utils._pytree.tree_map`` take and return them.

    Args:
        species: the structure.
        params: a mapping with exactly the parameter names of ``species``,
            each a tensor of the species' dtype and shape ``[...]``, or every
            one ``[N, ...]`` for a population of ``N``. The tensors are used
            as they are (no copy).

    Raises:
        TypeError: ``species`` is not a Species, ``params`` not a mapping, a
            value not a tensor or of another dtype.
        SpeciesMismatchError: names missing from ``params`` or not in the species.
        OperandShapeError: a tensor of the wrong shape.

    Examples:
        >>> p = nf.particle(nn.Linear(3, 2))
        >>> q = p.randn(generator=torch.Generator().manual_seed(0))
        >>> mid = 0.5 * p + 0.5 * q
        >>> torch.equal(mid.params["weight"], 0.5 * p.params["weight"] + 0.5 * q.params["weight"])
        True
        >>> nf.apply(mid, torch.ones(4, 3)).shape
        torch.Size([4, 2])
        >>> zeros = nf.Particle(p.species, {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)})
        >>> pop = nf.stack([p, q, zeros])
        >>> len(pop), pop[-1].params["bias"], pop[1:].population_size
        (3, tensor([0., 0.]), 2)
    """

    __slots__ = ("species", "_t", "__weakref__")

    species: Species
    _t: tuple[torch.Tensor, ...]

    def __init__(self, species: Species, params: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(species, Species):
            raise TypeError(f"Particle(): expected a Species, got {describe(species)}")
        if not isinstance(params, Mapping):
            raise TypeError(f"Particle(): expected a mapping name -> tensor, got {describe(params)}")
        missing = [n for n in species.names if n not in params]
        extra = [n for n in params if n not in species.config]
        if missing or extra:
            raise SpeciesMismatchError(
                f"Particle(): expected exactly the parameter names of the species; "
                f"missing {missing}, unexpected {extra}"
            )
        leaves = tuple(params[n] for n in species.names)
        population: int | None = None
        if leaves and isinstance(leaves[0], torch.Tensor):
            t0, shape0 = leaves[0], species.shapes[species.names[0]]
            if t0.dim() == len(shape0) + 1 and t0.shape[1:] == shape0:
                population = t0.shape[0]
        for n, t in zip(species.names, leaves):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Particle(): {n!r} expected a tensor, got {describe(t)}")
            shape = species.shapes[n]
            expected = shape if population is None else torch.Size((population, *shape))
            if t.shape != expected:
                raise OperandShapeError(
                    f"Particle(): {n!r} expected shape {tuple(expected)}, got {tuple(t.shape)}"
                )
            if t.dtype != species.dtypes[n]:
                raise TypeError(f"Particle(): {n!r} expected dtype {species.dtypes[n]}, got {t.dtype}")
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "_t", leaves)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Particle is immutable; cannot set {name!r} (build a new particle instead)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Particle is immutable; cannot delete {name!r}")

    def __reduce__(self) -> tuple[Callable[..., "Particle"], tuple[Species, tuple[torch.Tensor, ...]]]:
        return (build, (self.species, self._t))

    # -- reading ------------------------------------------------------------

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors in ``species.names`` order (each ``[...]``, or ``[N, ...]`` for a population)."""
        return self._t

    @property
    def params(self) -> Mapping[str, torch.Tensor]:
        """A read-only mapping ``name -> tensor`` in ``species.names`` order (a view, no copy)."""
        return ParamsView(self)

    @property
    def population_size(self) -> int | None:
        """``N`` for a population, None for a single particle."""
        sp = self.species
        if not sp.names:
            return None
        t = self._t[0]
        return t.shape[0] if t.dim() == sp.layout().ndim0 + 1 else None

    def __repr__(self) -> str:
        n = self.population_size
        kind = "Population" if n is not None else "Particle"
        extra = f", size={n}" if n is not None else ""
        return f"{kind}({self.species!r}{extra})"

    def __len__(self) -> int:
        n = self.population_size
        if n is None:
            raise NotAPopulationError(
                "len() of a single particle: expected a population (a particle whose tensors "
                "have a leading population dimension, e.g. from stack()), got a single particle"
            )
        return n

    def __getitem__(self, index: Any) -> "Particle":
        """Members of a population (see the class docstring): one particle or a population.

        An int (negative too) gives one particle; a slice, an index tensor or
        a boolean mask gives a population (views for an int or a slice, copies
        for an index tensor or mask, as torch indexing gives).
        """
        n = len(self)
        if isinstance(index, bool):
            raise TypeError("population index: expected an int, slice, index tensor or boolean mask, got bool")
        if isinstance(index, numbers.Integral):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"population index {i} is out of range for a population of {n}")
        elif isinstance(index, torch.Tensor):
            if index.dtype == torch.bool:
                if index.shape != (n,):
                    raise IndexError(f"boolean mask: expected shape ({n},), got {tuple(index.shape)}")
            elif index.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
                if index.dim() > 1:
                    raise IndexError(f"index tensor: expected 0-d or 1-d, got shape {tuple(index.shape)}")
                if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
                    raise IndexError(
                        f"index tensor holds {int(index.min())}..{int(index.max())}, "
                        f"out of range for a population of {n}"
                    )
                index = index.long()
            else:
                raise TypeError(f"population index: expected an integer or boolean tensor, got dtype {index.dtype}")
        elif isinstance(index, (list, tuple)):
            as_mask = bool(index) and all(isinstance(i, bool) for i in index)
            return self[torch.as_tensor(index, dtype=torch.bool if as_mask else torch.long)]
        elif not isinstance(index, slice):
            raise TypeError(f"population index: expected an int, slice, index tensor or boolean mask, got {describe(index)}")
        return build(self.species, [t[index] for t in self._t])

    # -- custom operators ---------------------------------------------------

    def map(self, fn: Callable[[torch.Tensor, ParamConfig], torch.Tensor]) -> "Particle":
        """A new particle with ``fn(tensor, config)`` for **every** parameter.

        ``fn`` sees non-operational parameters too and decides what to do
        with them (as the legacy ``unary_operator`` does).

        Args:
            fn: called once per parameter, in ``names`` order, with the tensor
                (``[...]``, or ``[N, ...]`` for a population) and its
                ``ParamConfig``; returns a tensor of the same shape and dtype.

        Returns:
            A particle of the same species holding ``fn``'s results.

        Raises:
            TypeError: ``fn`` is not callable.
            OperatorResultError: ``fn`` returned a non-tensor, another shape or
                another dtype (the message names the parameter).

        Examples:
            >>> p = nf.particle(nn.Linear(2, 1))
            >>> shifted = p.map(lambda t, cfg: t + 1.0 if cfg.operational else t)
            >>> torch.equal(shifted.params["bias"], p.params["bias"] + 1.0)
            True
        """
        if not callable(fn):
            raise TypeError(f"map: expected a callable fn(tensor, config) -> tensor, got {describe(fn)}")
        sp = self.species
        out = []
        for name, t, config in zip(sp.names, self._t, sp.layout().configs):
            out.append(_check_result(fn(t, config), t, name, "map"))
        return build(sp, out)

    def zip_with(
        self, other: "Particle", fn: Callable[[torch.Tensor, torch.Tensor, ParamConfig], torch.Tensor]
    ) -> "Particle":
        """A new particle with ``fn(mine, theirs, config)`` for every parameter.

        Args:
            other: a particle of the same species (an older or newer version
                is migrated first). Population sizes must agree, or one side
                is a single particle that broadcasts.
            fn: called once per parameter with this particle's tensor,
                ``other``'s and the ``ParamConfig``; returns a tensor of the
                broadcast shape of the two and this particle's dtype.

        Returns:
            A particle (a population when either side is one) of the newer species.

        Raises:
            OperandError: ``other`` is not a particle.
            SpeciesMismatchError: ``other`` is of another species.
            PopulationSizeError: the population sizes differ.
            OperatorResultError: ``fn`` returned the wrong shape or dtype.

        Examples:
            >>> p = nf.particle(nn.Linear(2, 1))
            >>> q = p.randn(generator=torch.Generator().manual_seed(0))
            >>> larger = p.zip_with(q, lambda a, b, cfg: torch.maximum(a, b))
            >>> torch.equal(larger.params["weight"], torch.maximum(p.params["weight"], q.params["weight"]))
            True
        """
        if not isinstance(other, Particle):
            raise OperandError(f"zip_with: expected a Particle of the same species, got {describe(other)}")
        if not callable(fn):
            raise TypeError(f"zip_with: expected a callable fn(a, b, config) -> tensor, got {describe(fn)}")
        a, b = align(self, other)
        result_population(a, b)
        sp = a.species
        out = []
        for name, x, y, config in zip(sp.names, a._t, b._t, sp.layout().configs):
            r = fn(x, y, config)
            expected = torch.broadcast_shapes(x.shape, y.shape) if isinstance(r, torch.Tensor) else x.shape
            out.append(_check_result(r, x, name, "zip_with", shape=expected))
        return build(sp, out)

    # -- copies and randomness ----------------------------------------------

    def clone(self) -> "Particle":
        """A copy: operational parameters cloned, the others as their config says.

        Returns:
            A particle of the same species (and population size) with new storage
            for every operational tensor; a non-operational one is copied
            (``clone=True``) or shared (``clone=False``).
        """
        return build(self.species, fill(self, lambda t: t.clone()))

    def randn(self, generator: torch.Generator | None = None) -> "Particle":
        """Operational parameters redrawn from N(0, 1); the others as their config says.

        Args:
            generator: a ``torch.Generator`` for reproducible draws (drawn on
                its device, then moved to each tensor's); None uses torch's
                global RNG.

        Returns:
            A particle of the same species and shapes (``[N, ...]`` for a
            population: every member its own draw).

        Raises:
            TypeError: ``generator`` is not a ``torch.Generator``, or an
                operational parameter is not floating point.

        Examples:
            >>> p = nf.particle(nn.Linear(2, 1))
            >>> a = p.randn(generator=torch.Generator().manual_seed(0))
            >>> b = p.randn(generator=torch.Generator().manual_seed(0))
            >>> torch.equal(a.params["weight"], b.params["weight"])
            True
        """
        return build(self.species, fill(self, _draw(torch.randn, generator, self.species)))

    def rand(self, generator: torch.Generator | None = None) -> "Particle":
        """Operational parameters redrawn from U[0, 1); the others as their config says.

        Args:
            generator: as for ``randn``.

        Returns:
            A particle of the same species and shapes.

        Raises:
            TypeError: as for ``randn``.
        """
        return build(self.species, fill(self, _draw(torch.rand, generator, self.species)))

    def detach(self) -> "Particle":
        """The same values cut from any autograd graph (storage shared).

        Returns:
            A particle whose tensors are ``t.detach()`` of this one's.
        """
        return build(self.species, [t.detach() for t in self._t])

    def to(self, device: torch.device | str) -> "Particle":
        """The same particle with every tensor on ``device`` (dtypes are structure and stay).

        Args:
            device: a ``torch.device`` or its name (``"cpu"``, ``"cuda:0"``, ...).

        Returns:
            A particle of the same species; tensors already there are shared.
        """
        return build(self.species, [t.to(device) for t in self._t])

    # -- arithmetic ---------------------------------------------------------

    def __add__(self, other: Any) -> "Particle":
        return _binary(self, other, "add")

    def __radd__(self, other: Any) -> "Particle":
        return _binary(self, other, "radd")

    def __sub__(self, other: Any) -> "Particle":
        return _binary(self, other, "sub")

    def __rsub__(self, other: Any) -> "Particle":
        return _binary(self, other, "rsub")

    def __mul__(self, other: Any) -> "Particle":
        return _binary(self, other, "mul")

    def __rmul__(self, other: Any) -> "Particle":
        return _binary(self, other, "rmul")

    def __truediv__(self, other: Any) -> "Particle":
        return _binary(self, other, "div")

    def __rtruediv__(self, other: Any) -> "Particle":
        return _binary(self, other, "rdiv")

    def __pow__(self, other: Any) -> "Particle":
        return _binary(self, other, "pow")

    def __rpow__(self, other: Any) -> "Particle":
        return _binary(self, other, "rpow")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        """A tensor operator met a particle (``t * p``): hand it to the particle's own operator.

        ``torch.Tensor.__mul__(t, p)`` is ``t * p``, i.e. ``p.__rmul__(t)``
        (and ``torch.mul(t, p)`` the same); reflected tensor methods map to the
        particle's forward ones. This is also how ``torch.compile`` traces a
        tensor beside a particle without a graph break. Any other torch
        function given a particle, or these with keyword arguments, is refused
        by torch with a ``TypeError``.
        """
        entry = _TORCH_OPERATORS.get(getattr(func, "__name__", "")) if not kwargs and len(args) == 2 else None
        if entry is not None:
            op, reflected = entry
            left, right = (args[1], args[0]) if reflected else args
            if isinstance(left, Particle):
                return getattr(left, f"__{op}__")(right)
            if isinstance(right, Particle):
                return getattr(right, f"__r{op}__")(left)
        return NotImplemented

    def __neg__(self) -> "Particle":
        return _unary(self, operator.neg, torch._foreach_neg)

    def __pos__(self) -> "Particle":
        return self.clone()

    __hash__ = object.__hash__


#: torch operator name -> (our operator, reflected): ``f(a, b)`` is ``a op b``, or ``b op a`` when reflected.
_TORCH_OPERATORS: dict[str, tuple[str, bool]] = {
    **{n: ("add", False) for n in ("add", "__add__")},
    "__radd__": ("add", True),
    **{n: ("sub", False) for n in ("sub", "subtract", "__sub__")},
    **{n: ("sub", True) for n in ("rsub", "__rsub__")},
    **{n: ("mul", False) for n in ("mul", "multiply", "__mul__")},
    "__rmul__": ("mul", True),
    **{n: ("truediv", False) for n in ("div", "divide", "true_divide", "__truediv__", "__div__")},
    **{n: ("truediv", True) for n in ("__rtruediv__", "__rdiv__")},
    **{n: ("pow", False) for n in ("pow", "__pow__")},
    "__rpow__": ("pow", True),
}


def build(species: Species, tensors: Sequence[torch.Tensor]) -> Particle:
    """A particle of ``species`` holding ``tensors`` as they are, without any check.

    For code that already knows the tensors fit (names order, shapes, dtypes);
    everything else goes through ``Particle(species, params)``.
    """
    p = object.__new__(Particle)
    object.__setattr__(p, "species", species)
    object.__setattr__(p, "_t", tuple(tensors))
    return p


# ---------------------------------------------------------------------------
# checks and helpers that need Particle (shared by the modules above this one)
# ---------------------------------------------------------------------------


def require_population(pop: Any, where: str) -> int:
    """``N`` for a population; a clear error for anything else."""
    if not isinstance(pop, Particle):
        raise TypeError(
            f"{where}: expected a population (a Particle with a leading population dimension), got {describe(pop)}"
        )
    n = pop.population_size
    if n is None:
        raise NotAPopulationError(
            f"{where}: expected a population (tensors with a leading population dimension, e.g. from stack()), "
            "got a single particle"
        )
    return n


def require_single(p: Any, where: str) -> Particle:
    """``p`` when it is a single particle (not a population)."""
    if not isinstance(p, Particle):
        raise TypeError(f"{where}: expected a Particle, got {describe(p)}")
    n = p.population_size
    if n is not None:
        raise NotAPopulationError(
            f"{where}: expected a single particle, got a population of {n} "
            "(use vmap_apply / to_modules, or index one member)"
        )
    return p


def as_list(items: Any, where: str) -> list:
    """``list(items)``, with a clear ``TypeError`` for a non-iterable (or a lone particle, module, tensor)."""
    if isinstance(items, (Particle, nn.Module, torch.Tensor)) or not hasattr(items, "__iter__"):
        raise TypeError(f"{where}: expected a sequence, got {describe(items)}")
    return list(items)


def result_population(a: Particle, b: Particle) -> int | None:
    """The population size of an operation between ``a`` and ``b`` (one may be single)."""
    na, nb = a.population_size, b.population_size
    if na is not None and nb is not None and na != nb:
        raise PopulationSizeError(f"population sizes differ: the left operand has {na} members, the right {nb}")
    return na if na is not None else nb


def common_population(particles: Sequence[Particle]) -> int | None:
    """The population size shared by ``particles`` (single particles broadcast); None if all are single."""
    found: int | None = None
    for k, p in enumerate(particles):
        n = p.population_size
        if n is not None:
            if found is not None and n != found:
                raise PopulationSizeError(
                    f"population sizes differ: an earlier operand has {found} members, operand {k} has {n}"
                )
            found = n
    return found


def migrate(particle: Particle, species: Species) -> Particle:
    """``particle`` brought up to ``species``, a later version of its own species.

    Replays the recorded edits (the legacy ``touch()``): each added
    parameter arrives as this particle's own copy of the value the edit
    carried (repeated along the population dimension for a population);
    removed or None-d ones disappear; config and buffer edits change no
    tensor. Tensors that no edit touched are shared with ``particle``.

    Args:
        particle: a single particle or a population.
        species: ``particle.species`` or a later version of it.

    Returns:
        A particle of ``species`` (``particle`` itself when its species is
        already ``species``).

    Raises:
        TypeError: ``particle`` is not a Particle or ``species`` not a Species.
        SpeciesMismatchError: ``species`` is not ``particle.species`` or a
            later version of it (an earlier version, another branch or
            another species).

    Examples:
        >>> p = nf.particle(nn.Linear(2, 1))
        >>> s2 = p.species.add_param("scale", torch.ones(1))
        >>> nf.migrate(p, s2).params["scale"]
        tensor([1.])
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"migrate: expected a Particle, got {describe(particle)}")
    if not isinstance(species, Species):
        raise TypeError(f"migrate: expected a Species, got {describe(species)}")
    old = particle.species
    if old is species:
        return particle
    if not old.is_ancestor_of(species):
        relation = (
            "it is an earlier version of the particle's species (migration only goes forward)"
            if species.is_ancestor_of(old)
            else "it is on another branch or of another species"
        )
        raise SpeciesMismatchError(
            f"migrate: expected {old!r} or a later version of it, got {species!r}: {relation}"
        )
    leaves = particle.tensors
    device = leaves[0].device if leaves else None
    return build(species, species.replay(old, leaves, population=particle.population_size, device=device))


def align(a: Particle, b: Particle) -> tuple[Particle, Particle]:
    """Bring two particles to one species: the older version is migrated to the newer."""
    sa, sb = a.species, b.species
    if sa is sb:
        return a, b
    if sa.is_ancestor_of(sb):
        return migrate(a, sb), b
    if sb.is_ancestor_of(sa):
        return a, migrate(b, sa)
    raise SpeciesMismatchError(
        f"particles of different species: expected a particle of {sa!r} (or of an earlier or later "
        f"version of it), got one of {sb!r}"
    )


def align_all(particles: Sequence[Any], where: str) -> list[Particle]:
    """Particles of several versions of one species, all brought to the newest of them."""
    first = particles[0]
    out = [first]
    for k, p in enumerate(particles[1:], 1):
        if not isinstance(p, Particle):
            raise TypeError(f"{where}: expected Particles, got {describe(p)} as element {k}")
        a, b = align(first, p)
        if a is not first:  # the newcomer is newer: move everything seen so far
            out = [align(q, b)[0] for q in out]
            first = out[0]
        out.append(b)
    return out


def _check_result(r: Any, t: torch.Tensor, name: str, where: str, shape: Any = None) -> torch.Tensor:
    shape = t.shape if shape is None else shape
    if not isinstance(r, torch.Tensor):
        raise OperatorResultError(f"{where}: the operator must return a tensor for {name!r}, got {describe(r)}")
    if r.shape != shape:
        raise OperatorResultError(
            f"{where}: the operator must keep the shape of {name!r}: expected {tuple(shape)}, got {tuple(r.shape)}"
        )
    if r.dtype != t.dtype:
        raise OperatorResultError(
            f"{where}: the operator must keep the dtype of {name!r}: expected {t.dtype}, got {r.dtype}"
        )
    return r


def fill(p: Particle, make: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``make`` applied to the operational tensors; non-operational ones follow their config."""
    lay = p.species.layout()
    leaves = p.tensors
    out = list(leaves)
    for i in lay.op:
        out[i] = make(leaves[i])
    for i, clone in lay.nonop:
        if clone:
            out[i] = leaves[i].clone()
    return out


def draw_like(
    fn: Callable, shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """``fn(shape)`` (``torch.randn``/``rand``) with ``like``'s dtype, drawn on the generator's
    device and moved to ``like``'s (so a CPU generator drives a CUDA particle reproducibly)."""
    device = generator.device if generator is not None else like.device
    return fn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _draw(fn: Callable, generator: torch.Generator | None, species: Species) -> Callable:
    check_generator(generator, fn.__name__)
    require_floating(species, fn.__name__)
    return lambda t: draw_like(fn, t.shape, generator, t)


def assemble(
    species: Species, lead: Sequence[torch.Tensor], results: Sequence[torch.Tensor], population: int | None
) -> tuple[torch.Tensor, ...]:
    """Put operational results back among the non-operational tensors taken from ``lead``.

    A non-operational tensor of a single ``lead`` is repeated along the
    population dimension when the result is a population of ``population``
    members (a copy with ``clone=True``, an expanded view with ``clone=False``).
    """
    lay = species.layout()
    if lay.all_op:
        return tuple(results)
    out: list[Any] = [None] * len(species.names)
    for i, r in zip(lay.op, results):
        out[i] = r
    for i, clone in lay.nonop:
        t = lead[i]
        if population is not None and t.dim() == len(lay.shapes[i]):
            t = t.unsqueeze(0).expand(population, *t.shape)
        out[i] = t.clone() if clone else t
    return tuple(out)


def operational(p: Particle) -> list[torch.Tensor]:
    """The operational tensors of ``p``, in ``names`` order."""
    lay = p.species.layout()
    leaves = p.tensors
    return list(leaves) if lay.all_op else [leaves[i] for i in lay.op]


# ---------------------------------------------------------------------------
# arithmetic: each operator is the plain torch expression per tensor
# ---------------------------------------------------------------------------

_PER_TENSOR: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "add": operator.add,
    "radd": lambda x, y: y + x,
    "sub": operator.sub,
    "rsub": lambda x, y: y - x,
    "mul": operator.mul,
    "rmul": lambda x, y: y * x,
    "div": operator.truediv,
    "rdiv": lambda x, y: y / x,
    "pow": operator.pow,
    "rpow": lambda x, y: y ** x,
}

# ``torch._foreach_*`` equivalents, used only where they run the very same
# per-tensor kernels as ``_PER_TENSOR`` (on the CPU, outside ``torch.func``
# transforms, with a Python number or a list of tensors): there the CPU
# implementation of every foreach op is a loop calling the plain op, so the
# bits are the same and only the Python overhead goes. Operators without an
# exact foreach twin (``rsub``, ``rdiv``: no reflected foreach op) stay per tensor.
_FOREACH: dict[str, Callable[..., Any]] = {
    "add": torch._foreach_add,
    "radd": torch._foreach_add,
    "sub": torch._foreach_sub,
    "mul": torch._foreach_mul,
    "rmul": torch._foreach_mul,
    "div": torch._foreach_div,
    "pow": torch._foreach_pow,
    "rpow": lambda xs, y: torch._foreach_pow(y, xs),
}

_NUMBER = (int, float)


def _foreach_ok(xs: Sequence[torch.Tensor]) -> bool:
    return bool(xs) and xs[0].device.type == "cpu" and not transforms_active()


def _keep_dtypes(results: list[torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Results in their parameters' dtypes (an integer parameter times 0.5 stays an integer)."""
    for k, (r, x) in enumerate(zip(results, xs)):
        if r.dtype != x.dtype:
            results[k] = r.to(x.dtype)
    return results


class _PerMember:
    """A ``[N]`` vector for a population: member ``i`` is combined with ``v[i]``."""

    __slots__ = ("v",)

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v

    def view_for(self, x: torch.Tensor) -> torch.Tensor:
        """``v`` shaped ``[N, 1, ...]`` against ``x``; in ``x``'s dtype when ``x`` is floating
        (so member ``i`` gets the bits of ``x_i op v[i].to(x.dtype)``)."""
        v = self.v.to(x.dtype) if x.is_floating_point() else self.v
        return v.view(v.shape[0], *([1] * (x.dim() - 1)))


def _coerce_scalar(p: Particle, other: Any, op: str) -> Any:
    """A Python number or 0-d tensor as is; a ``[N]`` vector for a population as ``_PerMember``."""
    if type(other) in _NUMBER:
        return other
    if isinstance(other, torch.Tensor):
        if other.dim() == 0:
            return other
        n = p.population_size
        if n is not None and other.dim() == 1:
            if other.shape[0] != n:
                raise PopulationSizeError(
                    f"per-member vector: expected shape ({n},) for a population of {n}, got {tuple(other.shape)}"
                )
            if other.dtype == torch.bool or other.is_complex():
                raise TypeError(f"per-member vector: expected a real floating or integer dtype, got {other.dtype}")
            device = p.tensors[0].device if p.tensors else other.device
            if other.device != device:
                raise ValueError(f"per-member vector: expected a tensor on {device}, got one on {other.device}")
            return _PerMember(other)
        expected = "a Python number, a 0-d tensor" + (f" or a vector of shape ({n},)" if n is not None else "")
        raise OperandShapeError(
            f"particle {op}: expected {expected} or a particle of the same species, got {describe(other)}"
        )
    if isinstance(other, numbers.Real):
        return int(other) if isinstance(other, numbers.Integral) else float(other)
    raise OperandError(
        f"particle {op}: expected a Python number, a 0-d tensor or a Particle of {p.species!r}, "
        f"got {describe(other)}"
    )


def _with_coefficient(op: str, xs: list[torch.Tensor], y: Any) -> list[torch.Tensor]:
    """``xs op y`` per tensor for a number, a 0-d tensor or a per-member vector ``y``."""
    f = _PER_TENSOR[op]
    if isinstance(y, _PerMember):
        return [f(x, y.view_for(x)) for x in xs]
    if not isinstance(y, torch.Tensor) and op in _FOREACH and _foreach_ok(xs):
        return list(_FOREACH[op](xs, y))
    # A coefficient enters as torch treats it next to a tensor with dimensions;
    # a 0-d parameter is computed as a one-element one so it gets the same bits
    # (beside a 0-d tensor coefficient, two 0-d tensors would promote to the
    # wider dtype; inside vmap, torch casts a number to a logically 0-d
    # tensor's low-precision dtype first).
    return [f(x, y) if x.dim() else f(x.reshape(1), y).reshape(()) for x in xs]


def _binary(p: Particle, other: Any, op: str) -> Particle:
    if isinstance(other, Particle):
        a, b = (p, other) if p.species is other.species else align(p, other)
        sp = a.species
        lay = sp.layout()
        la, lb = a._t, b._t
        # same species: equal ranks mean equal population sizes, or a PopulationSizeError
        if la and la[0].dim() == lb[0].dim() and la[0].shape[:1] == lb[0].shape[:1]:
            population = a.population_size
        else:
            population = result_population(a, b)
        if lay.all_op:
            xs, ys = list(la), list(lb)
        else:
            xs, ys = [la[i] for i in lay.op], [lb[i] for i in lay.op]
        if op in _FOREACH and _foreach_ok(xs):
            results = list(_FOREACH[op](xs, ys))
        else:
            f = _PER_TENSOR[op]
            results = [f(x, y) for x, y in zip(xs, ys)]
        if lay.nonfloat:
            results = _keep_dtypes(results, xs)
        return build(sp, tuple(results) if lay.all_op else assemble(sp, la, results, population))
    sp = p.species
    lay = sp.layout()
    # a Python number beside an all-operational floating species on the CPU,
    # outside transforms: the foreach call _with_coefficient makes, checked once
    if type(other) in _NUMBER and lay.all_op and not lay.nonfloat and op in _FOREACH:
        leaves = p._t
        if _foreach_ok(leaves):
            return build(sp, _FOREACH[op](leaves, other))
    y = _coerce_scalar(p, other, op)
    leaves = p._t
    xs = list(leaves) if lay.all_op else [leaves[i] for i in lay.op]
    results = _with_coefficient(op, xs, y)
    if lay.nonfloat or type(y) not in _NUMBER:
        results = _keep_dtypes(results, xs)
    return build(sp, tuple(results) if lay.all_op else assemble(sp, leaves, results, None))


def _unary(p: Particle, per_tensor: Callable, foreach: Callable) -> Particle:
    xs = operational(p)
    results = list(foreach(xs)) if _foreach_ok(xs) else [per_tensor(x) for x in xs]
    return build(p.species, assemble(p.species, p.tensors, results, None))


# ---------------------------------------------------------------------------
# explicit one-pass primitives, with donation at the call boundary
# ---------------------------------------------------------------------------


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def check_donation(donated: Particle, others: Sequence[Any], where: str) -> None:
    """Refuse a donated particle that shares storage with another argument of the same call."""
    mine = set()
    for t in operational(donated):  # only the operational tensors are ever written
        ptr = t.untyped_storage().data_ptr()
        if ptr:  # empty tensors hold no storage and share nothing
            mine.add(ptr)
    for k, other in enumerate(others):
        if isinstance(other, Particle):
            theirs: Sequence[torch.Tensor] = operational(other)
        elif isinstance(other, torch.Tensor):
            theirs = (other,)
        else:
            continue
        if other is donated or any(t.untyped_storage().data_ptr() in mine for t in theirs):
            raise ValueError(
                f"{where}: donate=True expects the donated particle to share no storage with the "
                f"other arguments, but argument {k + 1} after it shares its tensors (pass a copy, "
                "or donate=False)"
            )


def writable(
    xs: Sequence[torch.Tensor], shapes: Sequence[torch.Size] | None, others: Sequence[Sequence[Any]]
) -> bool:
    """Whether results of ``shapes`` (None: the shapes of ``xs``) may be written into ``xs`` in
    place: same shapes, no overlapping (expanded) memory, nothing for autograd to record, no
    ``torch.func`` transform."""
    if transforms_active():
        return False
    if torch.is_grad_enabled():
        if any(x.requires_grad for x in xs):
            return False
        for group in others:
            if any(isinstance(y, torch.Tensor) and y.requires_grad for y in group):
                return False
    if shapes is not None and any(x.shape != shape for x, shape in zip(xs, shapes)):
        return False
    for x in xs:
        if not x.is_contiguous() and any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape)):
            return False
    return True


def _joint_shape_of(shape: torch.Size, y: torch.Tensor) -> torch.Size:
    return shape if len(shape) >= y.dim() else y.shape


def _weight(weight: Any, n: int | None, where: str, name: str = "weight") -> Any:
    """A number, a 0-d floating tensor, or (for a population) a ``[N]`` floating vector."""
    if isinstance(weight, bool):
        raise TypeError(f"{where}: {name} expects a number or a floating tensor, got {describe(weight)}")
    if isinstance(weight, numbers.Real) and not isinstance(weight, torch.Tensor):
        return float(weight)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{where}: {name} expects a number, a 0-d tensor or a [N] vector, got {describe(weight)}")
    if not weight.is_floating_point():
        raise TypeError(f"{where}: {name} expects a floating-point tensor, got dtype {weight.dtype}")
    if weight.dim() == 0:
        return weight
    if weight.dim() == 1 and n is not None:
        if weight.shape[0] != n:
            raise PopulationSizeError(
                f"{where}: {name} expects a [N] vector of {n} entries (one per member), got shape {tuple(weight.shape)}"
            )
        return _PerMember(weight)
    expected = "a number, a 0-d tensor" + (f" or a vector of shape ({n},)" if n is not None else "")
    raise OperandShapeError(f"{where}: {name} expects {expected}, got {describe(weight)}")


def _as_weight_for(w: Any, x: torch.Tensor) -> Any:
    if isinstance(w, _PerMember):
        return w.view_for(x).to(x.device)
    if isinstance(w, torch.Tensor):
        return w.to(device=x.device, dtype=x.dtype)
    return w


def lerp(start: Particle, end: Particle, weight: Any, *, donate: bool = False) -> Particle:
    """``torch.lerp(start, end, weight)`` per tensor: ``start + weight * (end - start)`` in one pass.

    Numerics are torch's ``lerp`` kernel's (not those of the expression
    ``(1 - w) * start + w * end``, which rounds three times): bit for bit
    ``torch.lerp(a, b, w)`` for every pair of operational tensors, in single
    particles, populations and inside ``torch.func.vmap``. A tensor weight is
    cast to each parameter's dtype (``torch.lerp`` requires it). Non-operational
    parameters come from ``start`` as their config says.

    Args:
        start: a particle or population (an older version of ``end``'s
            species is migrated).
        end: a particle or population of the same species; a population and
            a single particle broadcast.
        weight: a Python number, a 0-d floating tensor, or a ``[N]`` floating
            vector giving member ``i`` the weight ``weight[i]``.
        donate: allow writing the result into ``start``'s tensors instead of
            allocating (``start`` must not be used afterwards: its tensors, and
            every view of them, hold unspecified values). Where writing in
            place is impossible (inside ``torch.func`` transforms, tensors
            that autograd records, a result of another shape) the call
            allocates; the result's values are the same either way.

    Returns:
        A particle of the newer species; a population of ``N`` when either
        side is one (``[N, ...]`` per tensor), else a single particle.

    Raises:
        SpeciesMismatchError: ``start`` and ``end`` are of different species.
        PopulationSizeError: population sizes, or the weight vector's length, disagree.
        TypeError: a non-float weight, or a non-float operational parameter.
        ValueError: ``donate=True`` and ``end`` shares storage with ``start``.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> pop = nf.random_population(nf.particle(nn.Linear(2, 1)), 4, generator=g)
        >>> best = nf.best(pop, torch.tensor([0.1, 0.9, 0.3, 0.2]))   # a copy of member 1
        >>> moved = nf.lerp(pop, best, 0.5)
        >>> torch.equal(moved.params["weight"], torch.lerp(pop.params["weight"], best.params["weight"], 0.5))
        True
        >>> pop = nf.lerp(pop, best, 0.5, donate=True)   # the same bits, written into pop's storage
        >>> torch.equal(pop.params["weight"], moved.params["weight"])
        True
    """
    where = "lerp"
    # The common call (one species, every parameter operational and floating,
    # a float weight, equal population sizes, CPU, outside transforms) with
    # its checks done from the layout at once: the same kernel as below.
    if type(weight) is float and donate is False and type(start) is Particle and type(end) is Particle:
        sp = start.species
        if sp is end.species and sp.names:
            lay = sp.layout()
            ts, te = start._t, end._t
            if (
                lay.all_op
                and lay.unfit is None
                and ts[0].dim() == te[0].dim()
                and (ts[0].dim() == lay.ndim0 or ts[0].shape[0] == te[0].shape[0])
                and _foreach_ok(ts)
            ):
                return build(sp, torch._foreach_lerp(ts, te, weight))
    if not isinstance(start, Particle) or not isinstance(end, Particle):
        raise TypeError(f"{where}: expected two Particles, got {describe(start)} and {describe(end)}")
    if not isinstance(donate, bool):
        raise TypeError(f"{where}: donate expects a bool, got {describe(donate)}")
    a, b = align(start, end)
    population = result_population(a, b)
    w = _weight(weight, population, where)
    require_floating(a.species, where, "cannot interpolate")
    if donate:
        check_donation(a, [b, weight], where)
    xs, ys = operational(a), operational(b)
    # the result has start's shapes unless start is single and end a population
    if donate and a.population_size == population and writable(xs, None, [ys, [weight]]):
        if isinstance(w, float) and _foreach_ok(xs):
            torch._foreach_lerp_(xs, ys, w)
        else:
            for x, y in zip(xs, ys):
                x.lerp_(y, _as_weight_for(w, x))
        results = xs
    elif isinstance(w, float) and _foreach_ok(xs):
        results = list(torch._foreach_lerp(xs, ys, w))
    else:
        results = [torch.lerp(x, y, _as_weight_for(w, x)) for x, y in zip(xs, ys)]
    return build(a.species, assemble(a.species, a.tensors, results, population))


def lincomb(weights: Sequence[Any], particles: Sequence[Particle], *, donate: bool = False) -> Particle:
    """``sum_k weights[k] * particles[k]`` per tensor, with one allocation.

    Numerics (a named primitive, not the natural expression): per tensor,
    ``acc = particles[0] * weights[0]``, then for each further term
    ``acc = torch.add(acc, x_k, alpha=w_k)`` for a number weight (one
    rounding of ``acc + w_k * x_k`` where the kernel fuses the multiply-add)
    or ``torch.addcmul(acc, x_k, w_k)`` for a tensor weight, all in place in
    ``acc``. So ``k`` terms take ``k`` passes and one result buffer, where
    ``w0 * p0 + w1 * p1 + ...`` takes ``2k - 1`` passes and as many buffers;
    results may differ from that expression in the last bit (and overflow
    where it would not). Use the plain expression when you need its bits.

    Args:
        weights: one per particle: Python numbers, 0-d floating tensors, or
            ``[N]`` floating vectors (member ``i`` gets ``w[i]``).
        particles: particles of one species (older versions are migrated);
            populations and single particles broadcast.
        donate: allow writing the result into ``particles[0]``'s tensors (it
            must not be used afterwards); allocates where that is impossible,
            as ``lerp`` does.

    Returns:
        A particle of the newest species among ``particles``; a population
        of ``N`` when any of them is one.

    Raises:
        ValueError: empty or unequal lengths; ``donate=True`` with
            ``particles[0]`` sharing storage with another argument.
        SpeciesMismatchError: particles of different species.
        PopulationSizeError: population sizes, or a weight vector's length, disagree.
        TypeError: a non-float weight, a non-particle, or a non-float
            operational parameter.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> pop = nf.random_population(nf.particle(nn.Linear(2, 1)), 4, generator=g)
        >>> best, noise = pop[0].clone(), pop.randn(generator=g)
        >>> moved = nf.lincomb([0.5, 0.5, 0.1], [pop, best, noise])   # APSO's move, one buffer
        >>> expected = 0.5 * pop + 0.5 * best + 0.1 * noise            # five passes, five buffers
        >>> torch.allclose(moved.params["weight"], expected.params["weight"], atol=1e-6)
        True
    """
    where = "lincomb"
    if not isinstance(donate, bool):
        raise TypeError(f"{where}: donate expects a bool, got {describe(donate)}")
    weights = as_list(weights, f"{where}: weights")
    ps = as_list(particles, f"{where}: particles")
    if not ps or len(ps) != len(weights):
        raise ValueError(
            f"{where}: expected as many weights as particles (at least one), got {len(weights)} weights "
            f"and {len(ps)} particles"
        )
    for k, p in enumerate(ps):
        if not isinstance(p, Particle):
            raise TypeError(f"{where}: particles[{k}] expected a Particle, got {describe(p)}")
    aligned = align_all(ps, where)
    first = aligned[0]
    population = common_population(aligned)
    ws = [_weight(w, population, where, f"weights[{k}]") for k, w in enumerate(weights)]
    require_floating(first.species, where, "cannot combine")
    if donate:
        check_donation(aligned[0], list(aligned[1:]) + list(weights), where)
    columns = [operational(p) for p in aligned]
    xs = columns[0]
    shapes = []
    for i, x in enumerate(xs):
        shape = x.shape
        for col in columns[1:]:
            shape = _joint_shape_of(shape, col[i])
        shapes.append(shape)
    in_place = donate and writable(xs, shapes, columns[1:] + [list(weights)])
    if _foreach_ok(xs) and all(isinstance(w, float) for w in ws):
        # the CPU foreach ops loop over the very same per-tensor kernels as below
        if in_place:
            torch._foreach_mul_(xs, ws[0])
            results = xs
        else:
            results = list(torch._foreach_mul(xs, ws[0]))
            results = [r if r.shape == shape else r.expand(shape).clone() for r, shape in zip(results, shapes)]
        for col, w in zip(columns[1:], ws[1:]):
            torch._foreach_add_(results, col, alpha=w)
        return build(first.species, assemble(first.species, aligned[0].tensors, results, population))
    # inside torch.func transforms every step allocates (an unbatched buffer cannot
    # take a batched term in place); the kernels, and so the bits, are the same
    fresh = transforms_active()
    results = []
    for i, x in enumerate(xs):
        w0 = _as_weight_for(ws[0], x)
        if in_place:
            acc = x.mul_(w0)
        else:
            acc = x * w0
            if not fresh and acc.shape != shapes[i]:
                acc = acc.expand(shapes[i]).clone()
        for col, w in zip(columns[1:], ws[1:]):
            wk = _as_weight_for(w, x)
            if fresh:
                acc = torch.add(acc, col[i], alpha=wk) if isinstance(wk, float) else torch.addcmul(acc, col[i], wk)
            elif isinstance(wk, float):
                acc.add_(col[i], alpha=wk)
            else:
                acc.addcmul_(col[i], wk)
        results.append(acc)
    return build(first.species, assemble(first.species, aligned[0].tensors, results, population))
