"""Populations sharded over ``torch.distributed`` (model prioritisation).

Each rank of a process group holds a contiguous block of members of one
population (a ``Shard``); local work (``vmap_apply``, per-member gradients,
optimiser steps, blends toward a given particle) runs on ``shard.local``
exactly as on any population. Operations that need global information go
through collectives, each counted in bytes (``count_bytes``) and each
turning a dead or hung peer into a ``DistributedError`` within the process
group's timeout.

Layout policy: ``N`` members over ``R`` ranks in contiguous blocks, the
first ``N % R`` ranks holding one member more (``block_sizes``). Uneven
blocks are allowed; every rank must hold at least one member. Blocks are
padded to the largest one inside ``all_gather`` (the padding is counted).

Randomness policy: draw a whole-population quantity (noise, partners,
parents) from a generator seeded identically on every rank and keep the
local rows (``shard.block(x)``). Every rank then holds the same global
indices and the result is bit-identical to a single-process run with the
same seed, at the price of drawing ``N`` members' worth of numbers on every
rank (compute, not communication).

Members travel packed: one ``[rows, P_d]`` buffer per dtype ``d`` of the
species (one buffer for the usual all-float32 model), so a collective moves
whole members in one call.

Algorithms: ``sharded(algo)`` runs ANY algorithm of
``nytorch_fn.algorithms`` (every one follows one protocol) with the
``torch.distributed`` implementation of its ``Collective``
(``DistributedCollective``) in place of the local one; nothing else changes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import attrs
import torch
import torch.distributed as dist

from ._algorithms._base import (
    Algorithm,
    Collective,
    History,
    protocol_ask,
    protocol_init,
    protocol_run,
    protocol_tell,
    take_targets,
)
from ._errors import PopulationSizeError, SpeciesMismatchError, describe
from ._fitness import centered_ranks, fitness_order
from ._particle import Particle, assemble, build, operational, require_population
from ._species import Species

# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


class NotInitializedError(RuntimeError):
    """A collective was asked for outside an initialised process group."""


class DistributedError(RuntimeError):
    """A collective failed: a peer rank died, hung past the timeout, or left the group.

    The process group is unusable afterwards: call ``shutdown()`` and resume
    from the last checkpoint.
    """


# ---------------------------------------------------------------------------
# the process group
# ---------------------------------------------------------------------------


@attrs.frozen(eq=False)
class World:
    """This process's place in a process group.

    Attributes:
        rank: this process's rank in ``group`` (0-based).
        size: the number of ranks in ``group``.
        group: the ``torch.distributed`` process group (None: the default group).
        device: where collectives' bookkeeping tensors live (CPU for gloo,
            the current CUDA device for NCCL).
    """

    rank: int
    size: int
    group: Any = None
    device: torch.device = torch.device("cpu")

    def global_rank(self, rank: int) -> int:
        """The global rank of ``rank`` in this group (what collectives' ``src``/``dst`` take).

        Args:
            rank: a rank of this group.

        Returns:
            Its rank in the default (global) group.
        """
        if self.group is None:
            return rank
        return dist.get_global_rank(self.group, rank)


_timeouts: dict[Any, float] = {}


def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists.

    Returns:
        Whether collectives can run now.
    """
    return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    """True when this process was started by ``torchrun`` (or alike) for more than one rank.

    Reads ``WORLD_SIZE`` (and ``RANK``) from the environment; starts nothing.
    A program can branch on it to run sharded under ``torchrun`` and as
    usual otherwise.

    Returns:
        Whether ``RANK`` is set and ``WORLD_SIZE`` > 1.
    """
    import os

    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def world(group: Any = None) -> World:
    """This process's ``World`` in ``group`` (None: the default group).

    Args:
        group: the process group (None: the default group).

    Returns:
        The ``World`` (rank, size, group, device).

    Raises:
        NotInitializedError: no process group was initialised (call ``init()``
            or ``torch.distributed.init_process_group`` first).

    Examples:
        >>> w = world()            # here a one-process group; under torchrun --nproc-per-node 2: (0, 2) on rank 0
        >>> w.rank, w.size
        (0, 1)
    """
    _require_initialized("world")
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return World(dist.get_rank(group), dist.get_world_size(group), group, device)


def init(*, backend: str | None = None, timeout: float = 300.0) -> World:
    """Initialise the default process group from ``torchrun``'s environment (idempotent).

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (the
    ``env://`` method). A collective waiting longer than ``timeout`` seconds
    for a peer raises a ``DistributedError`` instead of hanging.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; None: NCCL when CUDA is available, else gloo.
        timeout: seconds a collective may wait for a peer, > 0.

    Returns:
        This process's ``World``. If a default group already exists it is
        used as it is (``timeout`` is then the group's own).
    """
    if not dist.is_available():
        raise NotInitializedError("init: this torch build has no torch.distributed")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"init: timeout expects a number of seconds > 0, got {timeout!r}")
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            import os

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)))
        _timeouts[None] = float(timeout)
    return world()


def shutdown() -> None:
    """Destroy the default process group if there is one (also after a fault)."""
    if is_initialized():
        dist.destroy_process_group()
    _timeouts.clear()


def _require_initialized(where: str) -> None:
    if not is_initialized():
        raise NotInitializedError(
            f"{where}: expected an initialised torch.distributed process group, got none; "
            "call nytorch_fn.distributed.init() (under torchrun) or torch.distributed.init_process_group first"
        )


# ---------------------------------------------------------------------------
# counted, fault-checked collectives
# ---------------------------------------------------------------------------


class Record(NamedTuple):
    """One collective as this rank saw it.

    Attributes:
        op: the collective's name.
        payload: bytes this rank handed in (its own contribution, padding included).
        wire: bytes this rank transmits under the usual algorithms: ring
            ``all_gather`` ``(R-1) * payload``, ring ``all_reduce``
            ``2 (R-1)/R * payload``, pipelined ``broadcast`` ``payload`` on
            every rank but the last of the chain (counted here as
            ``(R-1)/R * payload`` on each), ``all_to_all`` exactly the rows sent
            to other ranks, ``gather`` ``payload`` on every rank but ``dst``.
        ranks: the group size.
    """

    op: str
    payload: int
    wire: float
    ranks: int


