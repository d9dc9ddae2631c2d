"""Particles: immutable parameter pytrees, and their arithmetic."""

from __future__ import annotations

import numbers
import operator
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

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

_foreach_ok_types = (int, float)


def transforms_active() -> bool:
    """True inside ``torch.func.vmap``/``grad``/...: ``torch._foreach_*`` has no batching rule there."""
    return torch._C._functorch.peek_interpreter_stack() is not None


class _Plan:
    """Per-species positions used by every operation (computed once, cached on the species)."""

    __slots__ = ("op", "nonop", "all_op", "nonfloat", "ndim0")

    def __init__(self, species: Species) -> None:
        names = species.names
        configs = [species.config[n] for n in names]
        self.op = tuple(i for i, c in enumerate(configs) if c.operational)
        self.nonop = tuple((i, c.clone) for i, c in enumerate(configs) if not c.operational)
        self.all_op = not self.nonop
        self.nonfloat = any(not species.dtypes[n].is_floating_point for n in names)
        self.ndim0 = len(species.shapes[names[0]]) if names else 0


def plan(species: Species) -> _Plan:
    p = species._cache.get("plan")
    if p is None:
        p = species._cache["plan"] = _Plan(species)
    return p


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
    leading population dimension ``N``.

    Arithmetic (``+ - * / **``, unary ``-``/``+``, reflected forms) takes
    Python numbers, 0-d tensors, particles of the same species and, for a
    population, ``[N]`` vectors (one value per member). Only operational
    parameters take part; the others are copied (``clone=True``) or shared
    (``clone=False``) from the left particle. Results keep each parameter's
    dtype and shape, and the arithmetic is differentiable.

    ``a * p + b * q`` (and ``p - lr * g``) is evaluated in one fused pass
    per tensor: ``a * p`` with a Python number is held as a pending scaled
    particle until the next ``+``/``-`` or until its tensors are read. The
    fused result may differ from the unfused one in the last bit.

    Args:
        species: the structure.
        params: a mapping with exactly the names of ``species``; its tensors
            are used as they are (no copy).

    Example:
        >>> p, q = particle(net_a), particle(net_b)
        >>> mid = 0.5 * p + 0.5 * q
        >>> apply(mid, x).shape
    """

    __slots__ = ("species", "_t", "_lazy", "_donated", "__weakref__")

    species: Species

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
        object.__setattr__(self, "_lazy", None)
        object.__setattr__(self, "_donated", False)

    @classmethod
    def _make(cls, species: Species, leaves: Sequence[torch.Tensor]) -> "Particle":
        self = object.__new__(cls)
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "_t", tuple(leaves))
        object.__setattr__(self, "_lazy", None)
        object.__setattr__(self, "_donated", False)
        return self

    @classmethod
    def _scaled(cls, coef: float, base: "Particle") -> "Particle":
        self = object.__new__(cls)
        object.__setattr__(self, "species", base.species)
        object.__setattr__(self, "_t", None)
        object.__setattr__(self, "_lazy", (coef, base))
        object.__setattr__(self, "_donated", False)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Particle is immutable; cannot set {name!r} (build a new particle instead)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Particle is immutable; cannot delete {name!r}")

    def __reduce__(self):
        return (_rebuild, (self.species, self.tensors))

    # -- reading ------------------------------------------------------------

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors in ``species.names`` order."""
        t = self._t
        if t is None:
            coef, base = self._lazy
            t = _scalar_op(base, "mul", coef)
            object.__setattr__(self, "_t", t)
            object.__setattr__(self, "_lazy", None)
        return t

    @property
    def params(self) -> Mapping[str, torch.Tensor]:
        """A read-only mapping ``name -> tensor`` in ``species.names`` order."""
        return ParamsView(self)

    @property
    def population_size(self) -> int | None:
        """``N`` for a population, None for a single particle."""
        return _population_size(self)

    def __repr__(self) -> str:
        n = _population_size(self)
        kind = "Population" if n is not None else "Particle"
        extra = f", size={n}" if n is not None else ""
        return f"{kind}({self.species!r}{extra})"

    def __len__(self) -> int:
        n = _population_size(self)
        if n is None:
            raise NotAPopulationError(
                "len() of a single particle: expected a population (a particle whose tensors "
                "have a leading population dimension, e.g. from stack()), got a single particle"
            )
        return n

    def __getitem__(self, index: Any) -> "Particle":
        """Members of a population: an int (negative too) gives one particle; a slice,
        an index tensor or a boolean mask gives a population (views, not copies)."""
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
        return Particle._make(self.species, [t[index] for t in self.tensors])

    # -- custom operators ---------------------------------------------------

    def map(self, fn: Callable[[torch.Tensor, ParamConfig], torch.Tensor]) -> "Particle":
        """A new particle with ``fn(tensor, config)`` for **every** parameter.

        ``fn`` sees non-operational parameters too and decides what to do
        with them (as the legacy ``unary_operator`` does). It must return a
        tensor of the same shape and dtype.

        Example:
            >>> noisy = p.map(lambda t, cfg: t + 0.1 if cfg.operational else t)
        """
        if not callable(fn):
            raise TypeError(f"map: expected a callable fn(tensor, config) -> tensor, got {describe(fn)}")
        sp = self.species
        out = []
        for name, t in zip(sp.names, self.tensors):
            out.append(_check_result(fn(t, sp.config[name]), t, name, "map"))
        return Particle._make(sp, out)

    def zip_with(
        self, other: "Particle", fn: Callable[[torch.Tensor, torch.Tensor, ParamConfig], torch.Tensor]
    ) -> "Particle":
        """A new particle with ``fn(mine, theirs, config)`` for every parameter.

        ``other`` must be a particle of the same species (an older or newer
        version is migrated first). Population sizes must agree, or one side
        is a single particle that broadcasts.
        """
        if not isinstance(other, Particle):
            raise OperandError(f"zip_with: expected a Particle of the same species, got {describe(other)}")
        if not callable(fn):
            raise TypeError(f"zip_with: expected a callable fn(a, b, config) -> tensor, got {describe(fn)}")
        a, b = align(self, other)
        _result_population(a, b)
        sp = a.species
        out = []
        for name, x, y in zip(sp.names, a.tensors, b.tensors):
            r = fn(x, y, sp.config[name])
            expected = torch.broadcast_shapes(x.shape, y.shape) if isinstance(r, torch.Tensor) else x.shape
            out.append(_check_result(r, x, name, "zip_with", shape=expected))
        return Particle._make(sp, out)

    # -- copies and randomness ----------------------------------------------

    def clone(self) -> "Particle":
        """A copy: operational parameters cloned, the others as their config says."""
        return Particle._make(self.species, _fill(self, lambda t: t.clone()))

    def randn(self, generator: torch.Generator | None = None) -> "Particle":
        """Operational parameters redrawn from N(0, 1); the others as their config says.

        Args:
            generator: a ``torch.Generator`` on the tensors' device, for
                reproducible draws; None uses torch's global RNG.
        """
        return Particle._make(self.species, _fill(self, _draw(torch.randn, generator, self.species)))

    def rand(self, generator: torch.Generator | None = None) -> "Particle":
        """Operational parameters redrawn from U[0, 1); the others as their config says."""
        return Particle._make(self.species, _fill(self, _draw(torch.rand, generator, self.species)))

    def detach(self) -> "Particle":
        """The same values cut from any autograd graph (storage shared)."""
        return Particle._make(self.species, [t.detach() for t in self.tensors])

    def to(self, device: torch.device | str) -> "Particle":
        """The same particle with every tensor on ``device`` (dtypes are structure and stay)."""
        return Particle._make(self.species, [t.to(device) for t in self.tensors])

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
        return _binary(self, other, "mul")

    def __truediv__(self, other: Any) -> "Particle":
        return _binary(self, other, "div")

    def __rtruediv__(self, other: Any) -> "Particle":
        return _binary(self, other, "rdiv")

    def __pow__(self, other: Any) -> "Particle":
        return _binary(self, other, "pow")

    def __rpow__(self, other: Any) -> "Particle":
        return _binary(self, other, "rpow")

    def __neg__(self) -> "Particle":
        return Particle._make(self.species, _unary(self, "neg"))

    def __pos__(self) -> "Particle":
        return self.clone()

    __hash__ = object.__hash__


