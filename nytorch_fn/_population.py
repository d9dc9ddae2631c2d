"""Populations: many particles of one species as one stacked particle.

A population is a ``Particle`` whose every tensor has a leading population
dimension ``N``. Everything here is one stacked tensor op or one
``torch.func.vmap`` call, never a Python loop over members (building a
population from separately initialised modules is the one exception, since
each layer type initialises itself).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.utils._pytree as pytree
from torch import nn

from ._checks import check_generator, check_size, require_floating
from ._errors import PopulationSizeError, SpeciesMismatchError, UnknownNameError, describe
from ._fitness import fitness_order, member_vector
from ._module import _buffer_copies, call, particle, to_module
from ._particle import Particle, align_all, as_list, assemble, build, draw_like, require_population
from ._species import Species


def _members(items: Any, where: str, what: str) -> list[Particle]:
    """A non-empty list of particles of one species, older versions migrated to the newest."""
    items = as_list(items, where)
    if not items:
        raise ValueError(f"{where}: expected at least one {what}, got an empty sequence")
    if not isinstance(items[0], Particle):
        raise TypeError(f"{where}: expected Particles, got {describe(items[0])}")
    return align_all(items, where)


def stack(particles: Sequence[Particle]) -> Particle:
    """A population of the given single particles (new storage, ``[N, ...]`` per tensor).

    Args:
        particles: ``N >= 1`` single particles of one species; older versions
            of the species are migrated to the newest.

    Returns:
        A population of ``N`` members of the newest species; member ``i`` is
        ``particles[i]``.

    Raises:
        ValueError: ``particles`` is empty.
        TypeError: ``particles`` is not a sequence, or an element is not a
            single particle (``concat`` joins populations).
        SpeciesMismatchError: they are of different species.

    Examples:
        >>> p = nf.particle(nn.Linear(3, 2))
        >>> pop = nf.stack([p.randn() for _ in range(8)])
        >>> len(pop), pop.params["weight"].shape
        (8, torch.Size([8, 2, 3]))
    """
    particles = _members(particles, "stack", "particle")
    for i, p in enumerate(particles):
        if p.population_size is not None:
            raise TypeError(f"stack: element {i} is a population of {len(p)}; use concat() to join populations")
    sp = particles[0].species
    columns = zip(*(p.tensors for p in particles))
    return build(sp, [torch.stack(col) for col in columns])


def unstack(population: Particle) -> list[Particle]:
    """The members of a population as single particles (views into its storage).

    Args:
        population: a population of ``N`` members (``N`` may be 0).

    Returns:
        ``N`` single particles; particle ``i`` views member ``i`` (no copy).

    Raises:
        NotAPopulationError: a single particle.

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 4)
        >>> [m.population_size for m in nf.unstack(pop)]
        [None, None, None, None]
    """
    n = require_population(population, "unstack")
    sp = population.species
    if not sp.names:
        return []
    rows = zip(*(t.unbind(0) for t in population.tensors))
    out = [build(sp, row) for row in rows]
    assert len(out) == n
    return out


def concat(populations: Sequence[Particle]) -> Particle:
    """One population from several (a single particle counts as a population of one).

    Args:
        populations: populations and single particles of one species (older
            versions are migrated), joined in order.

    Returns:
        A population of ``sum(N_k)`` members (new storage).

    Raises:
        ValueError: ``populations`` is empty.
        TypeError: not a sequence of particles.
        SpeciesMismatchError: they are of different species.

    Examples:
        >>> p = nf.particle(nn.Linear(3, 2))
        >>> pop = nf.random_population(p, 4)
        >>> len(nf.concat([pop, p, pop[:2]]))
        7
    """
    pops = _members(populations, "concat", "population")
    parts = []
    for p in pops:
        if p.population_size is None:
            parts.append([t.unsqueeze(0) for t in p.tensors])
        else:
            parts.append(list(p.tensors))
    return build(pops[0].species, [torch.cat(col) for col in zip(*parts)])


def random_population(
    template: Particle,
    n: int,
    *,
    generator: torch.Generator | None = None,
    distribution: str = "randn",
) -> Particle:
    """A population of ``n`` members with fresh random values (``randn`` or ``rand``).

    Non-operational parameters follow their config: copies of the
    template's value (``clone=True``) or one shared tensor broadcast over
    members (``clone=False``, a view).

    Args:
        template: a single particle giving the species, shapes, dtypes and device.
        n: the population size, ``>= 1``.
        generator: a ``torch.Generator`` for reproducible draws; None uses
            torch's global RNG.
        distribution: ``"randn"`` (N(0, 1), default) or ``"rand"`` (U[0, 1)).

    Returns:
        A population of ``n`` members (``[n, ...]`` per tensor).

    Raises:
        ValueError: ``n`` is not an int ``>= 1``, or an unknown ``distribution``.
        TypeError: ``template`` is a population or not a particle, a bad
            ``generator``, or an operational parameter that is not floating point.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 16, generator=g, distribution="rand")
        >>> pop.params["weight"].shape, bool((pop.params["weight"] < 1).all())
        (torch.Size([16, 2, 3]), True)
    """
    check_size(n, "random_population")
    if not isinstance(template, Particle):
        raise TypeError(f"random_population: expected a Particle template, got {describe(template)}")
    if template.population_size is not None:
        raise TypeError("random_population: expected a single particle as template, got a population")
    check_generator(generator, "random_population")
    draw = {"randn": torch.randn, "rand": torch.rand}.get(distribution)
    if draw is None:
        raise ValueError(f"random_population: distribution expects 'randn' or 'rand', got {distribution!r}")
    sp = template.species
    require_floating(sp, "random_population")
    leaves = template.tensors
    results = [draw_like(draw, (n, *leaves[i].shape), generator, leaves[i]) for i in sp.layout().op]
    return build(sp, assemble(sp, leaves, results, n))




def init_population(module: nn.Module, n: int, *, generator: torch.Generator | None = None) -> Particle:
    """A population of ``n`` members, each initialised as its layer types initialise themselves.

    Every member is an independent run of each submodule's own
    ``reset_parameters()`` (``nn.Linear``'s Kaiming uniform, ``nn.Embedding``'s
    normal, ...) on a copy of ``module``; parameters of modules without
    ``reset_parameters`` keep ``module``'s values. ``module`` is not changed
    and its species is the population's. With ``generator`` the draws are
    reproducible and torch's global RNG is left as it was.

    Args:
        module: any ``nn.Module``.
        n: the population size, ``>= 1``.
        generator: a ``torch.Generator`` seeding each member's initialisation;
            None uses (and advances) torch's global RNG.

    Returns:
        A population of ``n`` members of a new species captured from ``module``.

    Raises:
        ValueError: ``n`` is not an int ``>= 1``.
        TypeError: ``module`` is not an ``nn.Module``, or a bad ``generator``.

    Examples:
        >>> pop = nf.init_population(nn.Linear(4, 2), 16, generator=torch.Generator().manual_seed(0))
        >>> bound = 1 / 4 ** 0.5                    # nn.Linear's Kaiming-uniform bound for 4 inputs
        >>> len(pop), bool(pop.params["weight"].abs().max() <= bound)
        (16, True)
    """
    check_size(n, "init_population")
    if not isinstance(module, nn.Module):
        raise TypeError(f"init_population: expected an nn.Module, got {describe(module)}")
    check_generator(generator, "init_population")
    template = particle(module)
    members = []
    for _ in range(n):
        copy = to_module(template)
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                _reset(copy)
        else:
            _reset(copy)
        members.append(copy)
    return stack_modules(members, species=template.species)


def _reset(module: nn.Module) -> None:
    with torch.no_grad():
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()


def stack_modules(modules: Sequence[nn.Module], *, species: Species | None = None) -> Particle:
    """One population from separately built modules of the same architecture.

    The species is captured from the first module (or ``species`` if
    given); every module must have the same parameter names, shapes and
    dtypes. Values are copied. Buffers come from the species (use
    ``stack_buffers`` for per-member buffers).

    Args:
        modules: ``N >= 1`` modules of one architecture (not changed).
        species: the species to use (e.g. one already captured from the same
            architecture); None captures one from ``modules[0]``.

    Returns:
        A population of ``N`` members; member ``i`` holds copies of
        ``modules[i]``'s parameters.

    Raises:
        ValueError: ``modules`` is empty.
        TypeError: an element is not an ``nn.Module``, or ``species`` not a Species.
        SpeciesMismatchError: a module's parameters differ from the species'.

    Examples:
        >>> nets = [nn.Linear(3, 2) for _ in range(5)]
        >>> pop = nf.stack_modules(nets)
        >>> torch.equal(pop.params["weight"][4], nets[4].weight.detach())
        True
    """
    modules = as_list(modules, "stack_modules")
    if not modules:
        raise ValueError("stack_modules: expected at least one module, got an empty sequence")
    for i, m in enumerate(modules):
        if not isinstance(m, nn.Module):
            raise TypeError(f"stack_modules: element {i} expected an nn.Module, got {describe(m)}")
    if species is not None and not isinstance(species, Species):
        raise TypeError(f"stack_modules: species expects a Species or None, got {describe(species)}")
    sp = species if species is not None else particle(modules[0], copy=False).species
    columns: list[list[torch.Tensor]] = [[] for _ in sp.names]
    for i, m in enumerate(modules):
        params = dict(m.named_parameters())
        if set(params) != set(sp.names):
            raise SpeciesMismatchError(
                f"stack_modules: module {i} has parameters {sorted(params)}, expected the species' {sorted(sp.names)}"
            )
        for col, name in zip(columns, sp.names):
            t = params[name]
            if t.shape != sp.shapes[name] or t.dtype != sp.dtypes[name]:
                raise SpeciesMismatchError(
                    f"stack_modules: module {i} parameter {name!r} is {tuple(t.shape)} {t.dtype}, "
                    f"expected {tuple(sp.shapes[name])} {sp.dtypes[name]}"
                )
            col.append(t.detach())
    return build(sp, [torch.stack(col) for col in columns])


def stack_buffers(species: Species, n: int, buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-member copies of the species' buffers (or of ``buffers``), stacked to ``[n, ...]``.

    Args:
        species: the species whose buffers are copied.
        n: the number of members, ``>= 1``.
        buffers: name -> tensor for some buffers, copied instead of the
            species' own; None: the species' buffers.

    Returns:
        A dict name -> tensor of shape ``[n, ...]`` for every buffer that is not
        None, in ``species.buffer_names`` order, for ``vmap_apply_with(...,
        buffers=...)``.

    Raises:
        TypeError: ``species`` is not a Species, or ``buffers`` not a mapping.
        ValueError: ``n`` is not an int ``>= 1``.
        UnknownNameError: a name in ``buffers`` the species does not have.

    Examples:
        >>> species = nf.particle(nn.BatchNorm1d(3)).species
        >>> {k: tuple(v.shape) for k, v in nf.stack_buffers(species, 8).items()}
        {'running_mean': (8, 3), 'running_var': (8, 3), 'num_batches_tracked': (8,)}
    """
    check_size(n, "stack_buffers")
    if not isinstance(species, Species):
        raise TypeError(f"stack_buffers: expected a Species, got {describe(species)}")
    copies = _buffer_copies(species, buffers)
    return {k: v.unsqueeze(0).expand(n, *v.shape).clone() for k, v in copies.items()}