class CommLog:
    """Collectives recorded inside a ``count_bytes()`` block."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    @property
    def payload(self) -> int:
        """Bytes this rank handed in, over every recorded collective."""
        return sum(r.payload for r in self.records)

    @property
    def wire(self) -> float:
        """Bytes this rank transmits, over every recorded collective (see ``Record.wire``)."""
        return sum(r.wire for r in self.records)

    @property
    def calls(self) -> int:
        """The number of recorded collectives."""
        return len(self.records)

    def by_op(self) -> dict[str, tuple[int, float]]:
        """Calls and wire bytes per collective.

        Returns:
            A dict from each collective's name to ``(calls, wire bytes)``.
        """
        out: dict[str, tuple[int, float]] = {}
        for r in self.records:
            c, w = out.get(r.op, (0, 0.0))
            out[r.op] = (c + 1, w + r.wire)
        return out


_logs: list[CommLog] = []


@contextlib.contextmanager
def count_bytes() -> Iterator[CommLog]:
    """Record every collective this module issues inside the block.

    Returns:
        A context manager giving the ``CommLog`` that fills while the block runs.

    Examples:
        >>> sh = shard(nf.random_population(nf.particle(nn.Linear(4, 2)), 8, generator=torch.Generator().manual_seed(0)))
        >>> with count_bytes() as log:
        ...     top = best(sh, torch.arange(8.0)[sh.offset:sh.offset + len(sh.local)])   # this rank's fitness
        >>> [r.op for r in log.records], log.wire                # one rank: nothing leaves the process
        (['all_gather(fitness)', 'broadcast(member)'], 0.0)
    """
    log = CommLog()
    _logs.append(log)
    try:
        yield log
    finally:
        _logs.remove(log)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _run(op: str, w: World, payload: int, wire: float, fn: Callable[[], Any]) -> Any:
    for log in _logs:
        log.records.append(Record(op, payload, wire, w.size))
    start = time.monotonic()
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as e:  # gloo/NCCL report peers' faults as RuntimeError
        waited = time.monotonic() - start
        limit = _timeouts.get(w.group)
        within = f" (timeout {limit:g}s)" if limit is not None else ""
        raise DistributedError(
            f"rank {w.rank} of {w.size}: collective {op} failed after {waited:.1f}s{within}: "
            "a peer rank died, hung or left the process group. The group is unusable now: "
            "call nytorch_fn.distributed.shutdown() and resume from the last checkpoint. "
            f"Cause: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def _all_gather(w: World, t: torch.Tensor, op: str = "all_gather") -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(w.size)]
    _run(op, w, _nbytes(t), (w.size - 1) * _nbytes(t), lambda: dist.all_gather(out, t.contiguous(), group=w.group))
    return out


def _broadcast(w: World, t: torch.Tensor, src: int, op: str = "broadcast") -> torch.Tensor:
    nb = _nbytes(t)
    _run(op, w, nb if w.rank == src else 0, nb * (w.size - 1) / w.size,
         lambda: dist.broadcast(t, src=w.global_rank(src), group=w.group))
    return t


def _all_reduce(w: World, t: torch.Tensor, op: str = "all_reduce") -> torch.Tensor:
    nb = _nbytes(t)
    _run(op, w, nb, 2 * nb * (w.size - 1) / w.size, lambda: dist.all_reduce(t, group=w.group))
    return t


def check_alive(*, timeout: float = 30.0, group: Any = None) -> None:
    """A barrier that names the ranks that did not arrive within ``timeout`` seconds.

    Gloo only (``monitored_barrier``); with another backend a plain barrier.

    Args:
        timeout: seconds to wait for every rank, > 0.
        group: the process group (None: the default group).

    Raises:
        DistributedError: a rank died or did not reach the barrier in time.
    """
    _require_initialized("check_alive")
    w = world(group)
    if dist.get_backend(group) == "gloo":
        fn = lambda: dist.monitored_barrier(  # noqa: E731
            group=w.group, timeout=datetime.timedelta(seconds=timeout), wait_all_ranks=True
        )
    else:
        fn = lambda: dist.barrier(group=w.group)  # noqa: E731
    _run("barrier", w, 0, 0, fn)


# ---------------------------------------------------------------------------
# packing members into one buffer per dtype
# ---------------------------------------------------------------------------


def _pack(species: Species, leaves: Sequence[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """``[rows, P_d]`` buffers (one per dtype) from leaves with a leading ``rows``."""
    lay = species.layout()
    out = []
    for _, ix in lay.groups:
        parts = [leaves[i].detach().reshape(rows, lay.numel[i]) for i in ix]
        out.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].contiguous())
    return out


def _unpack(species: Species, bufs: Sequence[torch.Tensor], rows: int | None) -> list[torch.Tensor]:
    """Leaves (``[rows, *shape]``, or ``[*shape]`` for ``rows=None``) from packed buffers."""
    lay = species.layout()
    leaves: list[Any] = [None] * len(lay.numel)
    for buf, (_, ix) in zip(bufs, lay.groups):
        cols = buf.split([lay.numel[i] for i in ix], dim=1)
        for i, c in zip(ix, cols):
            shape = species.shapes[species.names[i]]
            leaves[i] = c.reshape(*shape) if rows is None else c.reshape(rows, *shape)
    return leaves


def _empty_bufs(species: Species, rows: int, device: torch.device) -> list[torch.Tensor]:
    lay = species.layout()
    return [
        torch.empty(rows, sum(lay.numel[i] for i in ix), dtype=dt, device=device) for dt, ix in lay.groups
    ]


def _device_of(p: Particle) -> torch.device:
    return p.tensors[0].device if p.tensors else torch.device("cpu")


# ---------------------------------------------------------------------------
# species fingerprint
# ---------------------------------------------------------------------------


def fingerprint(species: Species) -> bytes:
    """A digest of the structure collectives rely on (independent of ``PYTHONHASHSEED``).

    Covers parameter names in order, shapes, dtypes, operational/clone
    flags, and buffer names, shapes and dtypes; not tags or values.

    Args:
        species: the species.

    Returns:
        A 32-byte SHA-256 digest.
    """
    parts = []
    for n in species.names:
        c = species.config[n]
        parts.append(f"p|{n}|{tuple(species.shapes[n])}|{species.dtypes[n]}|{int(c.operational)}{int(c.clone)}")
    for n in species.buffer_names:
        b = species.buffers.get(n)
        desc = "None" if b is None else f"{tuple(b.shape)}|{b.dtype}"
        parts.append(f"b|{n}|{desc}")
    return hashlib.sha256("\n".join(parts).encode()).digest()


def _exchange_header(w: World, species: Species, local_size: int, where: str) -> list[int]:
    """All-gather (fingerprint, local size); refuse differing species on every rank alike."""
    digest = fingerprint(species)
    words = [int.from_bytes(digest[i:i + 8], "little", signed=True) for i in range(0, 16, 8)]
    mine = torch.tensor([*words, local_size], dtype=torch.int64, device=w.device)
    rows = [r.tolist() for r in _all_gather(w, mine, op="all_gather(header)")]
    differ = [r for r, row in enumerate(rows) if row[:2] != rows[0][:2]]
    if differ:
        raise SpeciesMismatchError(
            f"{where}: expected every rank to hold a population of one species (same parameter names, "
            f"shapes, dtypes and config as rank 0), got a different structure on rank(s) {differ}"
        )
    return [row[2] for row in rows]


def check_species(species: Species, *, group: Any = None) -> None:
    """Refuse, on every rank alike, species that differ in structure across ranks.

    Args:
        species: this rank's species.
        group: the process group (None: the default group).

    Raises:
        SpeciesMismatchError: some rank's species differs from rank 0's (names
            the ranks).
    """
    _require_initialized("check_species")
    if not isinstance(species, Species):
        raise TypeError(f"check_species: expected a Species, got {describe(species)}")
    _exchange_header(world(group), species, 0, "check_species")


# ---------------------------------------------------------------------------
# the sharded population
# ---------------------------------------------------------------------------


def block_sizes(n: int, ranks: int) -> tuple[int, ...]:
    """Members per rank for ``n`` members over ``ranks`` ranks, in contiguous blocks.

    Args:
        n: the population size, >= 1.
        ranks: the number of ranks, >= 1.

    Returns:
        A tuple of ``ranks`` sizes summing to ``n``; the first ``n % ranks`` are one larger.

    Raises:
        PopulationSizeError: ``n < ranks`` (a rank would hold no member).

    Examples:
        >>> block_sizes(10, 4)
        (3, 3, 2, 2)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"block_sizes: expected a population size >= 1, got {n!r}")
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"block_sizes: expected a number of ranks >= 1, got {ranks!r}")
    if n < ranks:
        raise PopulationSizeError(
            f"a population of {n} cannot be sharded over {ranks} ranks: expected at least one member per rank"
        )
    q, r = divmod(n, ranks)
    return tuple(q + 1 if i < r else q for i in range(ranks))


