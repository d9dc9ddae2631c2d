"""Per-group merge coefficients: one recipe, or a population of recipes at once.

A *recipe* gives some of a method's parameters one value per group of
tensors (per layer, typically): ``weight`` ``[G, K]`` for ``K`` models,
``lambda_`` ``[G]``. With a leading ``[N]`` it is a population of recipes,
merged into a population particle of ``N`` merges (what an evolutionary
search evaluates with ``nf.vmap_apply``). Member ``i`` of the population is,
bit for bit, the merge of recipe ``i`` alone; ``linear`` and
``task_arithmetic`` compute all members in one broadcast pass per tensor, the
other methods merge member by member.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, cast

import torch

from .._particle import Particle
from .._species import Species
from . import _kernels as K
from . import _methods as M
from ._layers import split_layer
from ._particles import (
    _check_count,
    _Ref,
    _models,
    _single,
    compute_dtype,
    describe,
    merge_particles,
    resolve,
    seed_from,
)

Groups = tuple[tuple[str, ...], ...]


def _mergeable(species: Species, name: str) -> bool:
    return bool(species.config[name].operational) and species.dtypes[name].is_floating_point


def layer_groups(species: Species) -> Groups:
    """The operational float parameters of ``species`` grouped by layer.

    A parameter's layer is the first all-digit component of its dotted name
    (``"layers.3.mlp.weight"``, ``"3.weight"``: layer 3 of the stack before
    it); parameters with none form one last group. Groups are ordered by
    (stack, layer) in order of first appearance.

    Args:
        species: the models' species.

    Returns:
        A tuple of groups, each a tuple of parameter names.

    Examples:
        >>> merge.layer_groups(nf.particle(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))).species)
        (('0.weight', '0.bias'), ('2.weight', '2.bias'))
    """
    groups: dict[Any, list[str]] = {}
    rest: list[str] = []
    for name in species.names:
        if not _mergeable(species, name):
            continue
        parts = split_layer(name)
        if parts is None:
            rest.append(name)
        else:
            groups.setdefault((parts[0], parts[1]), []).append(name)
    out = [tuple(v) for v in groups.values()]
    if rest:
        out.append(tuple(rest))
    return tuple(out)


def resolve_groups(groups: Any, species: Species, where: str) -> Groups:
    """``"layers"`` (``layer_groups``), ``"tensors"`` (one group per tensor), ``"all"`` (one
    group) or explicit groups of parameter names (checked: known, mergeable, disjoint)."""
    if isinstance(groups, str):
        names = tuple(n for n in species.names if _mergeable(species, n))
        if groups == "layers":
            return layer_groups(species)
        if groups == "tensors":
            return tuple((n,) for n in names)
        if groups == "all":
            return (names,) if names else ()
        raise ValueError(f"{where}: groups expects 'layers', 'tensors', 'all' or groups of names, got {groups!r}")
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{where}: groups expects 'layers', 'tensors', 'all' or a sequence of groups of names, "
                        f"got {describe(groups)}")
    seen: dict[str, int] = {}
    out = []
    for gi, g in enumerate(groups):
        if isinstance(g, str) or not isinstance(g, (list, tuple)) or not g:
            raise TypeError(f"{where}: group {gi} expects a non-empty sequence of parameter names, got {describe(g)}")
        for n in g:
            if not isinstance(n, str) or n not in species.config:
                raise ValueError(f"{where}: group {gi} names {n!r}, which is not a parameter of the models")
            if not _mergeable(species, n):
                raise ValueError(f"{where}: group {gi} names {n!r}, which is not an operational floating-point "
                                 f"parameter (it is not merged)")
            if n in seen:
                raise ValueError(f"{where}: parameter {n!r} is in groups {seen[n]} and {gi}")
            seen[n] = gi
        out.append(tuple(g))
    return tuple(out)


def check_coefficients(m: M.Method, coefficients: Any, parameter: str, g: int, k: int,
                       where: str) -> tuple[dict[str, torch.Tensor], int | None]:
    """``{parameter: float64 CPU tensor}`` and the population size (None: one recipe)."""
    if isinstance(coefficients, Mapping):
        given = dict(coefficients)
        if not given:
            raise ValueError(f"{where}: coefficients expects at least one parameter")
    elif isinstance(coefficients, torch.Tensor):
        given = {parameter: coefficients}
    else:
        raise TypeError(f"{where}: coefficients expects a tensor or a mapping of parameter names to tensors, "
                        f"got {describe(coefficients)}")
    out: dict[str, torch.Tensor] = {}
    n: int | None = None
    first = None
    for name, c in given.items():
        p = next((q for q in m.params if q.name == name), None)
        if p is None or p.kind is bool:
            numeric = sorted(q.name for q in m.params if q.kind is not bool)
            raise TypeError(f"{where}: {m.name} has no numeric parameter {name!r}; "
                            f"it has {', '.join(numeric) or 'none'}")
        if not isinstance(c, torch.Tensor) or not (c.is_floating_point() or c.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{where}: coefficients[{name!r}] expects a real tensor, got {describe(c)}")
        lead = 2 if p.per_model else 1
        want = f"[{g}, {k}]" if p.per_model else f"[{g}]"
        tail = (g, k) if p.per_model else (g,)
        if c.dim() not in (lead, lead + 1) or tuple(c.shape[-lead:]) != tail:
            raise ValueError(
                f"{where}: coefficients[{name!r}] expects shape {want} ({g} groups"
                f"{f', {k} models' if p.per_model else ''}; with a leading population dimension for several "
                f"recipes), got {list(c.shape)}"
            )
        this = c.shape[0] if c.dim() == lead + 1 else None
        if first is not None and this != n:
            raise ValueError(f"{where}: coefficients disagree on the population size: {first} has "
                             f"{n if n is not None else 'none'}, {name!r} has {this if this is not None else 'none'}")
        if this == 0:
            raise ValueError(f"{where}: coefficients[{name!r}] holds no recipe (a leading dimension of 0)")
        first, n = repr(name), this
        out[name] = c.detach().to("cpu", torch.float64)
    return out, n


def _value(m: M.Method, name: str, c: torch.Tensor) -> Any:
    return c.tolist() if m.param(name).per_model else float(c)


def merge_grouped(
    method: str,
    models: Any,
    coefficients: torch.Tensor | Mapping[str, torch.Tensor],
    *,
    groups: Any,
    parameter: str = "weight",
    base: Particle | None = None,
    generator: torch.Generator | None = None,
    compat: str | None = None,
    **parameters: Any,
) -> Particle:
    """Merge with parameters given per group of tensors: one recipe, or a population of them.

    The hook for evolutionary (and any black-box) merge search: an optimiser
    proposes recipes, this turns a population of them into a population of
    merged models in one call, and ``nf.vmap_apply`` evaluates them together
    (``merge.evolve`` is that loop).

    Args:
        method: a mergekit method name (``nytorch_fn.merge.METHODS``).
        models: the (non-base) models: a sequence of single particles or a population.
        coefficients: a tensor for ``parameter``, or a mapping from parameter
            names to tensors (``{"weight": w, "density": d}``): ``[G, K]`` for a
            per-model parameter (``weight``, ``density``, ...; ``K`` models),
            ``[G]`` for a shared one (``t``, ``lambda_``, ...): the value for
            every tensor of group ``g``. A leading ``[N]`` on every tensor gives
            a population of ``N`` merges.
        groups: ``G`` groups of parameter names (e.g. ``layer_groups(species)``),
            or ``"layers"``, ``"tensors"`` (one group per tensor) or ``"all"``;
            a tensor in no group takes ``parameters`` (or the defaults).
        parameter: which parameter a tensor ``coefficients`` sets.
        base: as ``merge_particles``.
        generator: as ``merge_particles``. One seed is drawn from it per call
            and shared by every member of a population (common random numbers:
            the members' random masks are drawn alike, so they differ by their
            coefficients only).
        compat: as ``merge_particles``.
        **parameters: the method's other parameters, the same for every group.

    Returns:
        A single particle, or a population of ``N`` whose member ``i`` equals
        (bit for bit) the merge of recipe ``i`` with ``generator`` in the same
        state.

    Raises:
        ValueError: a shape that does not match the groups or the models, groups
            naming unknown or unmergeable parameters or one parameter twice, bad
            parameter values (as the method itself).
        TypeError: a parameter the method lacks, non-tensor coefficients.

    Examples:
        >>> groups = merge.layer_groups(base.species)
        >>> c = torch.full((len(groups), 3), 1 / 3)
        >>> soup = merge.merge_grouped("linear", experts, c, groups=groups)
        >>> pop = merge.merge_grouped("ties", experts, {"weight": torch.rand(8, len(groups), 3),
        ...                           "density": torch.full((8, len(groups), 3), 0.5)}, groups=groups, base=base)
    """
    where = f"merge.merge_grouped({method!r})"
    m = M.get(method, where)
    refs = _models(models, where)
    if base is not None:
        if m.base == "ignored":
            raise TypeError(f"{where}: {m.name} takes no base model")
        _single(base, where, "base")
    elif m.base == "required":
        raise TypeError(f"{where}: {m.name} needs a base model")
    k = len(refs)
    _check_count(m, k, where)
    species = (base if base is not None else refs[0].p).species
    grp = resolve_groups(groups, species, where)
    coeffs, n = check_coefficients(m, coefficients, parameter, len(grp), k, where)
    seed = seed_from(generator, where) if m.random else None
    where_is = {name: gi for gi, names in enumerate(grp) for name in names}

    def recipe(i: int | None) -> Callable[[str], dict[str, Any]]:
        def per_tensor(name: str) -> dict[str, Any]:
            gi = where_is.get(name)
            if gi is None:
                return {}
            return {p: _value(m, p, c[gi] if i is None else c[i, gi]) for p, c in coeffs.items()}
        return per_tensor

    common = dict(base=base, compat=compat, _seed=seed, **parameters)
    if n is None:
        return merge_particles(method, models, _per_tensor=recipe(None), **common)
    fast = _broadcast(m, refs, base, coeffs, n, grp, where_is, parameters, compat, seed, where)
    if fast is not None:
        return fast
    import nytorch_fn

    return nytorch_fn.stack([merge_particles(method, models, _per_tensor=recipe(i), **common) for i in range(n)])


# ---------------------------------------------------------------------------
# the broadcast population path (linear and the task-vector family)
# ---------------------------------------------------------------------------

_BROADCAST_SPARSIFY = (None, "magnitude", "random", "outliers")


def _family(m: M.Method) -> tuple[str | None, bool] | None:
    """(sparsify, consensus) of a task-vector method the broadcast path computes, else None."""
    kw = getattr(m.kernel, "keywords", None)
    if getattr(m.kernel, "func", None) is not M._gta_kernel or kw is None or kw["sparsify"] not in _BROADCAST_SPARSIFY:
        return None
    return kw["sparsify"], kw["consensus"]


def _broadcast(
    m: M.Method,
    refs: list[_Ref],
    base: Particle | None,
    coeffs: dict[str, torch.Tensor],
    n: int,
    grp: Groups,
    where_is: dict[str, int],
    parameters: Mapping[str, Any],
    compat: Any,
    seed: int | None,
    where: str,
) -> Particle | None:
    """All ``n`` members of a population in one pass per tensor (``linear``, ``task_arithmetic``,
    ``ties``, ``dare_ties``, ``dare_linear``, ``breadcrumbs*``), with the per-member kernels'
    element-wise operations in their order, so the same bits; or None (the member path)."""
    family = _family(m)
    if m.name != "linear" and family is None:
        return None
    species = (base if base is not None else refs[0].p).species
    if any(r.p.species is not species for r in refs):
        return None  # older versions: the member path migrates them
    devices = {r.tensor(nm).device.type for nm in where_is for r in refs}
    if devices != {"cpu"}:
        return None  # e.g. CUDA divides by a Python number through its reciprocal: keep the member path
    k = len(refs)
    # every member's values, checked as the member path checks them (same errors)
    kws = [[resolve(m, {**parameters, **{p: _value(m, p, c[i, gi]) for p, c in coeffs.items()}}, k, where)
            for gi in range(len(grp))] for i in range(n)]
    flag = compat == "mergekit"
    if family is not None:
        sparsify = family[0]
        if any(kw.get("rescale", False) and (sparsify != "random" or flag) for row in kws for kw in row):
            return None  # an L1 rescale reduces whole tensors per member: keep the member path
    single = merge_particles(m.name, [r.p for r in refs] if refs[0].i is None else refs[0].p,
                             base=base, compat=compat, _seed=seed, _skip=frozenset(where_is), **parameters)
    out = {}
    for name in species.names:
        gi = where_is.get(name)
        if gi is None:
            t = single.params[name]
            out[name] = t.unsqueeze(0).expand(n, *t.shape).contiguous()
            continue
        xs = [r.tensor(name) for r in refs]
        rows = [kws[i][gi] for i in range(n)]
        if m.name == "linear":
            out[name] = _linear_population(xs, rows)
        else:
            assert base is not None and family is not None  # the task-vector family takes a base
            out[name] = _task_vector_population(name, xs, base.params[name], rows, family, flag, seed)
    return Particle(species, out)


def _column(rows: list[dict], key: str, j: int | None, dtype: torch.dtype, dims: int) -> torch.Tensor:
    """``[n, 1, ...]`` of each member's value of ``key`` (model ``j`` of a per-model one)."""
    v = torch.tensor([r[key] if j is None else r[key][j] for r in rows], dtype=torch.float64)
    return v.to(dtype).view((len(rows),) + (1,) * dims)