def to_modules(population: Particle) -> list[nn.Module]:
    """``N`` independent modules, one per member (copies; no storage shared).

    Args:
        population: a population of ``N`` members.

    Returns:
        ``N`` new ``nn.Module`` objects, module ``i`` holding member ``i``'s
        values (as ``to_module`` builds them).

    Raises:
        NotAPopulationError: a single particle (use ``to_module``).

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 3)
        >>> [type(m).__name__ for m in nf.to_modules(pop)]
        ['Linear', 'Linear', 'Linear']
    """
    require_population(population, "to_modules")
    return [to_module(m) for m in unstack(population)]


# ---------------------------------------------------------------------------
# forward passes
# ---------------------------------------------------------------------------


def _in_dims_for(args: tuple, in_dims: Any) -> tuple:
    if in_dims is None or isinstance(in_dims, int):
        return tuple(in_dims for _ in args)
    if not isinstance(in_dims, tuple) or len(in_dims) != len(args):
        raise ValueError(f"in_dims: expected None, 0 or a tuple of {len(args)} entries (one per arg), got {in_dims!r}")
    return in_dims


def vmap_apply(population: Particle, *args: Any, **kwargs: Any) -> Any:
    """Every member's forward pass on the same inputs, in one ``torch.func.vmap`` call.

    Inputs are shared by every member: they are closed over, not passed
    through ``vmap``, so any Python object works (a ``PackedSequence``, a
    dataclass). Buffers are the species' (copies; never written). A module
    captured in training mode with buffers (BatchNorm) runs on per-member
    copies, which are dropped: use ``vmap_apply_with`` to keep them or to
    pass per-member inputs.

    Args:
        population: ``N`` members.
        *args: the forward pass's positional inputs, shared by all members.
        **kwargs: its keyword inputs, shared by all members.

    Returns:
        The forward pass's output with a leading ``N`` on every tensor (the
        same pytree: a tuple of outputs stays a tuple); non-tensor outputs
        (None, numbers) come back as one member returned them.

    Raises:
        NotAPopulationError: a single particle (use ``apply``).

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 8)
        >>> x = torch.randn(5, 3)                    # [B, in]
        >>> y = nf.vmap_apply(pop, x)                # [N, B, out]
        >>> y.shape, torch.allclose(y[2], nf.apply(pop[2], x), atol=1e-6)
        (torch.Size([8, 5, 2]), True)
    """
    out, _ = vmap_apply_with(population, args, kwargs)
    return out