@attrs.frozen(eq=False)
class Shard:
    """This rank's contiguous block of a population sharded over a process group.

    Attributes:
        local: the members held here, a population of ``sizes[world.rank]``.
        sizes: members held by each rank (the same tuple on every rank).
        world: the process group.

    Global member ``i`` lives on the rank whose block ``[offsets[r],
    offsets[r] + sizes[r])`` holds it. Build with ``shard`` (the full
    population on every rank) or ``from_local`` (each rank its own block);
    change the values with ``replace``.
    """

    local: Particle
    sizes: tuple[int, ...]
    world: World

    @property
    def species(self) -> Species:
        """The species of the members."""
        return self.local.species

    @property
    def size(self) -> int:
        """``N``, the global population size."""
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Global index of each rank's first member."""
        out, acc = [], 0
        for s in self.sizes:
            out.append(acc)
            acc += s
        return tuple(out)

    @property
    def offset(self) -> int:
        """Global index of this rank's first member."""
        return self.offsets[self.world.rank]

    @property
    def indices(self) -> torch.Tensor:
        """Global indices of the local members, ``[n_local]`` int64."""
        return torch.arange(self.offset, self.offset + self.sizes[self.world.rank])

    def block(self, x: Any) -> Any:
        """The local rows of a whole-population value: a ``[N, ...]`` tensor or an ``N``-member population.

        Use it with noise drawn for all ``N`` members from a generator seeded
        identically on every rank (the randomness policy).

        Args:
            x: a ``[N, ...]`` tensor or an ``N``-member population, the same on every rank.

        Returns:
            Its rows ``[offset, offset + n_local)``.
        """
        n = self.size
        if isinstance(x, Particle):
            if x.population_size != n:
                raise PopulationSizeError(f"Shard.block: expected a population of {n}, got {x.population_size}")
        elif isinstance(x, torch.Tensor):
            if x.dim() == 0 or x.shape[0] != n:
                raise PopulationSizeError(f"Shard.block: expected a tensor with leading dimension {n}, got {describe(x)}")
        else:
            raise TypeError(f"Shard.block: expected a tensor or a Particle, got {describe(x)}")
        return x[self.offset:self.offset + self.sizes[self.world.rank]]

    def replace(self, local: Particle) -> "Shard":
        """The same layout with new local members (e.g. after an optimiser step).

        Args:
            local: ``n_local`` members of this species (or a newer version of it).

        Returns:
            A new ``Shard`` with those members and the same sizes.
        """
        n = require_population(local, "Shard.replace")
        if n != self.sizes[self.world.rank]:
            raise PopulationSizeError(
                f"Shard.replace: expected {self.sizes[self.world.rank]} local members, got {n}"
            )
        if local.species is not self.local.species and not self.local.species.is_ancestor_of(local.species):
            raise SpeciesMismatchError(f"Shard.replace: expected a population of {self.local.species!r}, got {local.species!r}")
        return attrs.evolve(self, local=local)

    def __repr__(self) -> str:
        return f"Shard(rank={self.world.rank}/{self.world.size}, local={self.sizes[self.world.rank]} of {self.size}, {self.species!r})"


