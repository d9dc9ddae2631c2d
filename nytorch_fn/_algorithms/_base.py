"""The one protocol every algorithm follows, its bookkeeping, and the collective interface.

An algorithm is an ``attrs.frozen`` object of hyperparameters (a subclass of
``Algorithm``) with pure methods over an immutable NamedTuple state::

    state = algo.init(x, generator=g)                     # x: centre or initial population
    pop, state = algo.ask(state, generator=g)             # a population of N members
    state = algo.tell(state, pop, fitness, generator=g)   # fitness [N] (or [N, M])
    state, fitness = algo.step(state, fitness_fn, generator=g)
    state, history = algo.run(state, fitness_fn, 100, generator=g, progress=True)

The public methods here do the bookkeeping (best so far, generation count,
the asked-population check, argument checks, fitness ordering) and call the
algorithm's private kernels ``_init``, ``_ask`` and ``_tell``, which hold
only its math. Anything global goes through a ``Collective``:
``LocalCollective`` here (one process, all members), the ``torch.distributed``
one in ``nytorch_fn._distributed`` (``nytorch_fn.distributed.sharded``), so no
algorithm is written twice.

Every state has the fields ``best`` (a single particle), ``best_fitness``
(0-d float64, or ``[M]``), ``generation`` (int) and ``asked`` (an int64
bookkeeping tensor, see ``probe``), then the algorithm's own fields.
"""

from __future__ import annotations

import contextvars
import math
import numbers
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch
import torch.utils._pytree as pytree

from .._checks import check_generator, require_floating
from .._errors import NotAPopulationError, PopulationSizeError, SpeciesMismatchError, describe
from .._fitness import directions, objective_scores, scores
from .._particle import Particle, assemble, build, operational, require_population, require_single

# ---------------------------------------------------------------------------
# noise streams, one per block of 32 members
# ---------------------------------------------------------------------------

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """The splitmix64 finaliser of ``x + GOLDEN`` (uint64 arithmetic; Steele et al. 2014)."""
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(base: int, k: int) -> int:
    """The seed of noise stream ``k`` for base seed ``base``: ``splitmix64(base ^ GOLDEN * k)`` (uint64)."""
    return _splitmix64((base ^ (_GOLDEN * k)) & _MASK)


# Seeds are Python ints (``torch.Generator.manual_seed`` takes no tensor): under ``torch.compile``
# drawing them and seeding the block streams run eagerly (a graph break each), because a seed
# traced as a symbolic int makes dynamo reason about its bits (``x >> 63``) and fail
# ("Invalid NaN comparison"). The same calls, the same values.
@torch.compiler.disable
def draw_seed(generator: torch.Generator | None) -> int:
    """One base seed from the caller's generator (torch's global CPU RNG when None):
    ``torch.randint(0, 2**63 - 1, (1,), generator=generator)`` on the generator's device."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device)[0])


NOISE_BLOCK = 32
"""Members per noise stream: block ``j`` holds the global members ``[32 j, 32 j + 32)``."""


def _noise_tmp(rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """A contiguous ``[rows, width]`` scratch tensor like ``like`` for one block's draw: inside
    ``run`` the loop's own (reused every generation), else fresh. Its values mean nothing."""
    ws = _WORKSPACE.get()
    if ws is None:
        return torch.empty(rows, width, dtype=like.dtype, device=like.device)
    key = ("noise.block", like.dtype, like.device)
    have = ws.get(key)
    need = rows * width
    if not isinstance(have, torch.Tensor) or have.numel() < need:
        have = torch.empty(max(need, 1), dtype=like.dtype, device=like.device)
        ws[key] = have
    return have[:need].view(rows, width)


def _draw(t: torch.Tensor, g: torch.Generator, uniform: bool) -> torch.Tensor:
    """``t`` filled in place with ``torch.rand`` (``uniform``) or ``torch.randn`` draws from ``g``
    (``uniform_``/``normal_``: the very kernels, so the bits of a fresh draw of ``t``'s shape)."""
    return t.uniform_(generator=g) if uniform else t.normal_(generator=g)


