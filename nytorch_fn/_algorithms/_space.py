"""Search spaces: flat vectors of a species, populations drawn inside bounds, bound handling.

``ravel``/``unravel`` move between a particle and a flat ``[P]`` tensor (and
between a population and ``[N, P]``) so that flat-vector objectives and
matrix-based algorithms (the CMA family) work on any species. Only the
operational floating-point parameters are in the flat vector, in
``species.names`` order; the others follow their config when unravelling. A
species with a non-float operational parameter is refused by name.

Both directions are differentiable (reshape, cat, split and dtype casts) and
copy nothing where torch allows: a species with one operational tensor,
contiguous, ravels to a **view** of it (``flat.data_ptr()`` is the tensor's),
and ``unravel`` returns views of the flat tensor whenever no dtype cast is
needed. Several tensors are concatenated (one copy). Mixed dtypes ravel to
their promoted dtype (float32 + float64 -> float64) and unravel casts back.

Bounds are ``(low, high)`` with Python numbers, 0-d tensors or single
particles of the species (elementwise bounds); ``"clip"`` clamps every value
into ``[low, high]``, ``"reflect"`` mirrors a value that left the box back
into it (periodically, so a value far outside still lands inside).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .._checks import check_generator, check_size, require_floating
from .._errors import OperandShapeError, PopulationSizeError, SpeciesMismatchError, describe
from .._particle import Particle, assemble, build, operational, require_single, writable
from .._species import Species
from ._base import scratch_tensor, workspace

BOUND_HANDLING = ("clip", "reflect")


def _op_tensors(p: Particle, where: str) -> list[torch.Tensor]:
    require_floating(p.species, where, "cannot search over")
    return operational(p)


def ravel_size(species: Species) -> int:
    """``P``: the number of searched values (operational floating parameters) of ``species``.

    Args:
        species: the species (``particle.species``).

    Returns:
        The total number of elements of its operational floating-point parameters.

    Examples:
        >>> ravel_size(nf.particle(nn.Linear(3, 2)).species)   # 3 * 2 weights + 2 biases
        8
    """
    lay = species.layout()
    return sum(lay.numel[i] for i in lay.op)


def ravel(p: Particle) -> torch.Tensor:
    """The operational floating parameters of ``p`` as one flat tensor.

    Args:
        p: a single particle (-> ``[P]``) or a population of ``N`` (-> ``[N, P]``).

    Returns:
        A view of the parameter when the species has one operational tensor
        (contiguous) and no cast is needed; otherwise a concatenation (one
        copy) in the promoted dtype of the parameters. Differentiable.

    Raises:
        TypeError: ``p`` is not a particle, or an operational parameter is not
            floating point (named).

    Examples:
        >>> p = nf.particle(nn.Linear(3, 2))            # 3 * 2 weights + 2 biases
        >>> flat = ravel(p)
        >>> flat.shape
        torch.Size([8])
        >>> q = unravel(flat * 2, like=p)               # 2 * p
        >>> bool(torch.equal(q.params["weight"], 2 * p.params["weight"]))
        True
        >>> ravel(nf.random_population(p, 16)).shape    # a population: [N, P]
        torch.Size([16, 8])
    """
    if not isinstance(p, Particle):
        raise TypeError(f"ravel: expected a Particle, got {describe(p)}")
    ts = _op_tensors(p, "ravel")
    n = p.population_size
    if not ts:
        dtype = torch.get_default_dtype()
        shape = (0,) if n is None else (n, 0)
        device = p.tensors[0].device if p.tensors else None
        return torch.zeros(shape, dtype=dtype, device=device)
    lead = () if n is None else (n,)
    flats = [t.reshape(*lead, -1) for t in ts]
    if len(flats) == 1:
        return flats[0]
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.cat([f.to(dtype) for f in flats], dim=-1)


def unravel(flat: Any, like: Particle) -> Particle:
    """A particle (``flat`` of shape ``[P]``) or population (``[N, P]``) of ``like``'s species.

    The operational floating parameters come from ``flat`` (views of it where
    no cast is needed, cast to each parameter's dtype otherwise), the others
    from ``like`` as their config says (repeated along ``N`` for a population
    built from a single ``like``). Differentiable.

    Args:
        flat: ``[P]`` or ``[N, P]`` floating tensor, ``P = ravel_size(like.species)``.
        like: a particle or population of the target species.

    Raises:
        TypeError: not a floating tensor / not a particle.
        OperandShapeError: the last dimension is not ``P``.
        PopulationSizeError: ``flat`` has ``N`` rows but ``like`` is a population of another size.

    Returns:
        A single particle for ``[P]``, a population of ``N`` for ``[N, P]``.

    Examples:
        >>> p = nf.particle(nn.Linear(3, 2))
        >>> pop = unravel(torch.randn(16, ravel_size(p.species)), like=p)
        >>> pop.population_size, pop.params["weight"].shape
        (16, torch.Size([16, 2, 3]))
    """
    if not isinstance(like, Particle):
        raise TypeError(f"unravel: like expects a Particle, got {describe(like)}")
    if not isinstance(flat, torch.Tensor) or not flat.is_floating_point():
        raise TypeError(f"unravel: expected a floating-point tensor, got {describe(flat)}")
    sp = like.species
    require_floating(sp, "unravel", "cannot search over")
    size = ravel_size(sp)
    if flat.dim() not in (1, 2) or flat.shape[-1] != size:
        raise OperandShapeError(
            f"unravel: expected a tensor of shape ({size},) or (N, {size}) for {sp!r}, got shape {tuple(flat.shape)}"
        )
    n = flat.shape[0] if flat.dim() == 2 else None
    m = like.population_size
    if n is not None and m is not None and n != m:
        raise PopulationSizeError(f"unravel: flat has {n} rows but like is a population of {m}")
    if n is None and m is not None:
        raise OperandShapeError(f"unravel: expected (N, {size}) for a population like of {m}, got shape ({size},)")
    lay = sp.layout()
    lead = () if n is None else (n,)
    results, off = [], 0
    for i in lay.op:
        k = lay.numel[i]
        piece = flat[..., off:off + k].reshape(*lead, *lay.shapes[i])
        dtype = sp.dtypes[sp.names[i]]
        results.append(piece if piece.dtype == dtype else piece.to(dtype))
        off += k
    return build(sp, assemble(sp, like.tensors, results, n))


# ---------------------------------------------------------------------------
# bounds
# ---------------------------------------------------------------------------


def _bound_value(v: Any, template: Particle | None, where: str, which: str) -> Any:
    if isinstance(v, bool):
        raise TypeError(f"{where}: {which} bound expects a number, a 0-d tensor or a particle, got {describe(v)}")
    if isinstance(v, numbers.Real) and not isinstance(v, torch.Tensor):
        if math.isnan(float(v)):
            raise ValueError(f"{where}: {which} bound expects a number, got NaN")
        return float(v)
    if isinstance(v, torch.Tensor):
        if v.dim() != 0 or v.dtype == torch.bool or v.is_complex():
            raise OperandShapeError(f"{where}: {which} bound expects a number or a 0-d tensor, got {describe(v)}")
        if bool(torch.isnan(v)):
            raise ValueError(f"{where}: {which} bound expects a number, got NaN")
        return float(v)
    if isinstance(v, Particle):
        require_single(v, f"{where}: {which} bound")
        if template is not None and v.species is not template.species:
            raise SpeciesMismatchError(
                f"{where}: {which} bound expects a particle of {template.species!r}, got one of {v.species!r}"
            )
        for t in operational(v):
            if t.is_floating_point() and bool(torch.isnan(t).any()):
                raise ValueError(f"{where}: {which} bound holds NaN")
        return v
    raise TypeError(f"{where}: {which} bound expects a number, a 0-d tensor or a particle, got {describe(v)}")


def check_bounds(bounds: Any, where: str, template: Particle | None = None) -> tuple[Any, Any] | None:
    """``bounds`` as ``(low, high)`` (numbers as floats, particles as they are), or None.

    Raises:
        TypeError: not a pair of numbers/particles.
        ValueError: ``low > high`` somewhere, or NaN.
    """
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise TypeError(f"{where}: bounds expects (low, high), got {describe(bounds)}")
    low = _bound_value(bounds[0], template, where, "low")
    high = _bound_value(bounds[1], template, where, "high")
    if isinstance(low, float) and isinstance(high, float):
        if low > high:
            raise ValueError(f"{where}: bounds expects low <= high, got ({low}, {high})")
    else:
        lows = _columns(low, high)
        for name, lo, hi in lows:
            if bool((lo > hi).any()):
                raise ValueError(f"{where}: bounds expects low <= high everywhere, but not for {name!r}")
    return (low, high)


def _columns(low: Any, high: Any) -> list[tuple[str, Any, Any]]:
    """``(name, low_t, high_t)`` per operational parameter, for particle or number bounds."""
    sp = (low if isinstance(low, Particle) else high).species
    lay = sp.layout()
    out = []
    for i in lay.op:
        lo = low.tensors[i] if isinstance(low, Particle) else torch.tensor(low, dtype=torch.float64)
        hi = high.tensors[i] if isinstance(high, Particle) else torch.tensor(high, dtype=torch.float64)
        out.append((sp.names[i], lo, hi))
    return out


def check_handling(value: Any, where: str) -> str:
    if value not in BOUND_HANDLING:
        raise ValueError(f"{where}: bound_handling expects one of {list(BOUND_HANDLING)}, got {value!r}")
    return value


def _limit(v: Any, i: int, t: torch.Tensor) -> Any:
    if isinstance(v, Particle):
        return v.tensors[i].to(device=t.device, dtype=t.dtype)
    return v


def clip_limits(bounds: tuple[Any, Any], i: int, t: torch.Tensor) -> tuple[Any, Any]:
    """The ``(low, high)`` that ``enforce_bounds(..., "clip")`` clamps tensor ``i`` (``t``) with:
    two floats, or two tensors of ``t``'s dtype and device (one member's shape: they broadcast
    over rows, so a block of rows is clamped with the same values)."""
    lo, hi = _limit(bounds[0], i, t), _limit(bounds[1], i, t)
    if isinstance(lo, float) and isinstance(hi, float):
        return lo, hi
    return (torch.as_tensor(lo, dtype=t.dtype, device=t.device), torch.as_tensor(hi, dtype=t.dtype, device=t.device))


def clip(t: torch.Tensor, limits: tuple[Any, Any], *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` clamped to ``limits`` (from ``clip_limits``), into ``out`` when given (``out`` may be ``t``)."""
    lo, hi = limits
    if isinstance(lo, float) and isinstance(hi, float):
        if out is t:
            return t.clamp_(lo, hi)
        return t.clamp(lo, hi) if out is None else torch.clamp(t, lo, hi, out=out)
    return torch.clamp(t, lo, hi) if out is None else torch.clamp(t, lo, hi, out=out)