def shard(population: Particle, *, group: Any = None) -> Shard:
    """Keep this rank's block of a population that every rank holds in full.

    Build the full population identically on every rank (same seed), then
    shard it; the other blocks are dropped (the local block is a copy, so
    the full population can be freed). Sizes follow ``block_sizes``.

    Args:
        population: the whole population, built identically on every rank.
        group: the process group (None: the default group).

    Returns:
        The ``Shard`` holding this rank's block (a copy).

    Raises:
        NotInitializedError: no process group.
        PopulationSizeError: fewer members than ranks, or ranks disagree on ``N``.
        SpeciesMismatchError: the species differs across ranks.

    Examples:
        >>> p = nf.particle(nn.Linear(4, 2))
        >>> sh = shard(nf.random_population(p, 64, generator=torch.Generator().manual_seed(0)))
        >>> sh.sizes, len(sh.local)      # one rank here; on 2 ranks: (32, 32) and 32 on each
        ((64,), 64)
    """
    _require_initialized("shard")
    n = require_population(population, "shard")
    w = world(group)
    sizes = block_sizes(n, w.size)
    seen = _exchange_header(w, population.species, n, "shard")
    if len(set(seen)) != 1:
        raise PopulationSizeError(f"shard: expected the same population size on every rank, got {seen} (by rank)")
    off = sum(sizes[: w.rank])
    local = population[off:off + sizes[w.rank]]
    local = build(local.species, [t.clone() for t in local.tensors])
    return Shard(local, sizes, w)


def from_local(local: Particle, *, group: Any = None) -> Shard:
    """A sharded population from the block each rank already holds (sizes exchanged).

    Global order is rank order: rank 0's members first.

    Args:
        local: this rank's members (a population of >= 1).
        group: the process group (None: the default group).

    Returns:
        The ``Shard`` over every rank's block.

    Raises:
        SpeciesMismatchError: the species differs across ranks.
    """
    _require_initialized("from_local")
    n = require_population(local, "from_local")
    w = world(group)
    sizes = tuple(_exchange_header(w, local.species, n, "from_local"))
    return Shard(local, sizes, w)


# ---------------------------------------------------------------------------
# global operations
# ---------------------------------------------------------------------------


def _local_vector(sh: Shard, values: Any, what: str) -> torch.Tensor:
    n = sh.sizes[sh.world.rank]
    if isinstance(values, (list, tuple)):
        values = torch.as_tensor(values)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor of shape ({n},) (one value per local member), got {describe(values)}")
    if values.shape != (n,):
        raise PopulationSizeError(f"{what}: expected shape ({n},) for the {n} local members, got {tuple(values.shape)}")
    if values.dtype == torch.bool or values.is_complex():
        raise TypeError(f"{what}: expected a real dtype, got {values.dtype}")
    return values


def gather_fitness(sh: Shard, local_fitness: Any) -> torch.Tensor:
    """The ``[N]`` fitness of the whole population, on every rank, from each rank's ``[n_local]``.

    Every rank must pass the same dtype. Communication: one ``all_gather``
    of ``max(sizes)`` values per rank.

    Args:
        sh: the sharded population.
        local_fitness: this rank's ``[n_local]`` fitness (every rank the same dtype).

    Returns:
        The ``[N]`` global fitness, the same on every rank.
    """
    f = _local_vector(sh, local_fitness, "gather_fitness: local_fitness").detach()
    w, m = sh.world, max(sh.sizes)
    pad = torch.zeros(m, dtype=f.dtype, device=w.device)
    pad[: f.shape[0]] = f.to(w.device)
    parts = _all_gather(w, pad, op="all_gather(fitness)")
    return torch.cat([p[:s] for p, s in zip(parts, sh.sizes)]).to(f.device)


def _owner(sh: Shard, index: int) -> int:
    for r, (o, s) in enumerate(zip(sh.offsets, sh.sizes)):
        if o <= index < o + s:
            return r
    raise IndexError(f"member index {index} is out of range for a population of {sh.size}")


def member(sh: Shard, index: int) -> Particle:
    """Global member ``index`` as a single particle on every rank (broadcast from its owner).

    Communication: one ``broadcast`` of one member (``P`` values).

    Args:
        sh: the sharded population.
        index: a global member index in ``[0, N)``.

    Returns:
        The member, a single particle.
    """
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"member: expected an int index, got {describe(index)}")
    if index < 0:
        index += sh.size
    src = _owner(sh, index)
    w, sp = sh.world, sh.species
    if w.rank == src:
        row = index - sh.offset
        bufs = _pack(sp, [t[row:row + 1] for t in sh.local.tensors], 1)
    else:
        bufs = _empty_bufs(sp, 1, _device_of(sh.local))
    bufs = [_broadcast(w, b, src, op="broadcast(member)") for b in bufs]
    return build(sp, _unpack(sp, bufs, None))


class Best(NamedTuple):
    """The best member of a sharded population (the same on every rank).

    Attributes:
        member: the best member, a single particle.
        index: its global index.
        fitness: its fitness, a 0-d tensor.
    """

    member: Particle
    index: int  # type: ignore[assignment]  # shadows tuple.index on purpose (the member's index)
    fitness: torch.Tensor


def best(sh: Shard, local_fitness: Any, *, maximize: bool = True) -> Best:
    """The best member over all ranks, on every rank, with its global index and fitness.

    Same rule as ``nytorch_fn.best``: NaN is the worst, ties go to the lowest
    global index. Communication: ``gather_fitness`` plus one member broadcast
    from the rank that owns it.

    Args:
        sh: the sharded population.
        local_fitness: this rank's ``[n_local]`` fitness (every rank the same dtype).
        maximize: higher fitness is better (default) or lower.

    Returns:
        ``Best(member, index, fitness)``, the same on every rank.
    """
    f = gather_fitness(sh, local_fitness)
    return best_of(sh, f, maximize=maximize)


def best_of(sh: Shard, fitness: torch.Tensor, *, maximize: bool = True) -> Best:
    """``best`` when the ``[N]`` global fitness is already known on every rank (one broadcast).

    Args:
        sh: the sharded population.
        fitness: the ``[N]`` global fitness, the same on every rank.
        maximize: higher fitness is better (default) or lower.

    Returns:
        ``Best(member, index, fitness)``, the same on every rank.
    """
    if not isinstance(fitness, torch.Tensor) or fitness.shape != (sh.size,):
        raise PopulationSizeError(f"best_of: expected a [{sh.size}] global fitness, got {describe(fitness)}")
    f = fitness_order(fitness, maximize=maximize)
    i = int(torch.argmax(f) if maximize else torch.argmin(f))
    return Best(member(sh, i), i, fitness[i])