def _weight_sum(rows: list[dict], dtype: torch.dtype, dims: int) -> torch.Tensor:
    w = torch.tensor([r["weight"] for r in rows], dtype=torch.float64)
    total = w[:, 0].clone()
    for j in range(1, w.shape[1]):
        total += w[:, j]  # Python's sum(weight), left to right in float64
    return total.to(dtype).view((len(rows),) + (1,) * dims)


def _linear_population(xs: list[torch.Tensor], rows: list[dict]) -> torch.Tensor:
    dt = xs[0].dtype
    cdt = compute_dtype(dt)
    dims = xs[0].dim()
    acc = xs[0].to(cdt).unsqueeze(0) * _column(rows, "weight", 0, cdt, dims)
    for j in range(1, len(xs)):
        acc += xs[j].to(cdt).unsqueeze(0) * _column(rows, "weight", j, cdt, dims)
    if rows[0]["normalize"]:
        acc /= _weight_sum(rows, cdt, dims)
    return acc.to(dt)


def _ranks(a: torch.Tensor) -> torch.Tensor:
    """Descending rank of every entry of a flat tensor, ties by index (``_select``'s order)."""
    order = a.sort(descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(a.numel(), device=a.device)
    return ranks


def _task_vector_population(
    name: str,
    xs: list[torch.Tensor],
    base_t: torch.Tensor,
    rows: list[dict[str, Any]],
    family: tuple[str | None, bool],
    compat: bool,
    seed: int | None,
) -> torch.Tensor:
    sparsify, consensus = family
    dt = base_t.dtype
    cdt = compute_dtype(dt)
    shape = base_t.shape
    n, k = len(rows), len(xs)
    b = base_t.to(cdt).reshape(-1)
    size = b.numel()
    taus = [x.to(cdt).reshape(-1) - b for x in xs]  # the bits of Inputs.delta_part
    dens = [[1.0 if r.get("density") is None else r["density"][j] for j in range(k)] for r in rows]
    masks: list[torch.Tensor | None] = [None] * k
    if sparsify in ("magnitude", "outliers"):
        for j in range(k):
            if all(d[j] >= 1.0 for d in dens):
                continue
            ranks = _ranks(taus[j].abs())
            lo = torch.zeros(n, 1, dtype=torch.int64)
            hi = torch.full((n, 1), size, dtype=torch.int64)
            for i, r in enumerate(rows):
                if dens[i][j] >= 1.0:
                    continue
                if sparsify == "magnitude":
                    hi[i] = K._keep_count(dens[i][j], size, at_least_one=True)
                else:
                    target = K._keep_count(dens[i][j], size, at_least_one=not compat)
                    top = int(r["gamma"][j] * size)
                    bottom = max(0, size - target - top)
                    lo[i] = size - bottom - target
                    hi[i] = lo[i] + target
            masks[j] = (ranks.unsqueeze(0) >= lo) & (ranks.unsqueeze(0) < hi)
    divs: list[torch.Tensor | None] = [None] * k
    if sparsify == "random":  # each member draws its masks as the member path does (same generator, same order)
        drawn: list[list[torch.Tensor | None]] = [[None] * n for _ in range(k)]
        for i in range(n):
            g = None
            for j in range(k):
                if dens[i][j] < 1.0:
                    g = g or K.tensor_generator(cast(int, seed), name, b.device)  # the random methods draw a seed
                    drawn[j][i] = K.random_keep(shape, dens[i][j], g, b.device)
        ones = torch.ones(size, dtype=torch.bool)
        for j in range(k):
            if any(t is not None for t in drawn[j]):
                masks[j] = torch.stack([ones if t is None else t for t in drawn[j]])
                if rows[0]["rescale"]:
                    divs[j] = torch.tensor([d[j] if d[j] < 1.0 else 1.0 for d in dens],
                                           dtype=torch.float64).to(cdt).view(n, 1)
    ds = []
    for j in range(k):
        d = taus[j].unsqueeze(0)
        mask, div = masks[j], divs[j]
        d = d * mask if mask is not None else d.expand(n, size).clone()
        if div is not None:
            d /= div
        d *= _column(rows, "weight", j, cdt, 1)
        ds.append(d)
    normalize = rows[0]["normalize"]
    if consensus:
        elected = K._elect(ds, compat)
        mixed = torch.zeros_like(ds[0])
        div = torch.zeros_like(ds[0]) if normalize else None
        for j, d in enumerate(ds):
            agree = d.sign() == elected
            mixed += torch.where(agree, d, 0.0)
            if div is not None:
                div += agree * _column(rows, "weight", j, cdt, 1)
        if div is not None:
            div[div == 0] = 1
            mixed /= div
    else:
        mixed = ds[0].clone()
        for d in ds[1:]:
            mixed += d
        if normalize:
            mixed /= _weight_sum(rows, cdt, 1)
    lam = _column(rows, "lambda_", None, cdt, 1)
    if bool((lam != 1).any()):
        mixed *= lam
    return (b.unsqueeze(0) + mixed).reshape(n, *shape).to(dt)