def _reflect(t: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
    lo_t = torch.as_tensor(lo, dtype=t.dtype, device=t.device)
    hi_t = torch.as_tensor(hi, dtype=t.dtype, device=t.device)
    width = hi_t - lo_t
    y = torch.remainder(t - lo_t, 2 * width)
    y = torch.where(y > width, 2 * width - y, y)
    inside = lo_t + y
    inside = torch.minimum(torch.maximum(inside, lo_t), hi_t)  # rounding never leaves the box
    flat = torch.where(width == 0, lo_t, inside)
    return torch.where((t < lo_t) | (t > hi_t), flat, t)


def _reflect_in_place(t: torch.Tensor, lo: Any, hi: Any, masks: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``_reflect(t, lo, hi)`` written into ``t`` (a contiguous buffer the caller owns): the values
    outside the box are gathered, mirrored by the very same elementwise expression and scattered
    back, so the bits are ``_reflect``'s and no temporary of ``t``'s size is made but two bool
    masks (``masks``: two contiguous bool tensors of ``t``'s shape to write them into, or None)."""
    lo_t = torch.as_tensor(lo, dtype=t.dtype, device=t.device)
    hi_t = torch.as_tensor(hi, dtype=t.dtype, device=t.device)
    if masks is None:
        below, above = torch.lt(t, lo_t), torch.gt(t, hi_t)
    else:
        below, above = torch.lt(t, lo_t, out=masks[0]), torch.gt(t, hi_t, out=masks[1])
    idx = below.logical_or_(above).view(-1).nonzero().squeeze(1)
    if idx.numel():
        flat = t.view(-1)

        def pick(b: torch.Tensor) -> torch.Tensor:
            return b.expand(t.shape).reshape(-1)[idx] if b.dim() else b

        flat[idx] = _reflect(flat[idx], pick(lo_t), pick(hi_t))
    return t


def enforce_bounds(
    population: Particle, bounds: tuple[Any, Any] | None, handling: str = "clip", *, donate: bool = False
) -> Particle:
    """``population`` with every operational floating value brought into ``[low, high]``.

    Args:
        population: a particle or population.
        bounds: ``(low, high)`` from ``check_bounds`` (None: returned as it is).
        handling: ``"clip"`` (clamp) or ``"reflect"`` (mirror back into the box;
            needs finite bounds).
        donate: allow writing the results into ``population``'s buffers (it must not be
            used afterwards).

    Values already inside are kept bit for bit.

    Returns:
        A particle or population of the same species and size (``population``
        itself when ``bounds`` is None).

    Examples:
        >>> from nytorch_fn.algorithms import ravel
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 16, generator=torch.Generator().manual_seed(0))
        >>> inside = enforce_bounds(pop * 10, (-5.0, 5.0), "reflect")
        >>> bool(ravel(inside).abs().max() <= 5.0)
        True
    """
    if bounds is None:
        return population
    low, high = bounds
    sp = population.species
    lay = sp.layout()
    leaves = population.tensors
    xs = [leaves[i] for i in lay.op]
    in_place = donate and writable(xs, [x.shape for x in xs], [])
    ws = workspace(donate)  # inside run: reflect's masks reuse the loop's buffers
    results = []
    for i, t in zip(lay.op, xs):
        if not t.is_floating_point():
            results.append(t)
            continue
        if handling == "clip":
            results.append(clip(t, clip_limits(bounds, i, t), out=t if in_place else None))
            continue
        lo, hi = _limit(low, i, t), _limit(high, i, t)
        if isinstance(lo, float) and isinstance(hi, float) and not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"bound_handling='reflect' expects finite bounds, got ({lo}, {hi}); use 'clip'")
        if isinstance(lo, torch.Tensor) and not bool(torch.isfinite(lo).all()) or (
            isinstance(hi, torch.Tensor) and not bool(torch.isfinite(hi).all())
        ):
            raise ValueError("bound_handling='reflect' expects finite bounds; use 'clip'")
        if in_place and t.is_contiguous():
            masks = None
            if ws is not None:
                masks = (scratch_tensor(ws, f"bounds.below{i}", t.shape, torch.bool, t.device),
                         scratch_tensor(ws, f"bounds.above{i}", t.shape, torch.bool, t.device))
            results.append(_reflect_in_place(t, lo, hi, masks))
        else:
            results.append(_reflect(t, lo, hi))
    return build(sp, assemble(sp, leaves, results, None))


def uniform_population(
    template: Particle, n: int, low: Any, high: Any, *, generator: torch.Generator | None = None
) -> Particle:
    """``n`` members drawn uniformly inside ``[low, high)`` (operational floating parameters).

    Args:
        template: a single particle of the species (its values are not used;
            non-operational parameters follow their config).
        n: members, >= 1.
        low: the finite lower bound: a number, a 0-d tensor or a single
            particle of the species (elementwise).
        high: the finite upper bound, as ``low``.
        generator: for reproducible draws (drawn on its device, moved to the
            parameters'); None uses torch's global RNG.

    Draws: one ``torch.rand([n, *shape])`` per operational parameter in
    ``species.names`` order, then ``low + u * (high - low)``.

    Raises:
        ValueError: infinite bounds, ``low > high``, ``n < 1``.

    Returns:
        A population of ``n`` members (``[n, ...]`` per tensor).

    Examples:
        >>> from nytorch_fn.algorithms import ravel
        >>> pop = uniform_population(nf.particle(nn.Linear(3, 2)), 64, -5.0, 5.0,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> x = ravel(pop)
        >>> x.shape, bool(x.min() >= -5.0), bool(x.max() < 5.0)
        (torch.Size([64, 8]), True, True)
    """
    require_single(template, "uniform_population")
    n = check_size(n, "uniform_population")
    check_generator(generator, "uniform_population")
    require_floating(template.species, "uniform_population")
    checked = check_bounds((low, high), "uniform_population", template)
    assert checked is not None  # a pair in, a pair out
    low, high = checked
    sp = template.species
    lay = sp.layout()
    leaves = template.tensors
    results = []
    for i in lay.op:
        t = leaves[i]
        lo, hi = _limit(low, i, t), _limit(high, i, t)
        lo_t = torch.as_tensor(lo, dtype=t.dtype, device=t.device)
        hi_t = torch.as_tensor(hi, dtype=t.dtype, device=t.device)
        if not (bool(torch.isfinite(lo_t).all()) and bool(torch.isfinite(hi_t).all())):
            raise ValueError(f"uniform_population: expected finite bounds for {sp.names[i]!r}")
        gdev = generator.device if generator is not None else t.device
        u = torch.rand((n, *t.shape), generator=generator, dtype=t.dtype, device=gdev).to(t.device)
        results.append(lo_t + u * (hi_t - lo_t))
    return build(sp, assemble(sp, leaves, results, n))