def fetch(sh: Shard, index: Any) -> Particle:
    """``population[index]`` gathered on every rank, for a global index tensor the same on every rank.

    Duplicates are sent once. Communication: one ``all_gather`` per dtype of
    ``max_r (distinct members of index owned by rank r)`` members per rank.

    Args:
        sh: the sharded population.
        index: a ``[M]`` integer tensor of global indices, the same on every rank.

    Returns:
        An ``M``-member population, the same on every rank.
    """
    idx = _global_index(sh, index, "fetch")
    w, sp = sh.world, sh.species
    uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    counts = [int(((uniq >= o) & (uniq < o + s)).sum()) for o, s in zip(sh.offsets, sh.sizes)]
    mine = uniq[(uniq >= sh.offset) & (uniq < sh.offset + sh.sizes[w.rank])] - sh.offset
    m = max(counts)
    dev = _device_of(sh.local)
    sel = mine.to(dev)
    packed = _pack(sp, [t[sel] for t in sh.local.tensors], len(mine))
    out_bufs = []
    for g, buf in enumerate(packed):
        pad = torch.zeros(m, buf.shape[1], dtype=buf.dtype, device=dev)
        pad[: buf.shape[0]] = buf
        parts = _all_gather(w, pad, op="all_gather(members)")
        flat = torch.cat([p[:c] for p, c in zip(parts, counts)])
        out_bufs.append(flat[inverse.to(dev)])
    return build(sp, _unpack(sp, out_bufs, len(idx)))


def _global_index(sh: Shard, index: Any, where: str) -> torch.Tensor:
    if isinstance(index, (list, tuple)):
        index = torch.as_tensor(index, dtype=torch.long)
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise TypeError(f"{where}: expected a 1-d integer tensor of global member indices, got {describe(index)}")
    if index.numel() == 0:
        raise ValueError(f"{where}: expected at least one index, got an empty tensor")
    idx = index.long().cpu()
    n = sh.size
    if int(idx.min()) < -n or int(idx.max()) >= n:
        raise IndexError(f"{where}: indices {int(idx.min())}..{int(idx.max())} out of range for a population of {n}")
    return torch.where(idx < 0, idx + n, idx)


def take(sh: Shard, index: Any) -> Shard:
    """The sharded population ``population[index]`` (``M = len(index)`` members, laid out by ``block_sizes``).

    ``index`` holds global member indices and must be the same on every rank
    (draw it from a generator seeded alike everywhere). This is how members
    cross ranks: parents for a GA, crossover partners, exploit targets for
    PBT. Communication: one ``all_to_all`` per dtype moving each needed member
    once per destination rank (members already local are not sent).

    Args:
        sh: the sharded population.
        index: a ``[M]`` integer tensor of global indices, the same on every rank.

    Returns:
        A ``Shard`` of the ``M`` members ``population[index]``.
    """
    idx = _global_index(sh, index, "take")
    w, sp = sh.world, sh.species
    out_sizes = block_sizes(len(idx), w.size)
    out_offsets = [sum(out_sizes[:d]) for d in range(w.size)]
    lo, hi = sh.offset, sh.offset + sh.sizes[w.rank]
    send_rows, send_counts, recv_counts = [], [], []
    for d in range(w.size):
        need_d = torch.unique(idx[out_offsets[d]:out_offsets[d] + out_sizes[d]], sorted=True)
        own = need_d[(need_d >= lo) & (need_d < hi)] - lo
        send_rows.append(own)
        send_counts.append(len(own))
    mine_need, inverse = torch.unique(
        idx[out_offsets[w.rank]:out_offsets[w.rank] + out_sizes[w.rank]], sorted=True, return_inverse=True
    )
    for o, s in zip(sh.offsets, sh.sizes):
        recv_counts.append(int(((mine_need >= o) & (mine_need < o + s)).sum()))
    dev = _device_of(sh.local)
    rows = torch.cat(send_rows).to(dev)
    packed = _pack(sp, [t[rows] for t in sh.local.tensors], len(rows))
    out_bufs = []
    for buf in packed:
        out = torch.empty(sum(recv_counts), buf.shape[1], dtype=buf.dtype, device=dev)
        row_bytes = buf.shape[1] * buf.element_size()
        sent = sum(c for d, c in enumerate(send_counts) if d != w.rank) * row_bytes
        _run("all_to_all(members)", w, sent, sent, lambda: dist.all_to_all_single(  # _run calls it at once
            out, buf, output_split_sizes=recv_counts, input_split_sizes=send_counts, group=w.group))
        out_bufs.append(out[inverse.to(dev)])
    local = build(sp, _unpack(sp, out_bufs, out_sizes[w.rank]))
    return Shard(local, out_sizes, w)


def all_gather(sh: Shard) -> Particle:
    """The whole population on every rank (``[N, ...]``).

    Args:
        sh: the sharded population.

    Returns:
        The whole population (``[N, ...]``), on every rank.
    """
    return fetch(sh, torch.arange(sh.size))


def gather(sh: Shard, *, dst: int = 0) -> Particle | None:
    """The whole population on rank ``dst`` (for a checkpoint); None on the other ranks.

    Communication: one ``gather`` per dtype of ``max(sizes)`` members per rank.

    Args:
        sh: the sharded population.
        dst: the rank that receives it.

    Returns:
        The whole population on ``dst``; None elsewhere.
    """
    w, sp = sh.world, sh.species
    if isinstance(dst, bool) or not isinstance(dst, int) or not 0 <= dst < w.size:
        raise ValueError(f"gather: dst expects a rank in [0, {w.size}), got {dst!r}")
    m, n = max(sh.sizes), sh.sizes[w.rank]
    dev = _device_of(sh.local)
    out_bufs = []
    for buf in _pack(sp, sh.local.tensors, n):
        pad = torch.zeros(m, buf.shape[1], dtype=buf.dtype, device=dev)
        pad[:n] = buf
        parts = [torch.empty_like(pad) for _ in range(w.size)] if w.rank == dst else None
        nb = _nbytes(pad)
        _run("gather(members)", w, nb, 0 if w.rank == dst else nb,
             lambda: dist.gather(pad, parts, dst=w.global_rank(dst), group=w.group))  # _run calls it at once
        if parts is not None:  # w.rank == dst
            out_bufs.append(torch.cat([p[:s] for p, s in zip(parts, sh.sizes)]))
    if w.rank != dst:
        return None
    return build(sp, _unpack(sp, out_bufs, sh.size))