def donate(particle: Particle) -> Particle:
    """Hand ``particle``'s storage to the next arithmetic operation, which may overwrite it.

    Fresh allocation of large stacked tensors costs several times an
    in-place pass over the same memory. ``donate`` lets a long-running loop
    reuse its population's storage, as JAX's ``donate_argnums`` does::

        pop = 0.5 * donate(pop) + 0.5 * best      # lerp in place into pop's tensors
        params = donate(params) - lr * grads      # SGD step in place

    The donated particle (and every particle sharing its tensors, such as
    ``pop`` above and views like ``pop[3]`` taken before) must not be used
    afterwards. Donation is a hint: where writing in place would be wrong
    or impossible (inside ``torch.func`` transforms, tensors that require
    grad, a result of another shape, operands sharing the storage) the
    operation allocates as usual. Supported: ``+``/``-`` between particles
    (with scalar factors, fused) and ``* / + -`` with a number.
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"donate: expected a Particle, got {describe(particle)}")
    out = Particle._make(particle.species, particle.tensors)
    object.__setattr__(out, "_donated", True)
    return out


def _can_write(xs: list[torch.Tensor], ys: list[torch.Tensor] | None) -> bool:
    """In-place into ``xs`` is safe: no gradient to record, no storage shared with ``ys``.

    With gradients off (``torch.no_grad()``) an operand that requires grad
    records nothing either, so it does not stop the in-place write.
    """
    grad = torch.is_grad_enabled()
    if grad and any(x.requires_grad for x in xs):
        return False
    if ys is not None:
        for x, y in zip(xs, ys):
            # same species: y is x's shape, or x's without the population dimension
            if (grad and y.requires_grad) or y.dim() > x.dim():
                return False
            if x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr():
                return False
    return True


def _rebuild(species: Species, leaves: tuple) -> Particle:
    return Particle._make(species, leaves)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _population_size(p: Particle) -> int | None:
    sp = p.species
    if not sp.names:
        return None
    t = (p._t if p._t is not None else p._lazy[1]._t)[0]
    return t.shape[0] if t.dim() == plan(sp).ndim0 + 1 else None


def _result_population(a: Particle, b: Particle) -> int | None:
    na, nb = _population_size(a), _population_size(b)
    if na is not None and nb is not None and na != nb:
        raise PopulationSizeError(f"population sizes differ: the left operand has {na} members, the right {nb}")
    return na if na is not None else nb


def align(a: Particle, b: Particle) -> tuple[Particle, Particle]:
    """Bring two particles to one species: the older version is migrated to the newer."""
    sa, sb = a.species, b.species
    if sa is sb:
        return a, b
    from ._migrate import migrate

    if sa.is_ancestor_of(sb):
        return migrate(a, sb), b
    if sb.is_ancestor_of(sa):
        return a, migrate(b, sa)
    raise SpeciesMismatchError(
        f"particles of different species: expected a particle of {sa!r} (or of an earlier or later "
        f"version of it), got one of {sb!r}"
    )


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


def _fill(p: Particle, make: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Apply ``make`` to operational tensors; non-operational ones follow their config."""
    pl = plan(p.species)
    leaves = p.tensors
    out = list(leaves)
    for i in pl.op:
        out[i] = make(leaves[i])
    for i, clone in pl.nonop:
        if clone:
            out[i] = leaves[i].clone()
    return out


