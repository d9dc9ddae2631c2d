"""Merging particles of one species in memory: the public method functions.

Every function returns a new single particle of the inputs' species:

- operational floating-point parameters are merged, tensor by tensor, in
  float32 (float64 when the parameter is float64) and rounded once to the
  parameter's dtype (so bf16/fp16 merges are correctly rounded up to the
  method's own arithmetic);
- non-operational parameters follow their ``ParamConfig``: taken from the
  first input (``base`` for the methods that have one), a copy with
  ``clone=True``, the very tensor with ``clone=False``;
- integer and bool parameters are copied when every input holds the same
  values, else refused with a ``ValueError`` naming the parameter.

Particles of older versions of the species are migrated to the newest;
particles of different species raise ``SpeciesMismatchError``. Inputs are
never modified.
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import Any, Callable, Mapping, Sequence, cast

import torch

from .._errors import PopulationSizeError, SpeciesMismatchError
from .._particle import Particle, migrate
from .._species import Species
from . import _methods as M
from ._kernels import Inputs


def describe(x: Any) -> str:
    return f"{type(x).__name__} {x!r}" if isinstance(x, (numbers.Number, str)) else type(x).__name__

Compat = str | None


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


class _Ref:
    """One model: a single particle, or member ``i`` of a population."""

    __slots__ = ("p", "i")

    def __init__(self, p: Particle, i: int | None) -> None:
        self.p, self.i = p, i

    def tensor(self, name: str) -> torch.Tensor:
        t = self.p.params[name]
        return t if self.i is None else t[self.i]


def _models(models: Any, where: str) -> list[_Ref]:
    if isinstance(models, Particle):
        n = models.population_size
        if n is None:
            raise TypeError(f"{where}: expected a sequence of particles or a population, got a single particle")
        return [_Ref(models, i) for i in range(n)]
    if not isinstance(models, (list, tuple)):
        raise TypeError(f"{where}: expected a sequence of particles or a population, got {describe(models)}")
    refs = []
    for i, p in enumerate(models):
        if not isinstance(p, Particle):
            raise TypeError(f"{where}: model {i} expected a Particle, got {describe(p)}")
        if p.population_size is not None:
            raise TypeError(f"{where}: model {i} expected a single particle, got a population of {p.population_size}")
        refs.append(_Ref(p, None))
    return refs


def _single(p: Any, where: str, what: str) -> _Ref:
    if not isinstance(p, Particle) or p.population_size is not None:
        raise TypeError(f"{where}: {what} expects a single Particle, got {describe(p)}")
    return _Ref(p, None)


def _lineage(s: Species) -> list[Species]:
    out = []
    at: Species | None = s
    while at is not None:
        out.append(at)
        at = at.parent
    return out


def _align(refs: list[_Ref], where: str) -> Species:
    """The newest species of the inputs; older versions are migrated (in the refs)."""
    newest = refs[0].p.species
    for r in refs[1:]:
        s = r.p.species
        if s is newest:
            continue
        if any(x is newest for x in _lineage(s)):
            newest = s
        elif not any(x is s for x in _lineage(newest)):
            raise SpeciesMismatchError(
                f"{where}: expected particles of one species (or versions of one), got two different species"
            )
    for r in refs:
        if r.p.species is not newest:
            r.p = migrate(r.p, newest)
    return newest


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


def _per_model(m: M.Method, p: M.Param, value: Any, k: int, where: str) -> list | None:
    if value is None and p.default is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.item()
        else:
            if value.shape != (k,):
                raise PopulationSizeError(
                    f"{where}: {p.name} expects one value per model ({k}), got shape {tuple(value.shape)}"
                )
            value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != k:
            raise PopulationSizeError(f"{where}: {p.name} expects {k} values (one per model), got {len(value)}")
        return [M.check_value(m, p, v, where) for v in value]
    return [M.check_value(m, p, value, where)] * k


def resolve(m: M.Method, given: Mapping[str, Any], k: int, where: str, *, yaml: bool = False) -> dict[str, Any]:
    """Checked kernel arguments from keyword arguments (numbers, or one per model).

    mergekit requires ``weight`` in YAML (``yaml=True``); in Python it defaults to 1."""
    names = {p.name for p in m.params}
    unknown = [n for n in given if n not in names]
    if unknown:
        raise TypeError(
            f"{where}: unexpected parameter(s) {', '.join(map(repr, unknown))}; "
            f"{m.name} takes {', '.join(sorted(names)) or 'no parameters'}"
        )
    out = {}
    for p in m.params:
        if p.name in given:
            value = given[p.name]
        elif p.default is M.REQUIRED and p.name == "weight" and not yaml:
            value = 1.0
        elif p.default is M.REQUIRED:
            raise TypeError(f"{where}: missing required parameter {p.name!r}")
        else:
            value = p.default
        if p.per_model:
            out[p.name] = _per_model(m, p, value, k, where)
        else:
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                value = value.item()
            out[p.name] = M.check_value(m, p, value, where)
    M.check_group(m, out, where)
    return out


def compat_flag(compat: Any, where: str) -> bool:
    if compat is None:
        return False
    if compat == "mergekit":
        return True
    raise ValueError(f"{where}: compat expects None or 'mergekit', got {compat!r}")


def seed_from(generator: torch.Generator | None, where: str) -> int:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator expects a torch.Generator or None, got {describe(generator)}")
    return int(torch.randint(0, 2**62, (), generator=generator, device=generator.device if generator else "cpu"))


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


# ---------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------


def merge_particles(
    method: str,
    models: Any,
    *,
    base: Particle | None = None,
    generator: torch.Generator | None = None,
    compat: Compat = None,
    _per_tensor: Callable[[str], Mapping[str, Any]] | None = None,
    _seed: int | None = None,
    _skip: frozenset[str] = frozenset(),
    **parameters: Any,
) -> Particle:
    """Merge particles with any method by its mergekit name (``"ties"``, ``"slerp"``, ...).

    The keyword ``parameters`` are the method's (see the method's own function);
    ``merge_particles("ties", models, base=b, density=0.5)`` equals
    ``ties(b, models, density=0.5)``.

    Args:
        method: one of ``nytorch_fn.merge.METHODS``.
        models: the (non-base) models: a sequence of single particles or a population.
        base: the base particle, for the methods that take one.
        generator: for the random methods (``dare_*``, ``della*``); torch's
            global RNG when None. One seed is drawn from it per call; each
            tensor's masks come from a generator seeded by that seed and the
            tensor's name, so an out-of-core merge with the same generator
            state draws the same masks.
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's rules where they differ).
        _per_tensor: internal (``merge_grouped``): per-tensor parameters; leave it unset.
        _seed: internal (``merge_grouped``): the masks' seed; leave it unset.
        _skip: internal (``merge_grouped``): tensors the caller merges; leave it unset.
        **parameters: the method's parameters (a number, or one per model).

    Returns:
        The merged model, a single particle of the inputs' species.

    Raises:
        ValueError: unknown method, wrong number of models, bad parameter values.
        TypeError: a missing or unknown parameter, a non-particle input.
        SpeciesMismatchError: inputs of different species.
    """
    where = f"merge.{method}" if isinstance(method, str) else "merge"
    m = M.get(method, "merge_particles")
    refs = _models(models, where)
    base_ref = None
    if base is not None:
        if m.base == "ignored":
            raise TypeError(f"{where}: {m.name} takes no base model")
        base_ref = _single(base, where, "base")
    elif m.base == "required":
        raise TypeError(f"{where}: {m.name} needs a base model")
    k = len(refs)
    _check_count(m, k, where)
    params = resolve(m, parameters, k, where) if _per_tensor is None else None
    flag = compat_flag(compat, where)
    seed = (seed_from(generator, where) if _seed is None else _seed) if m.random else None
    everyone = ([base_ref] if base_ref else []) + refs
    species = _align(everyone, where)
    lead = everyone[0]
    out = {}
    for name in species.names:
        cfg = species.config[name]
        first = lead.tensor(name)
        if not cfg.operational:
            out[name] = first.clone() if cfg.clone else first
            continue
        if name in _skip:  # merged by the caller (merge_grouped's population path)
            out[name] = first
            continue
        if not first.is_floating_point():
            for r in everyone[1:]:
                if not torch.equal(r.tensor(name), first):
                    raise ValueError(
                        f"{where}: {name!r} is not floating point ({first.dtype}) and the inputs hold "
                        f"different values; it cannot be merged (make it non-operational, or equal)"
                    )
            out[name] = first.clone()
            continue
        kw = cast(dict, params) if _per_tensor is None else resolve(m, {**parameters, **_per_tensor(name)}, k, where)
        ctx = Inputs(
            name,
            partial(base_ref.tensor, name) if base_ref else None,
            [partial(r.tensor, name) for r in refs],
            owned=False,
            dtype=compute_dtype(first.dtype),
            compat=flag,
            seed=seed,
        )
        out[name] = m.kernel(ctx, **kw).to(first.dtype)
    return Particle(species, out)


def _check_count(m: M.Method, k: int, where: str) -> None:
    lo, hi = m.min_models, m.max_models
    if lo <= k and (hi is None or k <= hi):
        return
    with_base = " besides the base" if m.base == "required" else ""
    if lo == hi:
        expected = f"exactly {lo} model{'s' if lo != 1 else ''}{with_base}"
    else:
        expected = f"at least {lo} model{'s' if lo != 1 else ''}{with_base}"
    extra = ""
    if m.name == "slerp":
        extra = " (slerp interpolates two models, the base and one other; use multislerp or karcher for more)"
    raise ValueError(f"{where}: {m.name} expects {expected}, got {k}{extra}")