def broadcast(value: Particle, *, src: int = 0, group: Any = None) -> Particle:
    """``value`` from rank ``src`` on every rank.

    Other ranks' values only give the structure (and are checked against
    ``src``'s by fingerprint and size).

    Args:
        value: a particle or population of the same species and size on every rank.
        src: the rank whose values are sent.
        group: the process group (None: the default group).

    Returns:
        ``src``'s value, on every rank.
    """
    _require_initialized("broadcast")
    if not isinstance(value, Particle):
        raise TypeError(f"broadcast: expected a Particle, got {describe(value)}")
    w = world(group)
    n = value.population_size
    sizes = _exchange_header(w, value.species, -1 if n is None else n, "broadcast")
    if len(set(sizes)) != 1:
        raise PopulationSizeError(f"broadcast: expected the same population size on every rank, got {sizes} (by rank)")
    rows = 1 if n is None else n
    lead = [t.reshape(rows, *t.shape[(0 if n is None else 1):]) for t in value.tensors]
    bufs = _pack(value.species, lead, rows) if w.rank == src else _empty_bufs(value.species, rows, _device_of(value))
    bufs = [_broadcast(w, b, src, op="broadcast(particle)") for b in bufs]
    return build(value.species, _unpack(value.species, bufs, n))


def shaped_fitness(sh: Shard, local_fitness: Any, *, maximize: bool = True) -> torch.Tensor:
    """The local block of the global centred ranks (as ``nytorch_fn.algorithms.centered_ranks``).

    Args:
        sh: the sharded population.
        local_fitness: this rank's ``[n_local]`` fitness (every rank the same dtype).
        maximize: higher fitness is better (default) or lower.

    Returns:
        This rank's ``[n_local]`` float64 ranks in ``[-0.5, 0.5]`` (one fitness ``all_gather``).
    """

    return sh.block(centered_ranks(gather_fitness(sh, local_fitness), maximize=maximize))


def global_top_k(sh: Shard, local_fitness: Any, k: int, *, maximize: bool = True) -> Particle:
    """The ``k`` best members over all ranks, best first, on every rank (as ``nytorch_fn.top_k``).

    Args:
        sh: the sharded population.
        local_fitness: this rank's ``[n_local]`` fitness (every rank the same dtype).
        k: how many, 1 <= k <= N.
        maximize: higher fitness is better (default) or lower.

    Returns:
        A ``k``-member population, best first, on every rank.
    """
    f = gather_fitness(sh, local_fitness)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= sh.size:
        raise ValueError(f"global_top_k: expected 1 <= k <= {sh.size} (the population size), got {k!r}")
    order = fitness_order(f, maximize=maximize)
    index = torch.topk(order, k, largest=maximize, sorted=True).indices
    return fetch(sh, index)


def mean(sh: Shard) -> Particle:
    """The average member over all ranks, on every rank (one ``all_reduce`` of ``P`` values).

    The sum is reduced across ranks in the backend's order, so the result
    matches a single-process ``nytorch_fn.mean`` to float rounding, not bit for bit.
    Non-operational parameters come from global member 0, as in ``nytorch_fn.mean``.

    Args:
        sh: the sharded population.

    Returns:
        The mean member, a single particle, on every rank.
    """
    return _weighted(sh, None, "mean")


def weighted_mean(sh: Shard, local_weights: Any) -> Particle:
    """``sum_i w_i p_i / sum_i w_i`` over all members, on every rank (``all_reduce``; see ``mean``).

    Args:
        sh: the sharded population.
        local_weights: this rank's ``[n_local]`` weights.

    Returns:
        The weighted mean member, a single particle, on every rank.
    """
    return _weighted(sh, _local_vector(sh, local_weights, "weighted_mean: local_weights"), "weighted_mean")


def _weighted(sh: Shard, w_local: torch.Tensor | None, where: str) -> Particle:
    w, sp = sh.world, sh.species
    pl = sp.layout()
    leaves = sh.local.tensors
    n = sh.sizes[w.rank]
    sums = []
    for i in pl.op:
        t = leaves[i].detach()
        acc = t.double() if not t.is_floating_point() else t
        if w_local is None:
            sums.append(acc.sum(0).double())
        else:
            ww = w_local.to(torch.float64).view(n, *([1] * (t.dim() - 1)))
            sums.append((acc.double() * ww).sum(0))
    total_w = torch.tensor([float(n) if w_local is None else float(w_local.double().sum())], dtype=torch.float64)
    flat = torch.cat([s.reshape(-1) for s in sums] + [total_w]).to(w.device)
    _all_reduce(w, flat, op="all_reduce(mean)")
    denom = float(flat[-1])
    if denom == 0.0:
        raise ValueError(f"{where}: the weights sum to zero")
    results, pos = [], 0
    dev = _device_of(sh.local)
    for s, i in zip(sums, pl.op):
        k = s.numel()
        results.append((flat[pos:pos + k].reshape(s.shape) / denom).to(leaves[i].dtype).to(dev))
        pos += k
    first = member(sh, 0).tensors if pl.nonop else [t[0] for t in leaves]
    return build(sp, assemble(sp, first, results, None))



# ---------------------------------------------------------------------------
# the collective of a sharded algorithm, and sharded() itself
# ---------------------------------------------------------------------------