def require_floating(species: Species, where: str, why: str = "cannot draw random values for") -> None:
    """Refuse operational parameters that are not floating point, naming the first one."""
    for name in species.names:
        dtype = species.dtypes[name]
        if species.config[name].operational and not (dtype.is_floating_point or dtype.is_complex):
            raise TypeError(
                f"{where}: {why} the {dtype} parameter {name!r}; mark it non-operational "
                f"(species.with_config({name!r}, operational=False))"
            )


def draw_like(
    fn: Callable, shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """``fn(shape)`` (``torch.randn``/``rand``) with ``like``'s dtype, drawn on the generator's
    device and moved to ``like``'s (so a CPU generator drives a CUDA particle reproducibly)."""
    device = generator.device if generator is not None else like.device
    return fn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def _draw(fn: Callable, generator: torch.Generator | None, species: Species) -> Callable:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"expected a torch.Generator or None, got {describe(generator)}")
    require_floating(species, fn.__name__)
    return lambda t: draw_like(fn, t.shape, generator, t)


def _assemble(
    species: Species, lead: Sequence[torch.Tensor], results: Sequence[torch.Tensor], population: int | None
) -> tuple[torch.Tensor, ...]:
    """Put operational results back among the non-operational tensors taken from ``lead``."""
    pl = plan(species)
    if pl.all_op:
        return tuple(results)
    out: list[Any] = [None] * len(species.names)
    for i, r in zip(pl.op, results):
        out[i] = r
    for i, clone in pl.nonop:
        t = lead[i]
        if population is not None and t.dim() == len(species.shapes[species.names[i]]):
            t = t.unsqueeze(0).expand(population, *t.shape)
        out[i] = t.clone() if clone else t
    return tuple(out)


