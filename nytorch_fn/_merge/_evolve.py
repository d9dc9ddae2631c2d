"""Evolutionary model merging: per-group merge coefficients searched by a black-box algorithm.

Akiba et al., "Evolutionary Optimization of Model Merging Recipes" (2024):
merge the same experts with a method (TIES/DARE in the paper), but give its
parameters (``weight``, ``density``) one value per layer and search those
values with CMA-ES on a task's validation score. Here:

- a recipe is ``{parameter: [G, K] or [G] values}`` for ``G`` groups of tensors
  (``layer_groups`` by default) and ``K`` models (``merge_grouped``);
- the search runs in unit coordinates, ``value = low + (high - low) *
  reflect(z)`` per parameter (``bounds``; ``reflect`` mirrors ``z`` into
  ``[0, 1]`` at both ends, the identity inside, so leaving the box never
  lands on a flat region as clipping would), and one ``sigma`` fits every
  parameter; any distribution-based algorithm of ``nytorch_fn.algorithms``
  works (CMA-ES by default);
- each generation, the algorithm's whole population of recipes becomes one
  population of merged models (``merge_grouped`` with a leading ``[N]``),
  which ``fitness_fn`` evaluates at once (typically with ``nf.vmap_apply``);
- random methods (``dare_*``, ``della*``) draw their masks from one seed for
  the whole search (common random numbers), so fitness differences come from
  the recipes only and the returned merge is the one that was evaluated.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import attrs
import torch
from torch import nn

from .._particle import Particle
from .._species import Species
from . import _methods as M
from ._grouped import Groups, merge_grouped, resolve_groups
from ._particles import _check_count, _models, _single, describe, seed_from

#: parameters searched when ``search`` is not given, per method
DEFAULT_SEARCH: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "multislerp": ("weight",),
    "nuslerp": ("weight",),
    "karcher": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "dare_linear": ("weight", "density"),
    "breadcrumbs": ("weight", "density"),
    "breadcrumbs_ties": ("weight", "density"),
    "della": ("weight", "density"),
    "della_linear": ("weight", "density"),
    "slerp": ("t",),
    "nearswap": ("t",),
}
#: the range each searched parameter is kept in when ``bounds`` does not say
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0),
    "density": (0.05, 1.0),
    "t": (0.0, 1.0),
    "lambda_": (0.0, 2.0),
    "gamma": (0.0, 0.2),
    "epsilon": (0.0, 0.2),
    "select_topk": (0.05, 1.0),
}
#: the starting value of each searched parameter when ``init`` does not say
DEFAULT_INIT: dict[str, float] = {"weight": 0.5, "density": 0.5, "t": 0.5, "lambda_": 1.0, "gamma": 0.01,
                                  "epsilon": 0.1, "select_topk": 0.5}


def _floats(x: torch.Tensor) -> list:
    out = x.tolist()
    return out if isinstance(out, list) else [out]


@attrs.frozen(kw_only=True)
class EvolvedMerge:
    """What ``evolve`` found: the best recipe, its merge, and how the search went.

    Attributes:
        method: the merge method.
        groups: the ``G`` groups of parameter names the recipe's rows refer to.
        recipe: ``{parameter: float64 tensor}``, ``[G, K]`` for a per-model
            parameter, ``[G]`` for a shared one (inside its bounds).
        merged: the best recipe's merge, a single particle.
        fitness: its fitness (as ``fitness_fn`` returned it).
        start_recipe: the recipe the search started from (same layout).
        start_fitness: its fitness.
        parameters: the method's other (fixed) parameters.
        seed: the seed of a random method's masks (None for the others);
            ``merge_grouped(..., generator=torch.Generator().manual_seed(seed))``
            reproduces ``merged``.
        history: the algorithm's ``History`` (best and mean fitness per generation).
        state: the algorithm's last state (``algorithm.run(state, ...)`` continues).
    """

    method: str
    groups: Groups
    recipe: dict[str, torch.Tensor]
    merged: Particle
    fitness: float
    start_recipe: dict[str, torch.Tensor]
    start_fitness: float
    parameters: dict[str, Any]
    seed: int | None
    history: Any
    state: Any

    def config(self, models: Sequence[str], *, base: str | None = None, dtype: str | None = None) -> dict:
        """The best recipe as a mergekit configuration (a dict; ``yaml.safe_dump`` writes the file).

        Every tensor of every group gets its value through a ``filter`` entry
        (filters are whole tensor names, longest first, so each one matches its
        own tensor); tensors in no group take the fixed parameters. The same
        recipe then runs out of core on the full checkpoints, with
        ``nytorch-fn-merge`` or mergekit itself (deterministic methods give
        the same values as ``merged``; random ones draw their own masks).

        Args:
            models: the checkpoint of each model (paths or hub names), in the order
                the models were given to ``evolve``.
            base: the base model's checkpoint, for methods that take one.
            dtype: the output ``dtype`` to write in the config, if any.

        Returns:
            A mergekit configuration as a dict (``merge_method``, ``base_model``,
            ``models``, ``parameters``), ready for ``yaml.safe_dump``.

        Raises:
            ValueError: the wrong number of models, or a missing/unexpected base.
        """
        m = M.METHODS[self.method]
        names = [nm for g in self.groups for nm in g]
        order = sorted(range(len(names)), key=lambda j: (-len(names[j]), names[j]))
        gi_of = {nm: gi for gi, g in enumerate(self.groups) for nm in g}
        per_model = {p: v for p, v in self.recipe.items() if m.param(p).per_model}
        n_models = next((v.shape[1] for v in per_model.values()), None)
        if n_models is not None and len(models) != n_models:
            raise ValueError(f"EvolvedMerge.config: expected {n_models} model paths, got {len(models)}")
        if base is None and m.base == "required":
            raise ValueError(f"EvolvedMerge.config: {m.name} needs the base model's path (base=)")
        if base is not None and m.base == "ignored":
            raise ValueError(f"EvolvedMerge.config: {m.name} takes no base model")

        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, (list, tuple)) else (float(v) if isinstance(v, float) else v)

        def entries(values: Callable[[str], Any], fixed: Any) -> list[dict]:  # values: called at once
            out: list[dict] = [{"filter": names[j], "value": float(values(names[j]))} for j in order]
            if fixed is not None:
                out.append({"value": plain(fixed)})
            return out

        fixed = {p.name: self.parameters[p.name] for p in m.params if p.name in self.parameters}
        top: dict[str, Any] = {}
        for p in m.params:
            if p.name in self.recipe and not p.per_model:
                v = self.recipe[p.name]
                top[p.yaml] = entries(lambda nm: v[gi_of[nm]], fixed.get(p.name, _default(p)))
            elif p.name in fixed and not p.per_model:
                top[p.yaml] = plain(fixed[p.name])
        model_list = []
        for i, path in enumerate(models):
            params: dict[str, Any] = {}
            for p in m.params:
                if not p.per_model:
                    continue
                fixed_i = fixed.get(p.name, _default(p))
                if isinstance(fixed_i, (list, tuple)):
                    fixed_i = fixed_i[i]
                if p.name in self.recipe:
                    v = self.recipe[p.name]
                    params[p.yaml] = entries(lambda nm: v[gi_of[nm], i], fixed_i)
                elif p.name in fixed:
                    params[p.yaml] = plain(fixed_i)
                elif p.name == "weight" and p.default is M.REQUIRED:
                    params[p.yaml] = 1.0  # mergekit requires a weight; ours defaults to 1
            model_list.append({"model": str(path), **({"parameters": params} if params else {})})
        cfg: dict[str, Any] = {"merge_method": self.method}
        if base is not None:
            cfg["base_model"] = str(base)
        cfg["models"] = model_list
        if top:
            cfg["parameters"] = top
        if dtype is not None:
            cfg["dtype"] = dtype
        return cfg


def reflect(z: torch.Tensor) -> torch.Tensor:
    """``z`` folded into ``[0, 1]`` by mirrors at 0 and 1 (the identity inside): continuous and
    without flat regions, so a search that leaves the box still sees where it is going."""
    r = torch.remainder(z, 2.0)
    return torch.where(r > 1.0, 2.0 - r, r)


def _default(p: M.Param) -> Any:
    if p.default is M.REQUIRED:
        return 1.0 if p.name == "weight" else None
    return p.default


def _recipe_species(search: Sequence[str], per_model: Mapping[str, bool], g: int, k: int) -> Species:
    """A species with one float64 parameter per searched merge parameter: ``[G, K]`` or ``[G]``."""
    import nytorch_fn

    holder = nn.Module()
    for name in search:
        shape = (g, k) if per_model[name] else (g,)
        holder.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=torch.float64)))
    return nytorch_fn.particle(holder).species


def evolve(
    method: str,
    models: Any,
    fitness_fn: Callable[[Particle], Any],
    *,
    base: Particle | None = None,
    groups: Any = "layers",
    search: Sequence[str] | None = None,
    init: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    algorithm: Any = None,
    generations: int = 30,
    generator: torch.Generator | None = None,
    compat: str | None = None,
    progress: bool = False,
    **parameters: Any,
) -> EvolvedMerge:
    """Evolve a per-layer merge recipe: the method's coefficients per group, searched on a fitness.

    Evolutionary model merging (Akiba et al., "Evolutionary Optimization of
    Model Merging Recipes", 2024, parameter space): the experts are merged
    with ``method`` as usual, but each searched parameter (``weight`` and
    ``density`` for TIES/DARE) takes one value per group of tensors and model,
    and CMA-ES (or any distribution-based algorithm) searches those values to
    maximise ``fitness_fn`` on held-out data. Every generation's population
    of recipes is merged into one population of models and evaluated in one
    call, so ``fitness_fn`` can run every candidate with ``nf.vmap_apply``.

    Args:
        method: a mergekit method name with numeric parameters (``linear``,
            ``task_arithmetic``, ``ties``, ``dare_ties``, ``slerp``, ...).
        models: the experts: a sequence of single particles (or a population).
        fitness_fn: a population of ``N`` merged models -> ``[N]`` fitness
            (higher is better; an algorithm with ``maximize=False`` takes losses).
            NaN counts as the worst.
        base: the base model, for the methods that take one.
        groups: ``"layers"`` (``layer_groups``: one value per layer, the paper's
            choice), ``"tensors"``, ``"all"`` (one value for the whole model, a
            plain recipe) or explicit groups of parameter names.
        search: the parameters to search; default per method
            (``DEFAULT_SEARCH``: ``weight``; ``weight`` and ``density`` for the
            sparsifying methods; ``t`` for SLERP).
        init: the starting recipe, ``{parameter: value}`` with a number, one value
            per model, or a full ``[G, K]`` / ``[G]`` tensor (default
            ``DEFAULT_INIT``: weights 0.5, density 0.5, t 0.5). Its fitness is
            measured first and reported as ``start_fitness``.
        bounds: ``{parameter: (low, high)}``, the range each searched value is
            kept in (by reflection) (default ``DEFAULT_BOUNDS``: weights and t in [0, 1],
            density in [0.05, 1]; weights in [0.01, 1] where the method
            normalises by their sum).
        algorithm: a distribution-based algorithm of ``nytorch_fn.algorithms``
            searching the unit coordinates (default ``CMAES`` with Hansen's
            population size, at least 8, and ``sigma=0.2``, a fifth of each range).
        generations: how many generations (>= 0).
        generator: the search's randomness and the masks' seed (torch's global RNG when None).
        compat: as ``merge_particles``.
        progress: show a progress bar (needs ``tqdm``).
        **parameters: the method's other parameters, fixed for the whole search
            (``normalize``, ``lambda_``, ...).

    Returns:
        The best recipe met (the start included) as an ``EvolvedMerge``, with its
        merged particle and fitness, the start's, the history and the state.

    Raises:
        ValueError: a method without numeric parameters to search, an unknown
            searched parameter, bad bounds or an ``init`` outside them, a
            fitness of the wrong shape.
        TypeError: a population-based algorithm, a non-callable ``fitness_fn``.

    Examples:
        >>> result = merge.evolve("ties", experts, lambda pop: accuracy(nf.vmap_apply(pop, x_val), y_val),
        ...                       base=base, generations=20, generator=torch.Generator().manual_seed(0))
        >>> result.fitness >= result.start_fitness, result.recipe["density"].shape   # [layers, experts]
        (True, torch.Size([2, 3]))
    """
    where = f"merge.evolve({method!r})"
    m = M.get(method, where)
    if not callable(fitness_fn):
        raise TypeError(f"{where}: fitness_fn expects a callable population -> [N] fitness, got {describe(fitness_fn)}")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
        raise ValueError(f"{where}: generations expects an int >= 0, got {generations!r}")
    refs = _models(models, where)
    if base is not None:
        _single(base, where, "base")
    k = len(refs)
    _check_count(m, k, where)
    species = (base if base is not None else refs[0].p).species
    grp = resolve_groups(groups, species, where)
    if not grp:
        raise ValueError(f"{where}: the models have no operational floating-point parameter to merge")
    g = len(grp)

    numeric = [p.name for p in m.params if p.kind is not bool]
    if search is None:
        if m.name not in DEFAULT_SEARCH:
            raise ValueError(f"{where}: {m.name} has no default parameters to search; pass search= "
                             f"(its numeric parameters: {', '.join(numeric) or 'none'})")
        search = DEFAULT_SEARCH[m.name]
    search = tuple(search)
    if not search or len(set(search)) != len(search):
        raise ValueError(f"{where}: search expects distinct parameter names, got {list(search)}")
    for name in search:
        if name not in numeric:
            raise ValueError(f"{where}: {m.name} has no numeric parameter {name!r} to search; "
                             f"it has {', '.join(numeric) or 'none'}")
        if name in parameters:
            raise TypeError(f"{where}: {name!r} is searched; it cannot also be fixed as a keyword")
    per_model = {name: m.param(name).per_model for name in search}
    shape = {name: (g, k) if per_model[name] else (g,) for name in search}

    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    given_bounds = dict(bounds or {})
    for name in given_bounds:
        if name not in search:
            raise ValueError(f"{where}: bounds names {name!r}, which is not searched ({', '.join(search)})")
    normalizes = bool(parameters.get("normalize", m.param("normalize").default)) if any(
        p.name == "normalize" for p in m.params) else False
    for name in search:
        lo, hi = DEFAULT_BOUNDS.get(name, (0.0, 1.0))
        if name == "weight" and normalizes:
            lo = 0.01  # weights summing to zero cannot be normalised
        lo, hi = given_bounds.get(name, (lo, hi))
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo)
                and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{where}: bounds[{name!r}] expects finite (low, high) with low < high, got {(lo, hi)!r}")
        lows[name], highs[name] = float(lo), float(hi)

    start: dict[str, torch.Tensor] = {}
    given_init = dict(init or {})
    for name in given_init:
        if name not in search:
            raise ValueError(f"{where}: init names {name!r}, which is not searched ({', '.join(search)})")
    for name in search:
        v = given_init.get(name, DEFAULT_INIT.get(name, 0.5 * (lows[name] + highs[name])))
        t = torch.as_tensor(v, dtype=torch.float64).detach().cpu().clone()
        if t.dim() == 1 and per_model[name] and t.shape[0] == k:
            t = t.expand(g, k).clone()
        elif t.dim() == 0:
            t = t.expand(shape[name]).clone()
        if tuple(t.shape) != shape[name]:
            raise ValueError(f"{where}: init[{name!r}] expects a number"
                             f"{f', {k} values (one per model)' if per_model[name] else ''} or shape "
                             f"{list(shape[name])}, got shape {list(t.shape)}")
        if bool(((t < lows[name]) | (t > highs[name]) | t.isnan()).any()):
            raise ValueError(f"{where}: init[{name!r}] expects values inside bounds [{lows[name]}, {highs[name]}], "
                             f"got {_floats(t.reshape(-1))}")
        start[name] = t

    from .. import algorithms as A

    sp = _recipe_species(search, per_model, g, k)
    z0 = Particle(sp, {name: (start[name] - lows[name]) / (highs[name] - lows[name]) for name in search})
    if algorithm is None:
        algorithm = A.CMAES(population_size=max(8, A.cma_population_size(z0)), sigma=0.2)
    if not isinstance(algorithm, A.Algorithm):
        raise TypeError(f"{where}: algorithm expects an algorithm of nytorch_fn.algorithms, got {describe(algorithm)}")
    if getattr(algorithm, "kind", None) != "distribution" or getattr(algorithm, "multi_objective", False):
        raise TypeError(f"{where}: algorithm expects a single-objective distribution-based algorithm (CMAES, "
                        f"SepCMAES, LMMAES, SNES, XNES, PGPE, CEM, OpenAIES), got {type(algorithm).__name__}")
    maximize = bool(getattr(algorithm, "maximize", True))

    seed = seed_from(generator, where) if m.random else None

    def values(z: Particle) -> dict[str, torch.Tensor]:
        return {name: lows[name] + (highs[name] - lows[name]) * reflect(z.params[name].detach().to(torch.float64))
                for name in search}

    def merged(coeffs: Mapping[str, torch.Tensor]) -> Particle:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return merge_grouped(method, models, dict(coeffs), groups=grp, base=base, generator=gen, compat=compat,
                             **parameters)

    def evaluate(zpop: Particle) -> torch.Tensor:
        n = zpop.population_size
        pop = merged(values(zpop))
        f = fitness_fn(pop)
        f = torch.as_tensor(f)
        if f.shape != (n,):
            raise ValueError(f"{where}: fitness_fn expects to return [N] = [{n}] values for a population of {n} "
                             f"merges, got shape {list(f.shape)}")
        return f

    start_pop = Particle(sp, {name: z0.params[name].unsqueeze(0) for name in search})
    start = {name: v[0] for name, v in values(start_pop).items()}  # what is evaluated (to rounding, init)
    start_fitness = float(evaluate(start_pop)[0])
    state = algorithm.init(z0, generator=generator)
    state, history = algorithm.run(state, evaluate, generations, generator=generator, progress=progress)
    best_fitness = float(state.best_fitness)
    better = (best_fitness > start_fitness) if maximize else (best_fitness < start_fitness)
    if generations > 0 and better and not math.isnan(best_fitness):
        recipe, fitness = values(state.best), best_fitness
    else:
        recipe, fitness = {name: t.clone() for name, t in start.items()}, start_fitness
    return EvolvedMerge(
        method=m.name,
        groups=grp,
        recipe=recipe,
        merged=merged(recipe),
        fitness=fitness,
        start_recipe=start,
        start_fitness=start_fitness,
        parameters=dict(parameters),
        seed=seed,
        history=history,
        state=state,
    )