class DistributedCollective(Collective):
    """``Collective`` over a ``torch.distributed`` process group (members in ``block_sizes`` blocks).

    Every method is a collective: each rank calls it in the same order. Bytes
    are counted by ``count_bytes``; a dead or hung peer raises ``DistributedError``.

    Args:
        n: the global population size.
        w: this process's ``World``.
    """

    def __init__(self, n: int, w: World) -> None:
        self.n = n
        self.world = w
        self.sizes = block_sizes(n, w.size)
        self.offsets = tuple(sum(self.sizes[:r]) for r in range(w.size))
        off = self.offsets[w.rank]
        self.rows = range(off, off + self.sizes[w.rank])

    def __repr__(self) -> str:
        return f"DistributedCollective(n={self.n}, rank={self.world.rank}/{self.world.size}, rows={self.rows})"

    # -- primitives ----------------------------------------------------------------

    def _all_sum(self, ts: list[torch.Tensor]) -> list[torch.Tensor]:
        w = self.world
        out: list[Any] = [None] * len(ts)
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for k, t in enumerate(ts):
            groups.setdefault((t.dtype, t.device), []).append(k)
        for (dtype, device), ks in groups.items():
            flat = torch.cat([ts[k].reshape(-1) for k in ks]).to(w.device)
            _all_reduce(w, flat, op="all_reduce(sum)")
            flat = flat.to(device)
            pos = 0
            for k in ks:
                m = ts[k].numel()
                out[k] = flat[pos:pos + m].view(ts[k].shape)
                pos += m
        return out

    def _all_max(self, t: torch.Tensor) -> torch.Tensor:
        w = self.world
        buf = t.detach().to(w.device).clone()
        nb = _nbytes(buf)
        _run("all_reduce(max)", w, nb, 2 * nb * (w.size - 1) / w.size,
             lambda: dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=w.group))
        return buf.to(t.device)

    def gather(self, v_local: torch.Tensor) -> torch.Tensor:
        """The ``[N, ...]`` concatenation of every rank's ``[n_local, ...]`` values, on every rank.

        Args:
            v_local: this rank's rows.

        Returns:
            The global tensor.
        """
        w, m = self.world, max(self.sizes)
        if v_local.dim() == 0 or v_local.shape[0] != self.local_n:
            raise PopulationSizeError(f"gather: expected {self.local_n} local rows, got {describe(v_local)}")
        pad = torch.zeros(m, *v_local.shape[1:], dtype=v_local.dtype, device=w.device)
        pad[: self.local_n] = v_local.to(w.device)
        parts = _all_gather(w, pad, op="all_gather(fitness)")
        return torch.cat([p[:s] for p, s in zip(parts, self.sizes)]).to(v_local.device)

    def _owner(self, i: int) -> int:
        for r, (o, s) in enumerate(zip(self.offsets, self.sizes)):
            if o <= i < o + s:
                return r
        raise IndexError(f"member index {i} is out of range for a population of {self.n}")

    def member(self, pop_local: Particle, i: int) -> Particle:
        """Global member ``i`` on every rank (broadcast from its owner).

        Args:
            pop_local: this rank's members.
            i: a global index.

        Returns:
            The member, a single particle.
        """
        i = int(i)
        if i < 0:
            i += self.n
        src = self._owner(i)
        w, sp = self.world, pop_local.species
        if w.rank == src:
            row = i - self.rows.start
            # a copy: the member must not share storage with the (possibly donated) population
            bufs = [b.clone() for b in _pack(sp, [t[row:row + 1] for t in pop_local.tensors], 1)]
        else:
            bufs = _empty_bufs(sp, 1, _device_of(pop_local))
        bufs = [_broadcast(w, b, src, op="broadcast(member)") for b in bufs]
        return build(sp, _unpack(sp, bufs, None))

    def take(self, pop_local: Particle, idx: torch.Tensor, *, out: Particle | None = None) -> Particle:
        """The global members ``idx`` this rank's rows need (``all_to_all``).

        Args:
            pop_local: this rank's members.
            idx: ``[M]`` global indices, the same on every rank.
            out: a population to write the result into (None: a fresh one).

        Returns:
            This rank's block of ``population[idx]``.
        """
        w, sp = self.world, pop_local.species
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"take: expected a 1-d integer tensor of global member indices, got {describe(idx)}")
        mine = idx.long().cpu()
        if mine.numel() and (int(mine.min()) < 0 or int(mine.max()) >= self.n):
            raise IndexError(f"take: indices {int(mine.min())}..{int(mine.max())} out of range for a population of {self.n}")
        # every rank's requests (padded to the longest)
        count = torch.tensor([mine.numel()], dtype=torch.int64, device=w.device)
        counts = [int(c) for c in _all_gather(w, count, op="all_gather(take counts)")]
        k = max(counts)
        padded = torch.full((max(k, 1),), -1, dtype=torch.int64, device=w.device)
        padded[: mine.numel()] = mine.to(w.device)
        requests = [r[:c].cpu() for r, c in zip(_all_gather(w, padded, op="all_gather(take indices)"), counts)]
        lo, hi = self.rows.start, self.rows.stop
        send_rows, send_counts = [], []
        for d in range(w.size):
            need = torch.unique(requests[d], sorted=True)
            own = need[(need >= lo) & (need < hi)] - lo
            send_rows.append(own)
            send_counts.append(len(own))
        wanted, inverse = torch.unique(mine, sorted=True, return_inverse=True)
        recv_counts = [int(((wanted >= o) & (wanted < o + s)).sum()) for o, s in zip(self.offsets, self.sizes)]
        dev = _device_of(pop_local)
        rows = torch.cat(send_rows).to(dev) if send_rows else torch.zeros(0, dtype=torch.long, device=dev)
        packed = _pack(sp, [t.index_select(0, rows) for t in pop_local.tensors], len(rows))
        out_bufs = []
        for buf in packed:
            recv = torch.empty(sum(recv_counts), buf.shape[1], dtype=buf.dtype, device=dev)
            row_bytes = buf.shape[1] * buf.element_size()
            sent = sum(c for d, c in enumerate(send_counts) if d != w.rank) * row_bytes
            _run("all_to_all(members)", w, sent, sent, lambda: dist.all_to_all_single(  # _run calls it at once
                recv, buf.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts, group=w.group))
            out_bufs.append(recv.index_select(0, inverse.to(dev)))
        taken = _unpack(sp, out_bufs, len(mine))
        targets = take_targets(pop_local, out, len(mine))
        if targets is not None:  # the caller's buffers, as the local collective fills them
            taken = [t if o is None else o.copy_(t) for t, o in zip(taken, targets)]
        return build(sp, taken)