def _restore_dtypes(species: Species, results: list[torch.Tensor]) -> list[torch.Tensor]:
    pl = plan(species)
    names, dtypes = species.names, species.dtypes
    for k, i in enumerate(pl.op):
        dt = dtypes[names[i]]
        if results[k].dtype != dt:
            results[k] = results[k].to(dt)
    return results


_PER_TENSOR: dict[str, Callable[[Any, Any], torch.Tensor]] = {
    "add": operator.add,
    "radd": lambda x, y: y + x,
    "sub": operator.sub,
    "rsub": lambda x, y: y - x,
    "mul": operator.mul,
    "div": operator.truediv,
    "rdiv": lambda x, y: y / x,
    "pow": operator.pow,
    "rpow": lambda x, y: y ** x,
}

_FOREACH: dict[str, Callable[[list, Any], list]] = {
    "add": torch._foreach_add,
    "radd": torch._foreach_add,
    "sub": torch._foreach_sub,
    "rsub": lambda xs, y: torch._foreach_add(torch._foreach_neg(xs), y),
    "mul": torch._foreach_mul,
    "div": torch._foreach_div,
    "rdiv": lambda xs, y: torch._foreach_mul(torch._foreach_reciprocal(xs), y),
    "pow": torch._foreach_pow,
    "rpow": lambda xs, y: torch._foreach_pow(y, xs),
}


_FOREACH_INPLACE: dict[str, Callable[[list, Any], None]] = {
    "add": torch._foreach_add_,
    "radd": torch._foreach_add_,
    "sub": torch._foreach_sub_,
    "mul": torch._foreach_mul_,
    "div": torch._foreach_div_,
}


def _ops(op: str, xs: list[torch.Tensor], y: Any, *, foreach: bool) -> list[torch.Tensor]:
    if not xs:
        return []
    if foreach:
        return list(_FOREACH[op](xs, y))
    f = _PER_TENSOR[op]
    if isinstance(y, list):
        return [f(x, yy) for x, yy in zip(xs, y)]
    return [f(x, y) for x in xs]


def _scalar_op(p: Particle, op: str, y: Any) -> tuple[torch.Tensor, ...]:
    """Apply ``op`` with a number or 0-d tensor ``y`` to the operational tensors of ``p``."""
    sp = p.species
    pl = plan(sp)
    leaves = p.tensors
    xs = list(leaves) if pl.all_op else [leaves[i] for i in pl.op]
    # ``torch._foreach_*`` only with a Python number: with a 0-d tensor it
    # either converts it to a number (``sub``/``pow``: the gradient to ``y`` is
    # lost, or refused when ``y`` requires grad) or has a broken backward
    # (``add``/``mul``/``div``: "inconsistent range for TensorList output").
    foreach = not transforms_active() and type(y) in _foreach_ok_types
    results = _ops(op, xs, y, foreach=foreach)
    if pl.nonfloat or isinstance(y, torch.Tensor):
        results = _restore_dtypes(sp, results)
    return _assemble(sp, leaves, results, None)


def _unary(p: Particle, op: str) -> tuple[torch.Tensor, ...]:
    sp = p.species
    pl = plan(sp)
    leaves = p.tensors
    xs = list(leaves) if pl.all_op else [leaves[i] for i in pl.op]
    if not xs:
        results: list = []
    elif transforms_active():
        results = [torch.neg(x) for x in xs]
    else:
        results = list(torch._foreach_neg(xs))
    return _assemble(sp, leaves, results, None)


def _coerce_scalar(p: Particle, other: Any, op: str) -> Any:
    """A number or 0-d tensor as is; a ``[N]`` vector for a population as a per-tensor list."""
    if type(other) in _foreach_ok_types:
        return other
    if isinstance(other, torch.Tensor):
        if other.dim() == 0:
            return other
        n = _population_size(p)
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