def vmap_apply_with(
    population: Particle,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    in_dims: Any = None,
    buffers: Mapping[str, torch.Tensor] | None = None,
    training: bool | None = None,
    chunk_size: int | None = None,
    randomness: str = "error",
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Every member's forward pass in one ``torch.func.vmap`` call, with every option.

    Args:
        population: ``N`` members.
        args: positional inputs (a tuple).
        kwargs: keyword inputs, shared by all members.
        in_dims: None (every arg shared by all members), 0 (every arg has a
            leading ``N``: one input per member) or a tuple with one entry
            per arg.
        buffers: per-member stacked buffers ``[N, ...]`` (e.g. from
            ``stack_buffers`` or a previous call); None: the species'
            buffers, shared (or per-member copies when training).
        training: run in training (True) or eval (False) mode; None keeps
            the captured mode.
        chunk_size: evaluate members in chunks of this size to bound memory
            (``torch.func.vmap``'s ``chunk_size``).
        randomness: ``torch.func.vmap``'s policy for random ops inside the
            forward pass (dropout): ``"error"``, ``"different"`` or ``"same"``.

    Returns:
        ``(outputs, buffers)``, the outputs with a leading ``N``; buffers after
        the pass (``[N, ...]`` when per-member, else the shared copies).

    Raises:
        NotAPopulationError: a single particle.
        TypeError: ``args`` not a tuple, ``buffers`` not a mapping.
        ValueError: ``in_dims`` of the wrong length or out of range, an
            unknown ``randomness``.
        PopulationSizeError: a per-member input or buffer without ``N`` entries.
        UnknownNameError: a buffer the species does not have.

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 4)
        >>> xs = torch.randn(4, 5, 3)                # one [5, 3] batch per member
        >>> y, _ = nf.vmap_apply_with(pop, (xs,), in_dims=0)
        >>> y.shape, torch.allclose(y[1], nf.apply(pop[1], xs[1]), atol=1e-6)
        (torch.Size([4, 5, 2]), True)
        >>> bn = nf.init_population(nn.BatchNorm1d(3), 4)
        >>> out, stats = nf.vmap_apply_with(bn, (torch.randn(6, 3),), training=True)
        >>> stats["running_mean"].shape               # per-member running statistics
        torch.Size([4, 3])
    """
    n = require_population(population, "vmap_apply")
    sp = population.species
    if not isinstance(args, tuple):
        raise TypeError(f"vmap_apply_with: args expects a tuple, got {describe(args)}")
    if randomness not in ("error", "different", "same"):
        raise ValueError(f"vmap_apply_with: randomness expects 'error', 'different' or 'same', got {randomness!r}")
    dims = _in_dims_for(args, in_dims)
    for a, d in zip(args, dims):
        if d is not None and isinstance(a, torch.Tensor) and not -a.dim() <= d < a.dim():
            raise ValueError(f"in_dims: {d} is out of range for an input of shape {tuple(a.shape)}")
        if d is not None and isinstance(a, torch.Tensor) and a.shape[d] != n:
            raise PopulationSizeError(
                f"vmap_apply: a per-member input has {a.shape[d]} entries along dim {d}, "
                f"expected {n} (the population size)"
            )
    effective_training = sp.skeleton.training if training is None else training
    if buffers is not None:
        if not isinstance(buffers, Mapping):
            raise TypeError(f"vmap_apply_with: buffers expects a mapping name -> tensor, got {describe(buffers)}")
        unknown = [k for k in buffers if k not in sp.buffers]
        if unknown:
            raise UnknownNameError(f"buffers: expected names among {list(sp.buffer_names)}, got unknown {unknown}")
        for k, v in buffers.items():
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != n:
                raise PopulationSizeError(
                    f"buffers[{k!r}]: expected a per-member tensor with leading dimension {n}, got {describe(v)}"
                )
        state = {k: v.clone() for k, v in buffers.items()}
        state_dims: Any = 0
    elif effective_training and any(b is not None for _, b in sp.layout().buffers):
        state, state_dims = stack_buffers(sp, n), 0
    else:
        state, state_dims = _buffer_copies(sp, None), None
    names = sp.names
    kw = dict(kwargs or {})
    # inputs shared by every member are closed over rather than passed through
    # vmap, so any Python object works there (a PackedSequence, a dataclass)
    mapped_at = [k for k, d in enumerate(dims) if d is not None]
    mapped_dims = tuple(dims[k] for k in mapped_at)
    # the forward pass's non-tensor outputs (None, numbers) stay out of vmap and are put back after
    shape: dict[str, Any] = {}

    def member(leaves: list, member_buffers: dict, member_args: tuple) -> tuple:
        full = list(args)
        for k, a in zip(mapped_at, member_args):
            full[k] = a
        tensors = dict(zip(names, leaves))
        tensors.update(member_buffers)
        out = call(sp, tensors, tuple(full), kw, training=training)
        flat, spec = pytree.tree_flatten(out)
        kept = [isinstance(x, torch.Tensor) for x in flat]
        shape["spec"], shape["kept"], shape["others"] = spec, kept, [x for x, k in zip(flat, kept) if not k]
        return [x for x, k in zip(flat, kept) if k], member_buffers

    mapped = torch.func.vmap(
        member,
        in_dims=(0, state_dims, mapped_dims),
        out_dims=(0, state_dims),
        chunk_size=chunk_size,
        randomness=randomness,
    )
    tensors_out, new_state = mapped(list(population.tensors), state, tuple(args[k] for k in mapped_at))
    outputs, others = iter(tensors_out), iter(shape["others"])
    flat = [next(outputs) if k else next(others) for k in shape["kept"]]
    return pytree.tree_unflatten(flat, shape["spec"]), new_state


# ---------------------------------------------------------------------------
# reductions and selection
# ---------------------------------------------------------------------------






def _require_members(n: int, where: str) -> None:
    if n == 0:
        raise ValueError(f"{where}: expected a population with at least one member, got an empty population")


def best(population: Particle, fitness: Any, *, maximize: bool = True) -> Particle:
    """The member with the best fitness (highest, or lowest with ``maximize=False``).

    NaN fitness counts as the worst; all-NaN is a ``ValueError``. Ties go
    to the lowest index. The result is a copy (no storage shared with the
    population), so it can stand beside the population in a donating call
    such as ``lerp(pop, best(pop, f), 0.5, donate=True)``.

    Args:
        population: ``N >= 1`` members.
        fitness: ``[N]`` real values (a tensor, or a list of numbers).
        maximize: higher is better (default), or lower.

    Returns:
        A single particle, a copy of the best member.

    Raises:
        NotAPopulationError: a single particle.
        ValueError: an empty population, all-NaN fitness, or fitness on the meta device.
        PopulationSizeError: ``fitness`` is not ``[N]``.
        TypeError: ``fitness`` is not real numbers (bool, complex, str).

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 3)
        >>> b = nf.best(pop, torch.tensor([0.2, float("nan"), 0.7]))
        >>> torch.equal(b.params["weight"], pop.params["weight"][2])
        True
    """
    n = require_population(population, "best")
    _require_members(n, "best")
    f = fitness_order(member_vector(fitness, n, "best: fitness"), maximize=maximize)
    index = int(torch.argmax(f) if maximize else torch.argmin(f))
    return build(population.species, [t[index].clone() for t in population.tensors])


def top_k(population: Particle, fitness: Any, k: int, *, maximize: bool = True) -> Particle:
    """The ``k`` best members, best first, as a population (NaN counts as worst).

    Args:
        population: ``N`` members.
        fitness: ``[N]`` real values.
        k: how many, ``1 <= k <= N``.
        maximize: higher is better (default), or lower.

    Returns:
        A population of ``k`` members (copies), ordered best first; ties by index.

    Raises:
        NotAPopulationError: a single particle.
        ValueError: ``k`` out of range, all-NaN fitness.
        PopulationSizeError: ``fitness`` is not ``[N]``.

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 4)
        >>> top = nf.top_k(pop, torch.tensor([0.1, 0.4, 0.3, 0.2]), 2)
        >>> torch.equal(top.params["bias"], pop.params["bias"][[1, 2]])
        True
    """
    n = require_population(population, "top_k")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"top_k: expected 1 <= k <= {n} (the population size), got {k!r}")
    f = fitness_order(member_vector(fitness, n, "top_k: fitness"), maximize=maximize)
    index = torch.topk(f, k, largest=maximize, sorted=True).indices
    return population[index]


def mean(population: Particle) -> Particle:
    """The average member (operational parameters; the others from member 0 per config).

    Integer parameters are averaged in float64 and cast back to their dtype.

    Args:
        population: ``N >= 1`` members.

    Returns:
        A single particle holding ``t.mean(0)`` of every operational tensor.

    Raises:
        NotAPopulationError: a single particle.
        ValueError: an empty population.

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 4)
        >>> torch.equal(nf.mean(pop).params["weight"], pop.params["weight"].mean(0))
        True
    """
    _require_members(require_population(population, "mean"), "mean")
    return _reduce(population, lambda t: t.mean(0))


def weighted_mean(population: Particle, weights: Any) -> Particle:
    """``sum_i w_i p_i / sum_i w_i`` over members, for a ``[N]`` weight vector.

    Args:
        population: ``N >= 1`` members.
        weights: ``[N]`` real weights (not summing to zero); NaN propagates.

    Returns:
        A single particle, the weighted average of every operational tensor
        (the others from member 0, as their config says).

    Raises:
        NotAPopulationError: a single particle.
        ValueError: an empty population, weights summing to zero or on the meta device.
        PopulationSizeError: ``weights`` is not ``[N]``.

    Examples:
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 2)
        >>> avg = nf.weighted_mean(pop, torch.tensor([3.0, 1.0]))
        >>> torch.allclose(avg.params["bias"], 0.75 * pop.params["bias"][0] + 0.25 * pop.params["bias"][1], atol=1e-6)
        True
    """
    n = require_population(population, "weighted_mean")
    _require_members(n, "weighted_mean")
    w = member_vector(weights, n, "weighted_mean: weights")
    total = w.sum()
    if float(total) == 0.0:
        raise ValueError("weighted_mean: the weights sum to zero")

    def reduce(t: torch.Tensor) -> torch.Tensor:
        ww = (w / total).to(t.dtype).view(n, *([1] * (t.dim() - 1)))
        return (t * ww).sum(0)

    return _reduce(population, reduce)


def _reduce(population: Particle, fn: Callable[[torch.Tensor], torch.Tensor]) -> Particle:
    sp = population.species
    pl = sp.layout()
    leaves = population.tensors
    results = []
    for i in pl.op:
        t = leaves[i]
        r = fn(t if t.is_floating_point() else t.double())
        results.append(r.to(t.dtype))
    first = [t[0] for t in leaves]
    return build(sp, assemble(sp, first, results, None))