class Sharded:
    """An algorithm run over a ``torch.distributed`` process group (``sharded(algo)``).

    The same protocol as the algorithm itself (``init``/``ask``/``tell``/
    ``step``/``run``, the same ``State`` type) with its collective swapped
    for ``DistributedCollective``:

    - ``init(x)``: ``x`` as on one process (a centre, or the WHOLE initial
      population built identically on every rank; each rank keeps its block);
    - ``ask`` returns this rank's members (a population of ``n_local``);
    - ``tell(state, local_population, local_fitness)`` takes their ``[n_local]``
      fitness; ``state.best``/``best_fitness``/``generation`` are global and
      the same on every rank;
    - ``run``/``step`` evaluate ``fitness_fn`` on the local members.

    Hyperparameters are read through (``sharded(algo).sigma``).

    Args:
        algorithm: any algorithm of ``nytorch_fn.algorithms``.
        group: the process group (None: the default group).
    """

    def __init__(self, algorithm: Algorithm, group: Any = None) -> None:
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"sharded: expected an algorithm of nytorch_fn.algorithms, got {describe(algorithm)}")
        if isinstance(algorithm, Sharded):  # pragma: no cover - Sharded is not an Algorithm
            raise TypeError("sharded: the algorithm is already sharded")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "group", group)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Sharded is immutable")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.algorithm, name)

    def __repr__(self) -> str:
        return f"sharded({self.algorithm!r})"

    @property
    def State(self) -> type:  # noqa: N802 - the algorithms' class attribute
        """The algorithm's state class (a sharded state is a per-rank state of that type)."""
        return type(self.algorithm).State

    @property
    def kind(self) -> str:
        """The algorithm's kind: ``"distribution"`` (``init`` takes a centre) or ``"population"``."""
        return type(self.algorithm).kind

    def _factory(self, n: int) -> DistributedCollective:
        _require_initialized(f"sharded({type(self.algorithm).__name__})")
        return DistributedCollective(n, world(self.group))

    def init(self, x: Particle, *, generator: torch.Generator | None = None) -> Any:
        """As ``algorithm.init``; a population ``x`` is the whole one (every rank keeps its block).

        Args:
            x: the centre, or the whole initial population (built identically on every rank).
            generator: seeded alike on every rank.

        Returns:
            This rank's state.

        Raises:
            NotInitializedError: no process group.
            PopulationSizeError: fewer members than ranks.
        """
        return protocol_init(self.algorithm, x, generator, self._factory)

    def ask(self, state: Any, *, generator: torch.Generator | None = None, donate: bool = False) -> tuple[Particle, Any]:
        """As ``algorithm.ask``; returns this rank's members.

        Args:
            state: this rank's state.
            generator: seeded alike on every rank.
            donate: as ``algorithm.ask``.

        Returns:
            ``(local members, state)``.
        """
        return protocol_ask(self.algorithm, state, generator, donate, self._factory)

    def tell(self, state: Any, population: Particle, fitness: Any, *, generator: torch.Generator | None = None,
             donate: bool = False) -> Any:
        """As ``algorithm.tell`` with this rank's members and their ``[n_local]`` fitness.

        Args:
            state: this rank's state.
            population: the local members ``ask`` returned.
            fitness: their ``[n_local]`` fitness.
            generator: seeded alike on every rank.
            donate: as ``algorithm.tell``.

        Returns:
            The next state (global ``best``, ``best_fitness`` and ``generation``).
        """
        return protocol_tell(self.algorithm, state, population, fitness, generator, donate, self._factory)[0]

    def step(self, state: Any, fitness_fn: Callable[[Particle], Any], *, generator: torch.Generator | None = None,
             donate: bool = False) -> tuple[Any, torch.Tensor]:
        """``ask``, ``fitness_fn(local members)``, ``tell``; returns the local fitness.

        Args:
            state: this rank's state.
            fitness_fn: local members -> ``[n_local]`` fitness.
            generator: seeded alike on every rank.
            donate: as ``algorithm.step``.

        Returns:
            ``(state, local fitness)``.
        """
        pop, state = self.ask(state, generator=generator, donate=donate)
        fitness = fitness_fn(pop)
        return self.tell(state, pop, fitness, generator=generator, donate=donate), fitness

    def run(self, state: Any, fitness_fn: Callable[[Particle], Any], generations: int, *,
            generator: torch.Generator | None = None, progress: bool = False) -> tuple[Any, History]:
        """As ``algorithm.run``; the history holds global best and mean fitness.

        Args:
            state: this rank's state.
            fitness_fn: local members -> ``[n_local]`` fitness.
            generations: how many, >= 0.
            generator: seeded alike on every rank.
            progress: a tqdm bar (rank 0's).

        Returns:
            ``(state, History)``; the history holds global best and mean fitness.
        """
        return protocol_run(self.algorithm, state, fitness_fn, generations, generator, progress, self._factory)


def sharded(algorithm: Algorithm, *, group: Any = None) -> Sharded:
    """``algorithm`` run over ``torch.distributed``: each rank holds a contiguous block of members.

    Works for every algorithm of ``nytorch_fn.algorithms`` (and any subclass of
    ``Algorithm``): only the collective changes. Seed the generator alike on
    every rank. For the same seed, a sharded run gives the single-process
    results bit for bit on CPU wherever the algorithm's sums are exact (every
    step elementwise per member or computed from replicated data; sums through
    ``Collective.weighted_sum``/``sum`` with ``exact=True``); sums with the
    default ``exact=False`` (OpenAI-ES's gradient) match to float rounding.

    Args:
        algorithm: the algorithm (its hyperparameters are used as they are).
        group: the process group (None: the default group).

    Returns:
        The ``Sharded`` algorithm (same protocol, same ``State`` type).

    Examples:
        >>> import nytorch_fn.distributed as nfd
        >>> from nytorch_fn.algorithms import OpenAIES
        >>> w = nfd.init()                                   # under torchrun (here: a one-process group)
        >>> def local_fitness_fn(block):                     # [n] fitness of this rank's members
        ...     return -sum((t ** 2).flatten(1).sum(1) for t in block.tensors)
        >>> g = torch.Generator().manual_seed(0)             # seeded alike on every rank
        >>> es = nfd.sharded(OpenAIES(population_size=16, sigma=0.02))
        >>> state = es.init(nf.particle(nn.Linear(4, 2)), generator=g)
        >>> state, history = es.run(state, local_fitness_fn, 10, generator=g)
        >>> len(history.best_fitness)
        10
    """
    return Sharded(algorithm, group)