class _PerMember:
    __slots__ = ("v",)

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v

    def views(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = self.v.shape[0]
        return [self.v.view(n, *([1] * (x.dim() - 1))) for x in xs]


def _binary(p: Particle, other: Any, op: str) -> Particle:
    if isinstance(other, Particle):
        a, b = align(p, other)
        if op in ("add", "sub"):
            return _lincomb(a, b, 1 if op == "add" else -1)
        return _particle_op(a, b, op)
    y = _coerce_scalar(p, other, op)
    if isinstance(y, _PerMember):
        sp = p.species
        pl = plan(sp)
        leaves = p.tensors
        xs = [leaves[i] for i in pl.op]
        results = _restore_dtypes(sp, _ops(op, xs, y.views(xs), foreach=False))
        return Particle._make(sp, _assemble(sp, leaves, results, None))
    if op == "mul" and type(y) in _foreach_ok_types and not transforms_active():
        base = p if p._t is not None else Particle._make(p.species, p.tensors)
        return Particle._scaled(y, base)
    if p._lazy is not None and p._lazy[1]._donated:
        p = _materialise_donated(p)
    return Particle._make(p.species, _scalar_op(p, op, y))


def _particle_op(a: Particle, b: Particle, op: str) -> Particle:
    population = _result_population(a, b)
    sp = a.species
    pl = plan(sp)
    la, lb = a.tensors, b.tensors
    if pl.all_op:
        xs, ys = list(la), list(lb)
    else:
        xs, ys = [la[i] for i in pl.op], [lb[i] for i in pl.op]
    results = _ops(op, xs, ys, foreach=not transforms_active())
    if pl.nonfloat:
        results = _restore_dtypes(sp, results)
    return Particle._make(sp, _assemble(sp, la, results, population))


def _materialise_donated(p: Particle) -> Particle:
    """``c * donate(q)`` used other than in ``+``/``-``: scale in place, stay donated."""
    coef, base = p._lazy
    out = Particle._make(base.species, _scalar_op(base, "mul", coef))
    object.__setattr__(out, "_donated", True)
    return out


def _decompose(p: Particle) -> tuple[float, Particle]:
    lazy = p._lazy
    if lazy is not None:
        return lazy
    return 1, p


def _lincomb(a: Particle, b: Particle, sign: int) -> Particle:
    """``a + sign * b``, fusing pending scalar factors into one pass per tensor."""
    population = _result_population(a, b)
    sp = a.species
    pl = plan(sp)
    ca, P = _decompose(a)
    cb, Q = _decompose(b)
    cb = cb * sign
    if pl.nonfloat:
        P, Q, ca, cb = Particle._make(sp, a.tensors), Particle._make(sp, b.tensors), 1, sign
    lp, lq = P.tensors, Q.tensors
    if pl.all_op:
        xs, ys = list(lp), list(lq)
    else:
        xs, ys = [lp[i] for i in pl.op], [lq[i] for i in pl.op]
    if not xs:
        results: list = []
    elif transforms_active():
        if ca == 1 and cb in (1, -1):
            f = torch.add if cb == 1 else torch.sub
            results = [f(x, y) for x, y in zip(xs, ys)]
        elif ca == 1:
            results = [torch.add(x, y, alpha=cb) for x, y in zip(xs, ys)]
        else:
            results = [torch.add(x * ca, y, alpha=cb) for x, y in zip(xs, ys)]
    elif P._donated and not pl.nonfloat and _can_write(xs, ys):
        if ca == 1:
            torch._foreach_add_(xs, ys, alpha=cb)
        elif ca + cb == 1 and cb != 0:
            torch._foreach_lerp_(xs, ys, cb)
        else:
            torch._foreach_mul_(xs, ca)
            torch._foreach_add_(xs, ys, alpha=cb)
        results = xs
    else:
        big_q = _population_size(P) is None and _population_size(Q) is not None
        if ca == 1 and cb in (1, -1):
            results = list((torch._foreach_add if cb == 1 else torch._foreach_sub)(xs, ys))
        elif ca + cb == 1 and ca != 0 and cb != 0 and not pl.nonfloat:
            results = list(torch._foreach_lerp(ys, xs, ca) if big_q else torch._foreach_lerp(xs, ys, cb))
        elif ca == 1:
            results = list(torch._foreach_add(xs, ys, alpha=cb))
        elif big_q:
            results = list(torch._foreach_mul(ys, cb))
            torch._foreach_add_(results, xs, alpha=ca)
        else:
            results = list(torch._foreach_mul(xs, ca))
            torch._foreach_add_(results, ys, alpha=cb)
    if pl.nonfloat:
        results = _restore_dtypes(sp, results)
    return Particle._make(sp, _assemble(sp, lp, results, population))