@torch.compiler.disable
def fill_noise(
    bufs: Sequence[torch.Tensor], base: int, members: range, antithetic: bool, *, n: int, uniform: bool = False
) -> None:
    """Write the noise of global members ``members`` (of a population of ``n``) into ``bufs``.

    ``bufs`` are contiguous ``[len(members), P_d]`` buffers, one per dtype group
    (on any device). The members are drawn in blocks of ``NOISE_BLOCK = 32``:
    block ``j`` holds the global members ``[32 j, min(32 j + 32, n))`` (``r_j``
    of them) and draws from a ``torch.Generator`` on the buffer's device seeded
    with ``stream_seed(base, j)``: per buffer, in order, one
    ``torch.randn(h_j, P_d)`` (``torch.rand``, U[0, 1), when ``uniform``),
    with ``h_j = r_j``, row ``q`` the noise of member ``32 j + q``; when
    antithetic ``h_j = ceil(r_j / 2)``: the block's first ``h_j`` members get
    the rows (member ``32 j + q`` row ``q``) and the rest their negations
    (member ``32 j + h_j + q`` gets ``-row q``), as evosax's and EvoX's
    ``concat([z, -z])`` within each block. So any subset of
    members (a rank's rows) gets the same bits as in the whole population: a
    block that the subset covers only in part is drawn whole and the rows
    needed are kept (at most two such blocks). Antithetic uniform draws are
    refused (``-u`` is not uniform).
    """
    if uniform and antithetic:
        raise ValueError("noise: antithetic draws expect normal noise, got uniform=True")
    start, stop = members.start, members.stop
    if not bufs or stop <= start:
        return
    if members.step != 1 or start < 0 or stop > n:
        raise ValueError(f"noise: expected a range of members within [0, {n}), got {members}")
    B = NOISE_BLOCK
    blocks = range(start // B, (stop - 1) // B + 1)
    devices = []
    for b in bufs:
        if b.device not in devices:
            devices.append(b.device)
    gens = {d: torch.Generator(device=d) for d in devices}
    # the full blocks that lie wholly inside the range: drawn straight into their rows, and when
    # antithetic their second halves negated in one strided op for all of them (the same bits
    # as a negation per block: neg is exact)
    full = range(-(-start // B), min(stop // B, n // B))
    views: list[list[torch.Tensor]] = []
    if len(full):
        r0, r1 = full.start * B - start, full.stop * B - start
        for buf in bufs:
            v = buf[r0:r1].view(len(full), 2, B // 2, buf.shape[1]) if antithetic else buf[r0:r1].view(
                len(full), B, buf.shape[1])
            views.append(list((v[:, 0] if antithetic else v).unbind(0)))  # contiguous [rows, P] each
    for j in blocks:
        seed = stream_seed(base, j)
        for g in gens.values():
            g.manual_seed(seed)
        if j in full:
            for buf, heads_of in zip(bufs, views):
                _draw(heads_of[j - full.start], gens[buf.device], uniform)
            continue
        b0, b1 = j * B, min(j * B + B, n)
        lo, hi = max(start, b0), min(stop, b1)  # the global members kept from this block
        whole = lo == b0 and hi == b1
        heads = (b1 - b0 + 1) // 2 if antithetic else b1 - b0
        for buf in bufs:
            g = gens[buf.device]
            if whole:  # straight into the rows (contiguous: the same bits as a fresh draw)
                _draw(buf[b0 - start:b0 - start + heads], g, uniform)
                if antithetic and b1 - b0 > heads:
                    torch.neg(buf[b0 - start:b1 - start - heads], out=buf[b0 - start + heads:b1 - start])
                continue
            tmp = _draw(_noise_tmp(heads, buf.shape[1], buf), g, uniform)
            # member m gets row m - b0 (m < b0 + heads), else -row (m - b0 - heads)
            mid = b0 + heads
            if lo < min(hi, mid):
                buf[lo - start:min(hi, mid) - start].copy_(tmp[lo - b0:min(hi, mid) - b0])
            if max(lo, mid) < hi:
                torch.neg(tmp[max(lo, mid) - mid:hi - mid], out=buf[max(lo, mid) - start:hi - start])
    if antithetic and len(full):
        for buf in bufs:
            v = buf[full.start * B - start:full.stop * B - start].view(len(full), 2, B // 2, buf.shape[1])
            torch.neg(v[:, 0], out=v[:, 1])


def _noise_buffers(template: Particle, rows: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    sp = template.species
    lay = sp.layout()
    leaves = template.tensors
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i in lay.op:
        t = leaves[i]
        groups.setdefault((t.dtype, t.device), []).append(i)
    bufs = [torch.empty(rows, sum(lay.numel[i] for i in ix), dtype=d, device=dev) for (d, dev), ix in groups.items()]
    return bufs, list(groups.values())


def noise_population(template: Particle, base: int, members: range, antithetic: bool, *, n: int,
                     uniform: bool = False) -> Particle:
    """``fill_noise`` for the operational parameters of ``template`` (a single particle): a
    population of ``len(members)``; non-operational parameters as their config says.

    The tensors are views into one ``[rows, P_d]`` buffer per dtype (no copy per parameter).
    """
    sp = template.species
    require_floating(sp, "noise")
    lay = sp.layout()
    rows = len(members)
    bufs, groups = _noise_buffers(template, rows)
    fill_noise(bufs, base, members, antithetic, n=n, uniform=uniform)
    results: list[Any] = [None] * len(sp.names)
    for ix, buf in zip(groups, bufs):
        off = 0
        for i in ix:
            k = lay.numel[i]
            results[i] = buf[:, off:off + k].reshape(rows, *lay.shapes[i])
            off += k
    return build(sp, assemble(sp, template.tensors, [results[i] for i in lay.op], rows))


def noise_buffers_of(noise: Particle, rows: int) -> list[torch.Tensor] | None:
    """The ``[rows, P_d]`` buffers behind a population made by ``noise_population`` (one per
    dtype group, in order), or None when its tensors are not views of such buffers."""
    sp = noise.species
    lay = sp.layout()
    ts = noise.tensors
    if noise.population_size != rows:
        return None
    bufs, seen = [], set()
    widths: dict[tuple[torch.dtype, torch.device], int] = {}
    for i in lay.op:
        t = ts[i]
        key = (t.dtype, t.device)
        widths[key] = widths.get(key, 0) + lay.numel[i]
        st = t.untyped_storage()
        skey = (st.data_ptr(), t.dtype)
        if skey in seen:
            continue
        seen.add(skey)
        nbytes = st.nbytes()
        es = t.element_size()
        if rows == 0 or nbytes % (rows * es):
            return None
        width = nbytes // (rows * es)
        bufs.append(torch.empty(0, dtype=t.dtype, device=t.device).set_(st, 0, (rows, width), (width, 1)))
    # the buffers must be exactly the per-dtype groups, in order
    if len(bufs) != len(widths) or any(b.shape[1] != w for b, w in zip(bufs, widths.values())):
        return None
    return bufs


def refill_noise(noise: Particle, base: int, members: range, antithetic: bool, *, n: int,
                 uniform: bool = False) -> Particle | None:
    """Draw new noise into the buffers of a population made by ``noise_population`` (same rows);
    None when its tensors are not views of such buffers (the caller then allocates)."""
    bufs = noise_buffers_of(noise, len(members))
    if bufs is None:
        return None
    fill_noise(bufs, base, members, antithetic, n=n, uniform=uniform)
    return noise


# ---------------------------------------------------------------------------
# the run loop's scratch buffers
# ---------------------------------------------------------------------------

_WORKSPACE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("nytorch_fn_algorithms_workspace",
                                                                         default=None)


ROW_BLOCK_BYTES = 1 << 19
"""Bytes per tensor in one cache block of ``row_blocks`` (512 KiB: the three or four tensors
of a fused update then fit a core's L2 together; measured best at D = 1e3 and 1e5)."""


def row_blocks(t: torch.Tensor) -> list[slice]:
    """Ranges of rows of ``t`` (``[n, ...]``) of at most ``ROW_BLOCK_BYTES`` each (one row at
    least), covering every row in order.

    A sequence of elementwise passes over a large population runs block by block, so each block
    stays in cache between passes instead of streaming the whole tensor from memory once per
    pass (PSO's move alone at D = 1e5, N = 256: 130 ms as whole-tensor passes, 70 ms in blocks).
    Every element goes through the very same operations: the bits do not depend on the blocks.
    """
    n = t.shape[0]
    row = max(1, t[0].numel() * t.element_size()) if n else 1
    step = max(1, ROW_BLOCK_BYTES // row)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_dtype(t: torch.Tensor) -> torch.dtype:
    """The signed integer dtype of ``t``'s element size (for its bit patterns: ``t.view(bits_dtype(t))``)."""
    return _BITS[t.element_size()]


def select_mask(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[n]`` bool vector as the ``select_rows`` mask for ``like`` (``[n, ...]``): all bits set
    (-1) where True, 0 where False, in the integer dtype of ``like``'s element size, shaped
    ``[n, 1, ...]``."""
    bits = bits_dtype(like)
    return torch.neg(rows.to(device=like.device, dtype=bits)).view(rows.shape[0], *([1] * (like.dim() - 1)))


def select_rows(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor, scratch: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:
    """``out = torch.where(mask, new, old)`` as bit operations: ``old ^ ((old ^ new) & mask)`` on
    the values' bit patterns, so each value is an exact copy of ``new``'s or ``old``'s (NaNs,
    signed zeros and infinities included) and the passes vectorise (torch's ``where`` runs one
    element at a time on CPU: 94 us against 52 us for 128 rows of 1,000 float32). ``mask``: -1
    (every bit set) or 0 in the integer dtype of the values' element size, broadcastable to them
    (``select_mask`` makes one per row). ``scratch``: a tensor of ``out``'s shape and dtype whose
    values mean nothing; ``out`` may be ``old``, and ``scratch`` and ``out`` may both be ``new``."""
    bits = mask.dtype
    o, d = old.view(bits), scratch.view(bits)
    torch.bitwise_xor(o, new.view(bits), out=d)
    d.bitwise_and_(mask)
    torch.bitwise_xor(o, d, out=out.view(bits))
    return out


def copy_rows_(target: torch.Tensor, source: torch.Tensor, rows: torch.Tensor,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``target[rows] = source[rows]`` in place, for a ``[n]`` bool ``rows``: exact copies.

    Eagerly only the selected rows move (``index_copy_`` of ``source.index_select``: the cost
    follows the number of rows replaced, so a population where few members change pays little);
    under ``torch.compile`` (where a data-dependent row count breaks the graph) a ``select_rows``
    pass over every row, in cache blocks, with ``scratch`` (``source``'s shape) or a fresh
    buffer. Either way each value is a bit copy of ``source``'s or ``target``'s."""
    if torch.compiler.is_compiling():
        mask = select_mask(rows, target)
        buf = scratch if scratch is not None else torch.empty_like(source, memory_format=torch.contiguous_format)
        for r in row_blocks(target):
            select_rows(mask[r], source[r], target[r], buf[r], target[r])
        return target
    idx = torch.nonzero(rows.to(target.device)).reshape(-1)
    if idx.numel():
        target.index_copy_(0, idx, source.index_select(0, idx))
    return target


def workspace(donate: bool) -> dict | None:
    """The scratch buffers of the ``run`` loop in progress in this context, when ``donate``
    (None outside ``run``, or for a call that does not donate).

    ``run`` owns every buffer of its loop (DESIGN, "Values": in-place only at a named
    boundary); kernels keep their per-generation temporaries here under their own keys
    (``"pso.diff"``, ...) and write into them again the next generation, so a generation
    allocates no large tensor and its cost does not depend on the allocator's history. The
    values in a scratch buffer mean nothing between calls (every use writes before it reads),
    so results are those of fresh buffers, bit for bit. A context variable set around the
    loop's own ``ask`` and ``tell`` only (not around ``fitness_fn``): each thread and each
    ``run`` has its own; nothing outlives the loop.
    """
    return _WORKSPACE.get() if donate else None


def scratch_like(ws: dict | None, key: str, like: Particle) -> Particle:
    """A population with ``like``'s operational tensors' shapes, dtypes and devices whose values
    mean nothing: the workspace's buffer under ``key`` when it fits (kept there), else fresh
    (``torch.empty_like``; kept when ``ws`` is not None). Non-operational tensors are ``like``'s."""
    sp = like.species
    lay = sp.layout()
    have = ws.get(key) if ws is not None else None
    if isinstance(have, Particle) and have.species is sp and have.population_size == like.population_size and all(
        have.tensors[i].shape == like.tensors[i].shape and have.tensors[i].dtype == like.tensors[i].dtype
        and have.tensors[i].device == like.tensors[i].device for i in lay.op
    ):
        return have
    fresh = build(sp, assemble(sp, like.tensors, [torch.empty_like(like.tensors[i], memory_format=torch.contiguous_format)
                                                  for i in lay.op], like.population_size))
    if ws is not None:
        ws[key] = fresh
    return fresh


def scratch_tensor(ws: dict | None, key: str, shape: Sequence[int], dtype: torch.dtype, device: Any) -> torch.Tensor:
    """A contiguous tensor whose values mean nothing: the workspace's under ``key`` when it has
    this shape, dtype and device, else fresh (kept when ``ws`` is not None)."""
    have = ws.get(key) if ws is not None else None
    shape = tuple(shape)
    if (isinstance(have, torch.Tensor) and tuple(have.shape) == shape and have.dtype == dtype
            and have.device == torch.device(device)):
        return have
    fresh = torch.empty(shape, dtype=dtype, device=device)
    if ws is not None:
        ws[key] = fresh
    return fresh


# ---------------------------------------------------------------------------
# exact sums: integer fixed point, the same bits for any split of the members
# ---------------------------------------------------------------------------

_CHUNK = 64  # members per exact float64 partial product (6 bits of headroom)
_COLS = 256  # columns per cache block (measured best of 128..2048 at N=256)
_VALUE_BITS = 24  # member values are rounded to 2**-24 of the largest |value| of their tensor
_WEIGHT_BITS = 22  # weights to 2**-22 of the largest |weight|
_SUM_BLOCK = 1 << 16  # float64 values per block of Collective.sum(exact=True)


def _exponent(m: float) -> int:
    """The smallest ``e`` with ``m <= 2**e`` (``m > 0`` finite)."""
    frac, e = math.frexp(m)
    return e - 1 if frac == 0.5 else e


def _fixed_bits(n: int) -> tuple[int, int]:
    """(value bits, weight bits) so that the int64 total over ``n`` members cannot overflow."""
    head = max(n - 1, 1).bit_length()
    total = min(_VALUE_BITS + _WEIGHT_BITS, 62 - head)
    kw = min(_WEIGHT_BITS, total // 2)
    return total - kw, kw


def _max_abs(f: torch.Tensor) -> torch.Tensor:
    """``max |f|`` without a temporary of ``f``'s size (0 for an empty tensor)."""
    if not f.numel():
        return torch.zeros((), dtype=f.dtype, device=f.device)
    lo, hi = torch.aminmax(f)
    return torch.maximum(-lo, hi)


def _quantized_weighted(x: torch.Tensor, qw: torch.Tensor, xscale: float) -> torch.Tensor:
    """``sum_i qw_i * round(x_i * xscale)`` as int64 ``[d]`` for ``x`` ``[n, d]``: each
    float64 partial product over <= 64 members is an integer below 2**52, hence exact."""
    n, d = x.shape
    out = torch.zeros(d, dtype=torch.int64, device=x.device)
    full = (n // _CHUNK) * _CHUNK
    buf = torch.empty(n, min(_COLS, d), dtype=torch.float64, device=x.device)
    qw_chunks = qw[:full].view(-1, 1, _CHUNK) if full else None
    for a in range(0, d, _COLS):
        c = min(_COLS, d - a)
        b = buf[:, :c] if c == buf.shape[1] else torch.empty(n, c, dtype=torch.float64, device=x.device)
        torch.mul(x[:, a:a + c], xscale, out=b)
        b.round_()
        if qw_chunks is not None:  # full > 0
            part = torch.bmm(qw_chunks, b[:full].view(-1, _CHUNK, c)).view(-1, c)
            acc = part.to(torch.int64).sum(0)
        else:
            acc = torch.zeros(c, dtype=torch.int64, device=x.device)
        if full < n:
            acc += (qw[full:] @ b[full:]).to(torch.int64)
        out[a:a + c] = acc
    return out


# ---------------------------------------------------------------------------
# collectives
# ---------------------------------------------------------------------------


class Collective:
    """Everything an algorithm needs to know about the members it does not hold.

    Attributes:
        n: the global population size ``N``.
        rows: the global indices of this process's members (a ``range``).

    All methods are collective under ``torch.distributed``: every rank calls
    them in the same order. ``LocalCollective`` holds every member.
    """

    n: int
    rows: range

    # -- primitives (overridden by the torch.distributed implementation) --------

    def _all_sum(self, ts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Elementwise sums of ``ts`` over processes (same shapes and dtypes on every process)."""
        return ts

    def _all_max(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of ``t`` over processes."""
        return t

    def gather(self, v_local: torch.Tensor) -> torch.Tensor:
        """The global ``[N, ...]`` tensor from each process's local rows (small per-member values).

        Args:
            v_local: this process's rows, ``[n_local, ...]``.

        Returns:
            All ``N`` rows in global member order (the same on every process).
        """
        raise NotImplementedError

    def member(self, pop_local: Particle, i: int) -> Particle:
        """Global member ``i`` as a single particle (a copy), from its owner.

        Args:
            pop_local: this process's members (a population of ``n_local``).
            i: the member's global index, in ``[0, N)``.

        Returns:
            A single particle of the species, on every process.
        """
        raise NotImplementedError

    def take(self, pop_local: Particle, idx: torch.Tensor, *, out: Particle | None = None) -> Particle:
        """The members at global indices ``idx`` as a local population of ``k`` (copies).

        Args:
            pop_local: this process's members (a population of ``n_local``).
            idx: a ``[k]`` tensor of global indices, this process's share of a selection.
            out: a population of ``k`` of the same species that the caller owns
                and no longer needs (not ``pop_local`` nor a view of it): the
                operational tensors are written into its buffers
                (``index_select(..., out=)``), the same bits as a fresh take;
                None (or a population that does not fit) allocates.

        Returns:
            A population of ``k`` members, in the order of ``idx``.
        """
        raise NotImplementedError

    # -- derived, the same for every implementation -------------------------------

    @property
    def local_n(self) -> int:
        """How many members this process holds (``len(rows)``)."""
        return len(self.rows)

    def block(self, v: Any) -> Any:
        """The local rows of a global ``[N, ...]`` tensor or ``N``-member population.

        Args:
            v: a ``[N, ...]`` tensor or a population of ``N``.

        Returns:
            Its rows ``rows`` (``v`` itself when this process holds every member).

        Raises:
            PopulationSizeError: ``v`` does not have ``N`` rows.
            TypeError: ``v`` is neither a tensor nor a population.
        """
        if isinstance(v, Particle):
            if v.population_size != self.n:
                raise PopulationSizeError(f"block: expected a population of {self.n}, got {describe(v)}")
        elif isinstance(v, torch.Tensor):
            if v.dim() == 0 or v.shape[0] != self.n:
                raise PopulationSizeError(f"block: expected a leading dimension of {self.n}, got {describe(v)}")
        else:
            raise TypeError(f"block: expected a tensor or a population, got {describe(v)}")
        if self.rows.start == 0 and self.rows.stop == self.n:
            return v
        return v[self.rows.start:self.rows.stop]

    def sum(self, v_local: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
        """``sum_i v_i`` over all ``N`` members, from each process's ``[n_local, ...]`` rows.

        ``exact=False``: ``v_local.sum(0)`` then (sharded) a floating all-reduce:
        a sharded run matches one process to rounding. ``exact=True``: each
        value is rounded to a multiple of ``2**-k`` times the largest
        ``|value|`` over all members (``k = 62 - bit_length(N - 1)``, 54 at
        ``N = 256``: below float64 resolution for values near the largest)
        and the integers are summed in int64, so the result has the same bits
        for any split of the members. Non-finite values make the exact sum NaN.

        Args:
            v_local: this process's rows, ``[n_local, ...]``.
            exact: the fixed-point sum above (the same bits for any split).

        Returns:
            The ``[...]`` sum, in ``v_local``'s dtype, the same on every process.

        Raises:
            PopulationSizeError: ``v_local`` does not have ``n_local`` rows.
        """
        if not isinstance(v_local, torch.Tensor) or v_local.dim() == 0 or v_local.shape[0] != self.local_n:
            raise PopulationSizeError(f"sum: expected a [{self.local_n}, ...] tensor of local rows, got {describe(v_local)}")
        if not exact or not v_local.is_floating_point():
            return self._all_sum([v_local.sum(0)])[0]
        # in blocks of columns (the same per-column values as whole-tensor passes, with no
        # temporary of the input's size): max |v| in the input's dtype (exact), then each
        # block widened to float64, scaled by a power of two, rounded and summed as int64
        x = v_local.detach()
        tail = x.shape[1:]
        x2 = x.reshape(x.shape[0], -1)
        d = x2.shape[1]
        m = float(self._all_max(_max_abs(x2).to(torch.float64).reshape(1))[0]) if d else 0.0
        if not math.isfinite(m):
            return torch.full(tail, float("nan"), dtype=v_local.dtype, device=x.device)
        if m == 0.0:
            return torch.zeros(tail, dtype=v_local.dtype, device=x.device)
        k = 62 - max(self.n - 1, 1).bit_length()
        e = _exponent(m)
        scale = 2.0 ** (k - e)
        q = torch.empty(d, dtype=torch.int64, device=x.device)
        cols = max(1, _SUM_BLOCK // max(x2.shape[0], 1))
        buf = torch.empty(x2.shape[0], min(cols, d), dtype=torch.float64, device=x.device)
        for a in range(0, d, cols):
            c = min(cols, d - a)
            b = buf[:, :c] if c == buf.shape[1] else torch.empty(x2.shape[0], c, dtype=torch.float64, device=x.device)
            b.copy_(x2[:, a:a + c]).mul_(scale).round_()
            torch.sum(b.to(torch.int64), 0, out=q[a:a + c])
        total = self._all_sum([q])[0]
        return (total.to(torch.float64) * 2.0 ** (e - k)).to(v_local.dtype).reshape(tail)

    def weighted_sum(
        self, pop_local: Particle, w_local: torch.Tensor, *, exact: bool = False, like: Particle | None = None
    ) -> Particle:
        """``sum_i w_i * member_i`` over ALL members, a single particle.

        Args:
            pop_local: this process's members (a population of ``n_local``).
            w_local: their weights, ``[n_local]`` real.
            exact: see below.
            like: a single particle giving the non-operational parameters of the
                result (default: the first local member's).

        Returns:
            A single particle of the species, the same on every process.

        Numerics. ``exact=False`` (fast): per operational tensor one matrix
        product ``w @ X`` in the parameter's dtype (the weights cast to it),
        then (sharded) a floating all-reduce, so a sharded run matches one
        process to rounding only. ``exact=True``: the weights are rounded to
        multiples of ``2**-22`` times the largest ``|w|`` and each tensor's
        values to ``2**-24`` times its largest ``|value|`` (both maxima over
        all members), and ``sum_i q_w,i q_x,i`` is computed exactly (float64
        partial products of at most 64 members, every one an integer below
        ``2**52``, added as int64), so any split of the members gives the same
        bits; the rounding is about float32 resolution. Non-finite values
        make the exact result NaN.
        """
        n = require_population(pop_local, "weighted_sum")
        if n != self.local_n:
            raise PopulationSizeError(f"weighted_sum: expected {self.local_n} local members, got {n}")
        if not isinstance(w_local, torch.Tensor) or w_local.shape != (n,):
            raise PopulationSizeError(f"weighted_sum: expected [{n}] weights, got {describe(w_local)}")
        sp = pop_local.species
        xs = operational(pop_local)
        flats = [t.reshape(n, -1) for t in xs]
        if not exact:
            parts = [w_local.to(device=f.device, dtype=f.dtype) @ f for f in flats]
            sums = self._all_sum(parts)
        else:
            w = w_local.detach().to(torch.float64)
            maxima = [_max_abs(f) for f in flats]
            stats = torch.stack([m.to(torch.float64).cpu() for m in maxima]
                                + [w.abs().amax().cpu() if n else torch.zeros((), dtype=torch.float64)])
            stats = self._all_max(stats)
            mw = float(stats[-1])
            kx, kw = _fixed_bits(self.n)
            ints: list[torch.Tensor] = []
            plan: list[float | str | None] = []  # the scale of each total; None: zero; "nan": non-finite
            for f, mx in zip(flats, stats[:-1].tolist()):
                if not (math.isfinite(mx) and math.isfinite(mw)) or mx == 0.0 or mw == 0.0:
                    ints.append(torch.zeros(f.shape[1], dtype=torch.int64, device=f.device))
                    plan.append(None if (math.isfinite(mx) and math.isfinite(mw)) else "nan")
                    continue
                ex, ew = _exponent(mx), _exponent(mw)
                qw = torch.round(w * 2.0 ** (kw - ew)).to(device=f.device)
                ints.append(_quantized_weighted(f.detach(), qw, 2.0 ** (kx - ex)))
                plan.append(2.0 ** (ex + ew - kx - kw))
            totals = self._all_sum(ints)
            sums = []
            for total, scale, f in zip(totals, plan, flats):
                if scale == "nan":
                    sums.append(torch.full((f.shape[1],), float("nan"), dtype=f.dtype, device=f.device))
                elif scale is None:
                    sums.append(torch.zeros(f.shape[1], dtype=f.dtype, device=f.device))
                else:
                    assert isinstance(scale, float)
                    sums.append((total.to(torch.float64) * scale).to(f.dtype))
        results = [s.reshape(t.shape[1:]) for s, t in zip(sums, xs)]
        if like is None:
            like = pop_local[0] if n else None
        lead = like.tensors if like is not None else [t[0] for t in pop_local.tensors]
        return build(sp, assemble(sp, lead, results, None))

    def noise(self, template: Any, base_seed: int, *, antithetic: bool = False, uniform: bool = False,
              out: Any = None) -> Any:
        """Noise for the local members, from the noise blocks of ``fill_noise`` (32 members a stream).

        Args:
            template: a single particle (-> a population of ``n_local`` like it,
                operational parameters only; views into one buffer per dtype) or a
                tensor (-> ``[n_local, *template.shape]`` of its dtype and device).
            base_seed: this generation's seed (``draw_seed(generator)``, the same
                on every process).
            antithetic: mirrored pairs within each block of 32 (``fill_noise``).
            uniform: U[0, 1) draws (``torch.rand`` on each block) instead of
                standard normal ones (``torch.randn``).
            out: the result of an earlier ``noise`` call for the same template
                (a buffer the caller owns and no longer needs): drawn into in
                place, the same bits as a fresh call; when it does not fit (another
                size or layout) a fresh result is made.

        Returns:
            A population of ``n_local`` (for a particle template) or a
            ``[n_local, *template.shape]`` tensor (for a tensor template).
        """
        if isinstance(template, Particle):
            require_single(template, "noise")
            if isinstance(out, Particle) and out.species is template.species:
                bufs = noise_buffers_of(out, self.local_n)
                if bufs is not None and all(
                    b.dtype == t.dtype and b.device == t.device for b, t in zip(bufs, _group_firsts(template))
                ):
                    fill_noise(bufs, base_seed, self.rows, antithetic, n=self.n, uniform=uniform)
                    return out
            return noise_population(template, base_seed, self.rows, antithetic, n=self.n, uniform=uniform)
        if isinstance(template, torch.Tensor):
            if not template.is_floating_point():
                raise TypeError(f"noise: expected a floating template, got {describe(template)}")
            shape = (self.local_n, *template.shape)
            if (isinstance(out, torch.Tensor) and out.shape == shape and out.dtype == template.dtype
                    and out.device == template.device and out.is_contiguous()):
                buf = out.view(self.local_n, -1)
            else:
                buf = torch.empty(self.local_n, max(template.numel(), 0), dtype=template.dtype,
                                  device=template.device)
            fill_noise([buf], base_seed, self.rows, antithetic, n=self.n, uniform=uniform)
            return buf.view(shape)
        raise TypeError(f"noise: expected a particle or a tensor template, got {describe(template)}")


def _group_firsts(template: Particle) -> list[torch.Tensor]:
    """One operational tensor of each (dtype, device) group of ``template``, in group order."""
    lay = template.species.layout()
    seen: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
    for i in lay.op:
        t = template.tensors[i]
        seen.setdefault((t.dtype, t.device), t)
    return list(seen.values())


def take_targets(pop_local: Particle, out: Any, k: int) -> list[torch.Tensor | None] | None:
    """Per tensor of ``pop_local``, the tensor of ``out`` a take of ``k`` members may be written
    into (None for a non-operational one), or None when ``out`` does not fit: not a population of
    ``k`` of the species, another shape/dtype/device, non-contiguous, or sharing storage with
    ``pop_local`` (``index_select`` cannot write over its own input)."""
    if not isinstance(out, Particle) or out.species is not pop_local.species or out.population_size != k:
        return None
    lay = pop_local.species.layout()
    src = {t.untyped_storage().data_ptr() for t in pop_local.tensors}
    targets: list[torch.Tensor | None] = [None] * len(pop_local.tensors)
    for i in lay.op:
        o, t = out.tensors[i], pop_local.tensors[i]
        if (o.dtype != t.dtype or o.device != t.device or o.shape[1:] != t.shape[1:] or not o.is_contiguous()
                or o.requires_grad or o.untyped_storage().data_ptr() in src):
            return None
        targets[i] = o
    return targets


class LocalCollective(Collective):
    """One process holding all ``n`` members: every method is the plain local computation.

    Args:
        n: the population size ``N`` (``rows`` is ``range(n)``).
    """

    __slots__ = ("n", "rows")

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows = range(n)

    def gather(self, v_local: torch.Tensor) -> torch.Tensor:
        """The global ``[N, ...]`` tensor: here ``v_local`` itself.

        Args:
            v_local: all ``N`` rows.

        Returns:
            ``v_local``.
        """
        return v_local

    def member(self, pop_local: Particle, i: int) -> Particle:
        """Member ``i`` as a single particle (a copy).

        Args:
            pop_local: the population of all ``N`` members.
            i: the member's index.

        Returns:
            A copy of ``pop_local[i]``.
        """
        return pop_local[int(i)].clone()

    def take(self, pop_local: Particle, idx: torch.Tensor, *, out: Particle | None = None) -> Particle:
        """The members at indices ``idx`` as a population of ``k`` (copies; ``Collective.take``).

        Args:
            pop_local: the population of all ``N`` members.
            idx: a ``[k]`` tensor of indices.
            out: a population of ``k`` to write into, as ``Collective.take``'s.

        Returns:
            A population of ``k`` members, in the order of ``idx``.
        """
        # index_select: the same copies as advanced indexing, at a fraction of its dispatch cost
        ts = pop_local.tensors
        if not ts:
            return pop_local
        idx = idx.to(ts[0].device)
        k = idx.shape[0]
        targets = take_targets(pop_local, out, k)
        if targets is None:
            return build(pop_local.species, [t.index_select(0, idx) for t in ts])
        return build(pop_local.species, [torch.index_select(t, 0, idx, out=o) if o is not None
                                         else t.index_select(0, idx) for t, o in zip(ts, targets)])

    def __repr__(self) -> str:
        return f"LocalCollective(n={self.n})"


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------


class History(NamedTuple):
    """What ``run`` records, one row per generation (for plotting).

    Attributes:
        best_fitness: ``[G]`` float64, the best fitness so far after each
            generation (``[G, M]`` multi-objective).
        mean_fitness: ``[G]`` float64, the mean fitness of that generation's
            members, NaN members left out (``[G, M]``).
        sigma: ``[G]`` float64, the state's ``sigma`` after each generation (its
            mean when it is a tensor or particle), or None when the state has none.
    """

    best_fitness: torch.Tensor
    mean_fitness: torch.Tensor
    sigma: torch.Tensor | None


class Example(NamedTuple):
    """How the protocol tests build one algorithm on a small problem (``Algorithm._example``).

    Attributes:
        algorithm: an instance with small, fast hyperparameters.
        population: members of ``init``'s ``x`` for a population-based algorithm
            (None for a distribution-based one: ``x`` is a single particle).
        exact: a sharded run equals the single-process run bit for bit on CPU.
        objectives: ``M`` for multi-objective fitness (1: a ``[N]`` fitness).
    """

    algorithm: Any
    population: int | None = None
    exact: bool = True
    objectives: int = 1


# ---------------------------------------------------------------------------
# the asked-population probe
# ---------------------------------------------------------------------------


def _first_last(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = t.dim() - 1
    if t.shape[1:].numel() == 0:
        z = torch.zeros(t.shape[0], dtype=torch.float64, device=t.device)
        return z, z
    return t[(slice(None),) + (0,) * k], t[(slice(None),) + (-1,) * k]


def probe(population: Particle | None, n_global: int, n_local: int, device: Any) -> torch.Tensor:
    """The ``asked`` bookkeeping tensor: int64 ``[n_local + 1, 2]``.

    Row 0 is ``(N, 1)`` after an ``ask`` (``(N, 0)`` when nothing is asked);
    row ``1 + j`` holds the float64 bit patterns of local member ``j``'s first
    value of its first operational parameter and last value of its last one,
    so ``tell`` recognises the population ``ask`` returned at the cost of
    ``2 n`` reads.
    """
    if population is None:
        out = torch.zeros(n_local + 1, 2, dtype=torch.int64, device=device)
        out[0, 0] = n_global
        return out
    xs = operational(population)
    head = torch.tensor([[n_global, 1]], dtype=torch.int64, device=device)
    if not xs:
        return torch.cat([head, torch.zeros(n_local, 2, dtype=torch.int64, device=device)])
    a, _ = _first_last(xs[0])
    _, b = _first_last(xs[-1])
    if a.dtype != b.dtype or a.device != b.device:
        a, b = a.to(device=device, dtype=torch.float64), b.to(device=device, dtype=torch.float64)
    body = torch.stack([a.detach(), b.detach()], 1).to(device=device, dtype=torch.float64).view(torch.int64)
    return torch.cat([head, body])


# ---------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------

CollectiveFactory = Callable[[int], Collective]

_COMMON = ("best", "best_fitness", "generation", "asked")


def _device(p: Particle) -> torch.device:
    return p.tensors[0].device if p.tensors else torch.device("cpu")


def _check_bool(value: Any, where: str, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} expects a bool, got {describe(value)}")


def _objectives(algo: Any) -> int:
    return int(getattr(algo, "objectives", 1)) if getattr(algo, "multi_objective", False) else 1


def _worst(algo: Any, device: Any) -> torch.Tensor:
    m = _objectives(algo)
    if not getattr(algo, "multi_objective", False):
        return torch.tensor(-math.inf if algo.maximize else math.inf, dtype=torch.float64, device=device)
    signs = directions(algo.maximize, m, type(algo).__name__)
    return torch.tensor([-math.inf if up else math.inf for up in signs], dtype=torch.float64, device=device)


def _state_name(cls: type) -> str:
    return cls.__name__


def check_state(algo: Any, state: Any, where: str) -> None:
    """``type(state) is algo.State``, else a TypeError naming both types."""
    cls = type(algo).State
    if type(state) is not cls:
        got = type(state).__name__ if isinstance(state, tuple) and hasattr(type(state), "_fields") else describe(state)
        raise TypeError(f"{where}: expected a {_state_name(cls)} (made by {type(algo).__name__}.init), got {got}")


def _sizes(state: Any, where: str) -> int:
    asked = state.asked
    if not isinstance(asked, torch.Tensor) or asked.dim() != 2 or asked.shape[1] != 2 or asked.dtype != torch.int64:
        raise TypeError(f"{where}: the state's asked field is not the bookkeeping tensor made by init, got {describe(asked)}")
    return int(asked[0, 0])


def protocol_init(algo: Any, x: Any, generator: Any, factory: CollectiveFactory) -> Any:
    name = type(algo).__name__
    where = f"{name}.init"
    check_generator(generator, where)
    if algo.kind == "distribution":
        require_single(x, where)
        n = algo.population_size
    else:
        n = require_population(x, where)
    require_floating(x.species, where, "cannot search over")
    algo._check_population(n)
    coll = factory(n)
    if algo.kind == "distribution":
        x_local = x.clone()
        best = x.clone()
    else:
        x_local = coll.block(x).clone()
        best = _member(coll, x_local, 0)
    fields = algo._init(x_local, generator=generator, coll=coll)
    device = _device(x)
    common = dict(best=best, best_fitness=_worst(algo, device), generation=0,
                  asked=probe(None, n, coll.local_n, device))
    return type(algo).State(**common, **fields)


def _member(coll: Collective, pop_local: Particle, i: int) -> Particle:
    return coll.member(pop_local, i)


def protocol_ask(algo: Any, state: Any, generator: Any, donate: Any, factory: CollectiveFactory) -> tuple[Particle, Any]:
    where = f"{type(algo).__name__}.ask"
    check_state(algo, state, where)
    check_generator(generator, where)
    _check_bool(donate, where, "donate")
    n = _sizes(state, where)
    coll = factory(n)
    pop, fields = _ask_kernel(algo, state, generator, donate, coll, where)
    asked = probe(pop, n, coll.local_n, state.asked.device)
    return pop, state._replace(asked=asked, **fields)


def _ask_kernel(algo: Any, state: Any, generator: Any, donate: bool, coll: Collective, where: str) -> tuple[Particle, dict]:
    """The kernel's population and fields, checked for what kernels may return (no ``asked``)."""
    pop, fields = algo._ask(state, generator=generator, coll=coll, donate=donate)
    if not isinstance(pop, Particle) or pop.population_size != coll.local_n:
        raise AssertionError(f"{where}: the kernel returned {describe(pop)}, expected a population of {coll.local_n}")
    bad = [k for k in fields if k in _COMMON]
    if bad:
        raise AssertionError(f"{where}: kernels never set the common fields, got {bad}")
    return pop, fields


def _check_asked(algo: Any, state: Any, population: Any, where: str, n_local: int) -> None:
    asked = state.asked
    if int(asked[0, 1]) != 1:
        raise ValueError(f"{where}: expected a state returned by ask() (the population it asked for), "
                         "got a state with nothing asked; call ask() first")
    if not isinstance(population, Particle):
        raise TypeError(f"{where}: expected the population returned by ask(), got {describe(population)}")
    species = state.best.species
    if population.species is not species:
        raise SpeciesMismatchError(
            f"{where}: expected the population returned by ask() (of {species!r}), got one of {population.species!r}"
        )
    m = population.population_size
    if m is None:
        raise NotAPopulationError(f"{where}: expected the population of {n_local} returned by ask(), got a single particle")
    if m != n_local:
        raise PopulationSizeError(f"{where}: expected the population of {n_local} members returned by ask(), got {m}")
    now = probe(population, int(asked[0, 0]), n_local, asked.device)
    if not torch.equal(now, asked):
        raise ValueError(
            f"{where}: expected the population returned by ask() for this state, got another population of "
            f"{m} members (different values); tell() must get the very members that were asked"
        )


def _local_fitness(algo: Any, fitness: Any, n_local: int, where: str) -> torch.Tensor:
    """The local fitness checked for shape (``[n]`` or ``[n, M]``), detached."""
    if isinstance(fitness, (list, tuple)):
        fitness = torch.as_tensor(fitness, dtype=torch.float64)
    if not isinstance(fitness, torch.Tensor):
        raise TypeError(f"{where}: fitness expects a tensor, got {describe(fitness)}")
    if fitness.dtype == torch.bool or fitness.is_complex():
        raise TypeError(f"{where}: fitness expects a real dtype, got {fitness.dtype}")
    m = _objectives(algo)
    expected = (n_local,) if not getattr(algo, "multi_objective", False) else (n_local, m)
    if tuple(fitness.shape) != expected:
        what = "one value per member" if len(expected) == 1 else f"{m} objectives per member"
        raise PopulationSizeError(
            f"{where}: fitness expects shape {expected}, {what} of the {n_local} asked, got shape {tuple(fitness.shape)}"
        )
    return fitness.detach()


def _improved(algo: Any, new: torch.Tensor, old: torch.Tensor) -> bool:
    """Whether fitness ``new`` beats ``old`` (``maximize`` applied; NaN never wins)."""
    if getattr(algo, "multi_objective", False):
        return False
    a, b = float(new), float(old)
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if algo.maximize else a < b


def protocol_tell(
    algo: Any, state: Any, population: Any, fitness: Any, generator: Any, donate: Any, factory: CollectiveFactory
) -> tuple[Any, torch.Tensor]:
    """``tell``; returns the new state and the global fitness (for ``run``'s history)."""
    where = f"{type(algo).__name__}.tell"
    check_state(algo, state, where)
    check_generator(generator, where)
    _check_bool(donate, where, "donate")
    n = _sizes(state, where)
    coll = factory(n)
    _check_asked(algo, state, population, where, coll.local_n)
    new, f, _ = _tell_kernel(algo, state, population, fitness, generator, donate, coll, factory, n, where)
    return new, f


def _tell_kernel(
    algo: Any, state: Any, population: Particle, fitness: Any, generator: Any, donate: bool, coll: Collective,
    factory: CollectiveFactory, n: int, where: str, idle: dict | None = None,
) -> tuple[Any, torch.Tensor, int]:
    """``tell`` after the checks of the state and the population: the fitness checked, the best
    recorded, the kernel run. Returns the new state, the global fitness and the next ``N``.
    ``idle``: a cache of the "nothing asked" bookkeeping tensors by size (``run``'s own)."""
    f_local = _local_fitness(algo, fitness, coll.local_n, where)
    f = coll.gather(f_local.to(state.asked.device))
    if getattr(algo, "multi_objective", False):
        f, score = objective_scores(f, n, _objectives(algo), where, maximize=algo.maximize)
    else:
        f, score = scores(f, n, where, maximize=algo.maximize)
    # the best first: the kernel may write into the population's buffers when donated
    best, best_fitness = state.best, state.best_fitness
    i = algo._best(population, score, coll)
    if i is not None:
        i = int(i)
        candidate = f[i].to(torch.float64)
        if getattr(algo, "multi_objective", False):
            best, best_fitness = _member(coll, population, i), candidate.clone()
        elif _improved(algo, candidate, best_fitness):
            best, best_fitness = _member(coll, population, i), candidate.clone().reshape(())
    # kernels see this generation's best already recorded (the generation not yet counted)
    seen = state._replace(best=best, best_fitness=best_fitness)
    fields = algo._tell(seen, population, score, generator=generator, coll=coll, donate=donate)
    bad = [k for k in fields if k in _COMMON]
    if bad:
        raise AssertionError(f"{where}: kernels never set the common fields, got {bad}")
    # the next generation's population size (an algorithm that grows it, e.g. at a restart, says so)
    n_next = algo._population_after(fields, n)
    if isinstance(n_next, bool) or not isinstance(n_next, int) or n_next < 1:
        raise AssertionError(f"{where}: _population_after returned {n_next!r}, expected an int >= 1")
    local_next = coll.local_n if n_next == n else factory(n_next).local_n
    key = (n_next, local_next)
    asked = idle.get(key) if idle is not None else None
    if asked is None:
        asked = probe(None, n_next, local_next, state.asked.device)
        if idle is not None:
            idle[key] = asked  # never written: every state of the loop may share it
    new = seen._replace(
        best=best, best_fitness=best_fitness, generation=state.generation + 1, asked=asked, **fields,
    )
    return new, f, n_next


def _owned_copy(state: Any) -> Any:
    """A copy of every tensor of ``state`` (so a loop may write into it)."""
    return pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, state)


def _sigma_of(state: Any) -> float | None:
    if "sigma" not in getattr(type(state), "_fields", ()):
        return None
    s = state.sigma
    if isinstance(s, numbers.Real) and not isinstance(s, bool):
        return float(s)
    if isinstance(s, torch.Tensor):
        return float(s.double().mean()) if s.numel() else float("nan")
    if isinstance(s, Particle):
        xs = [t.double().reshape(-1) for t in operational(s)]
        return float(torch.cat(xs).mean()) if xs else float("nan")
    return None


def _progress(generations: int, where: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError(
            f"{where}: progress=True needs tqdm; install it with `pip install tqdm` "
            "or the demo extra (`pip install nytorch-fn[demo]`)"
        ) from None
    return tqdm(total=generations, desc=where, unit="gen")


def protocol_run(
    algo: Any, state: Any, fitness_fn: Any, generations: Any, generator: Any, progress: Any, factory: CollectiveFactory
) -> tuple[Any, History]:
    where = f"{type(algo).__name__}.run"
    check_state(algo, state, where)
    check_generator(generator, where)
    if not callable(fitness_fn):
        raise TypeError(f"{where}: fitness_fn expects a callable population -> fitness, got {describe(fitness_fn)}")
    if isinstance(generations, bool) or not isinstance(generations, numbers.Integral) or generations < 0:
        raise ValueError(f"{where}: generations expects an int >= 0, got {generations!r}")
    _check_bool(progress, where, "progress")
    bar = _progress(int(generations), where) if progress else None
    state = _owned_copy(state)  # from here on the loop owns every buffer: donate
    best, mean, sigma = [], [], []
    work: dict = {}  # the loop's scratch buffers (``workspace``), seen by its own ask and tell only
    # the loop hands its own state and population from ask to tell: the checks of the state, the
    # generator and the asked population are made once here, not every generation (the fitness
    # is the caller's and is checked every time)
    ask_where, tell_where = f"{type(algo).__name__}.ask", f"{type(algo).__name__}.tell"
    n = _sizes(state, where)
    coll = factory(n)
    idle: dict = {}
    try:
        for _ in range(int(generations)):
            token = _WORKSPACE.set(work)
            try:
                pop, fields = _ask_kernel(algo, state, generator, True, coll, ask_where)
            finally:
                _WORKSPACE.reset(token)
            state = state._replace(**fields)
            fitness = fitness_fn(pop)
            token = _WORKSPACE.set(work)
            try:
                state, f, n_next = _tell_kernel(algo, state, pop, fitness, generator, True, coll, factory, n,
                                                tell_where, idle)
            finally:
                _WORKSPACE.reset(token)
            if n_next != n:  # a restart resized the population
                n, coll = n_next, factory(n_next)
            del pop
            best.append(state.best_fitness.detach().to("cpu", torch.float64))
            mean.append(torch.nanmean(f.detach().to("cpu", torch.float64), dim=0))
            s = _sigma_of(state)
            if s is not None:
                sigma.append(s)
            if bar is not None:
                bar.update(1)
                if best[-1].dim() == 0:
                    bar.set_postfix(best=f"{float(best[-1]):.4g}", mean=f"{float(mean[-1]):.4g}")
    finally:
        work.clear()
        if bar is not None:
            bar.close()
    m = _objectives(algo)
    empty = torch.zeros((0,) if not getattr(algo, "multi_objective", False) else (0, m), dtype=torch.float64)
    hist = History(
        torch.stack(best) if best else empty,
        torch.stack(mean) if mean else empty.clone(),
        torch.tensor(sigma, dtype=torch.float64) if sigma or _sigma_of(state) is not None else None,
    )
    return state, hist


class Algorithm:
    """The base of every algorithm: the public protocol and its bookkeeping.

    Subclasses are ``@attrs.frozen`` records of hyperparameters only, every
    field keyword-only (including ``maximize: bool = True``; distribution-based
    algorithms also have ``population_size``), and set the class attributes
    ``State`` (the NamedTuple type of their states, whose first four fields are
    ``best, best_fitness, generation, asked``) and ``kind``
    (``"distribution"``: ``init`` takes the centre, a single particle;
    ``"population"``: ``init`` takes the initial population). They implement
    the kernels ``_init``, ``_ask`` and ``_tell`` (the math only) and may
    override ``_best``, ``_check_population`` and ``_population_after`` (a
    population size that changes from one generation to the next).

    Multi-objective algorithms set ``multi_objective = True`` and have a field
    ``objectives`` (``M``); their fitness is ``[N, M]`` and ``maximize`` a bool
    or a tuple of ``M`` bools; ``best`` is the member ``_best`` picks each
    generation (they must override it).
    """

    State: ClassVar[type]
    kind: ClassVar[str]
    multi_objective: ClassVar[bool] = False

    # -- public protocol --------------------------------------------------------

    def init(self, x: Particle, *, generator: torch.Generator | None = None) -> Any:
        """The first state.

        Args:
            x: the centre, a single particle (``kind == "distribution"``), or the
                initial population (``kind == "population"``). It is copied: the
                state never shares storage with ``x``.
            generator: for any random initialisation (torch's global RNG when None).

        Returns:
            A ``State`` with ``generation == 0``, ``best`` the centre (or member 0)
            and ``best_fitness`` the worst value (``-inf`` when maximising).

        Raises:
            TypeError: ``x`` is not a particle of the expected kind, or holds a
                non-float operational parameter (named).
            ValueError: the population is too small for the algorithm.
        """
        return protocol_init(self, x, generator, LocalCollective)

    def ask(
        self, state: Any, *, generator: torch.Generator | None = None, donate: bool = False
    ) -> tuple[Particle, Any]:
        """The members to evaluate next.

        Args:
            state: from ``init`` or ``tell``.
            generator: draws the members' randomness (torch's global RNG when None).
            donate: allow writing into ``state``'s own buffers (``state``, and
                everything sharing storage with it, must not be used afterwards).

        Returns:
            The pair ``(population, state)``, ``N`` members (a particle with a
            leading ``N``) and the state that remembers them for ``tell``.

        Raises:
            TypeError: ``state`` is not this algorithm's ``State``.
        """
        return protocol_ask(self, state, generator, donate, LocalCollective)

    def tell(
        self,
        state: Any,
        population: Particle,
        fitness: Any,
        *,
        generator: torch.Generator | None = None,
        donate: bool = False,
    ) -> Any:
        """Update from the fitness of the population ``ask`` returned.

        Args:
            state: the state ``ask`` returned.
            population: the population ``ask`` returned (checked: species, size
                and a probe of its values).
            fitness: ``[N]`` (``[N, M]`` multi-objective) real values, higher is
                better unless ``maximize=False``; NaN is the worst.
            generator: for the update's randomness.
            donate: allow writing into ``state``'s and ``population``'s buffers.

        Returns:
            A new state with ``generation + 1``; ``state`` is left as it was.

        Raises:
            TypeError: a state of another algorithm, a non-tensor fitness.
            ValueError: nothing was asked, a population other than the asked one,
                fitness NaN everywhere.
            PopulationSizeError: fitness of the wrong shape.
        """
        return protocol_tell(self, state, population, fitness, generator, donate, LocalCollective)[0]

    def step(
        self,
        state: Any,
        fitness_fn: Callable[[Particle], Any],
        *,
        generator: torch.Generator | None = None,
        donate: bool = False,
    ) -> tuple[Any, torch.Tensor]:
        """``ask``, ``fitness_fn(population)``, ``tell``: one generation.

        Args:
            state: from ``init`` or an earlier ``step``/``tell``.
            fitness_fn: ``population -> [N]`` (``[N, M]`` multi-objective)
                fitness, higher is better unless ``maximize=False``.
            generator: draws the generation's randomness (torch's global RNG when None).
            donate: allow writing into ``state``'s own buffers (``state`` must not be
                used afterwards).

        Returns:
            The pair ``(state, fitness)``, the new state and the fitness of the
            members just evaluated.
        """
        if not callable(fitness_fn):
            raise TypeError(f"{type(self).__name__}.step: fitness_fn expects a callable population -> fitness, "
                            f"got {describe(fitness_fn)}")
        pop, state = self.ask(state, generator=generator, donate=donate)
        fitness = fitness_fn(pop)
        return self.tell(state, pop, fitness, generator=generator, donate=donate), fitness

    def run(
        self,
        state: Any,
        fitness_fn: Callable[[Particle], Any],
        generations: int,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> tuple[Any, History]:
        """``generations`` steps in a loop the library owns, with a history for plotting.

        The loop copies ``state`` once and then writes in place into the
        buffers it owns (``ask``/``tell`` with ``donate=True``), and keeps
        the kernels' per-generation temporaries (noise, differences, masks,
        the next population) in scratch buffers of its own that it reuses
        every generation, so a generation allocates no tensor of the
        population's size and its cost does not depend on the allocator's
        history. The values are those of the same ``step`` calls without
        donation, bit for bit.
        ``fitness_fn`` must not keep the population it is given (its buffers
        are reused by the next generation).

        Args:
            state: from ``init`` (or a previous run); left as it was.
            fitness_fn: population -> ``[N]`` fitness.
            generations: how many, >= 0.
            generator: as in ``ask``/``tell``.
            progress: show a tqdm progress bar (needs ``tqdm``).

        Returns:
            ``(state, history)``; ``history`` is a ``History`` of ``[G]`` tensors.
        """
        return protocol_run(self, state, fitness_fn, generations, generator, progress, LocalCollective)

    # -- kernels -------------------------------------------------------------------

    def _init(self, x: Particle, *, generator: Any, coll: Collective) -> dict:
        raise NotImplementedError

    def _ask(self, state: Any, *, generator: Any, coll: Collective, donate: bool) -> tuple[Particle, dict]:
        raise NotImplementedError

    def _tell(self, state: Any, population: Particle, score: torch.Tensor, *, generator: Any,
              coll: Collective, donate: bool) -> dict:
        raise NotImplementedError

    def _best(self, population: Particle, score: torch.Tensor, coll: Collective) -> int | None:
        """The global index of this generation's best member (default: the first argmax of ``score``)."""
        return int(torch.argmax(score))

    def _check_population(self, n: int) -> None:
        """Refuse a population size ``n`` the hyperparameters cannot work with (default: ``n >= 1``)."""

    def _population_after(self, fields: dict, n: int) -> int:
        """The population size of the next ``ask``, given the fields ``_tell`` just returned and
        this generation's size ``n`` (default: ``n``, the size never changes). An algorithm whose
        population grows or shrinks (the IPOP/BIPOP restarts) returns the new size; the base then
        sizes its bookkeeping (and, sharded, each process's block) for it."""
        return n

    @classmethod
    def _example(cls) -> Example:
        raise NotImplementedError(f"{cls.__name__}: no Example registered for the protocol tests")
