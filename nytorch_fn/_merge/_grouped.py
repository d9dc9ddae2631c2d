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

from typing import Any, Mapping, Sequence

import torch

from .._particle import Particle
from .._species import Species
from . import _methods as M
from ._layers import split_layer
from ._particles import (
    _check_count,
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

    Example:
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
        base, generator, compat: as ``merge_particles``. One seed is drawn from
            ``generator`` per call and shared by every member of a population
            (common random numbers: the members' random masks are drawn alike,
            so they differ by their coefficients only).
        parameters: the method's other parameters, the same for every group.

    Returns:
        A single particle, or a population of ``N`` whose member ``i`` equals
        (bit for bit) the merge of recipe ``i`` with ``generator`` in the same
        state.

    Raises:
        ValueError: a shape that does not match the groups or the models, groups
            naming unknown or unmergeable parameters or one parameter twice, bad
            parameter values (as the method itself).
        TypeError: a parameter the method lacks, non-tensor coefficients.

    Example:
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

    def recipe(i: int | None):
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
# the broadcast population path (linear, task_arithmetic)
# ---------------------------------------------------------------------------


def _broadcast(m, refs, base, coeffs, n, grp, where_is, parameters, compat, seed, where) -> Particle | None:
    """All ``n`` members of a linear / task-arithmetic population in one pass per tensor,
    with the per-member kernels' operations in their order (so the same bits), or None."""
    allowed = {"linear": {"weight"}, "task_arithmetic": {"weight", "lambda_"}}.get(m.name)
    if allowed is None or not set(coeffs) <= allowed:
        return None
    species = (base if base is not None else refs[0].p).species
    if any(r.p.species is not species for r in refs):
        return None  # older versions: the member path migrates them
    k = len(refs)
    # every member's values, checked as the member path checks them (same errors)
    kws = [[resolve(m, {**parameters, **{p: _value(m, p, c[i, gi]) for p, c in coeffs.items()}}, k, where)
            for gi in range(len(grp))] for i in range(n)]
    normalize = bool(kws[0][0].get("normalize", False))
    devices = {r.tensor(nm).device.type for nm in where_is for r in refs}
    if normalize and devices != {"cpu"}:
        return None  # a CUDA division by a Python number multiplies by its reciprocal: keep the member path
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
        dt = xs[0].dtype
        cdt = compute_dtype(dt)
        view = (n,) + (1,) * xs[0].dim()
        w64 = torch.tensor([kws[i][gi]["weight"] for i in range(n)], dtype=torch.float64)  # [n, k]
        w = [w64[:, j].to(cdt).to(xs[0].device).view(view) for j in range(k)]
        total = None
        if normalize:
            total = w64[:, 0].clone()
            for j in range(1, k):
                total += w64[:, j]  # Python's sum(weight), left to right in float64
            total = total.to(cdt).to(xs[0].device).view(view)
        if m.name == "linear":
            acc = xs[0].to(cdt).unsqueeze(0) * w[0]
            for j in range(1, k):
                acc += xs[j].to(cdt).unsqueeze(0) * w[j]
            if total is not None:
                acc /= total
        else:
            b = base.params[name].to(cdt)
            mixed = (xs[0].to(cdt) - b).unsqueeze(0) * w[0]
            for j in range(1, k):
                mixed += (xs[j].to(cdt) - b).unsqueeze(0) * w[j]
            if total is not None:
                mixed /= total
            lam = torch.tensor([kws[i][gi]["lambda_"] for i in range(n)], dtype=torch.float64)
            if bool((lam != 1).any()):
                mixed *= lam.to(cdt).to(b.device).view(view)
            acc = b.unsqueeze(0) + mixed
        out[name] = acc.to(dt)
    return Particle(species, out)
