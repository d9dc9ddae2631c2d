"""Exact order statistics in O(chunk) extra memory: radix selection on float bit patterns.

``torch.topk`` / ``kthvalue`` / ``argsort`` on a tensor of ``n`` entries allocate
copies and ``int64`` indices (several times the tensor). Merging a 16 MiB layer
would then cost ~50 MiB of scratch per model. Here the k-th largest value of a
non-negative float tensor is found by counting 16-bit digits of its bit pattern
(non-negative IEEE floats order like their bit patterns as integers), one
``bincount`` per chunk, and masks are built chunk by chunk.

The values can come from a tensor or from a function returning entries
``[start, stop)`` (``Values``): a task vector's magnitudes ``|m - b|`` are then
never materialised at all, and a selection (``RankWindow``) is a handful of
numbers from which each chunk's mask is rebuilt when it is needed. Selecting
the largest magnitudes of a 16 MiB task vector costs chunk-sized temporaries.

Ranks are *descending* with ties broken by flat index (the lower index ranks
first), so every selection is deterministic and independent of chunking.
"""

from __future__ import annotations

from typing import Callable, Iterator, cast

import torch

CHUNK = 1 << 18  # elements per chunk of every chunked pass in the merge kernels (1 MiB of float32:
# small enough that the chunk temporaries stay a few MiB and in cache; large enough that the
# Python loop costs nothing next to the arithmetic)
SMALL = 1 << 16  # tensors up to this size are ranked by a stable sort

_INT = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}

Values = Callable[[int, int], torch.Tensor]  # (start, stop) -> entries [start, stop) (a flat tensor)


def chunks(n: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` over ``range(n)`` in steps of ``CHUNK``."""
    step = CHUNK
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(_INT[x.dtype][0])


def _prep(x: torch.Tensor, absolute: bool) -> torch.Tensor:
    if absolute:
        x = x.abs()
    return x if x.dtype in _INT else x.float()


def _values(a: torch.Tensor | Values, absolute: bool) -> Values:
    if callable(a) and not isinstance(a, torch.Tensor):
        return lambda s, e: _prep(a(s, e), absolute)
    flat = a.reshape(-1)
    return lambda s, e: _prep(flat[s:e], absolute)


def _kth(get: Values, n: int, k: int, vdtype: torch.dtype, device: torch.device) -> tuple[float, int]:
    if not 0 <= k < n:
        raise IndexError(f"rank {k} out of range for {n} entries")
    width = _INT[vdtype][1]
    prefix, shift, target = 0, width, k  # target: rank still to skip inside the current prefix
    mask_hi = 0
    while shift > 0:
        shift -= 16
        counts = torch.zeros(1 << 16, dtype=torch.int64, device=device)
        for s, e in chunks(n):
            b = _bits(get(s, e))
            if mask_hi:
                b = b[(b >> (shift + 16)) == (prefix >> (shift + 16))]
            digit = (b >> shift) & 0xFFFF
            counts += torch.bincount(digit, minlength=1 << 16)
        # walk digits from the top: the first digit whose cumulative count passes target
        desc = counts.flip(0).cumsum(0)
        j = int(torch.searchsorted(desc, torch.tensor(target, device=device), right=True))
        skipped = int(desc[j - 1]) if j > 0 else 0
        top = (1 << 16) - 1 - j  # the digit found
        target -= skipped
        prefix |= top << shift
        mask_hi = 1
    above = k - target
    value = torch.tensor([prefix], dtype=_INT[vdtype][0]).view(vdtype).item()
    return value, above


def _vdtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _INT else torch.float32


def kth_largest(a: torch.Tensor, k: int, *, absolute: bool = False) -> tuple[float, int]:
    """``(v, above)``: the value of rank ``k`` (0-based, descending) of the flat non-negative
    tensor ``a`` (of ``|a|`` with ``absolute``) and the number of entries strictly greater than ``v``."""
    return _kth(_values(a, absolute), a.numel(), k, _vdtype(a.dtype), a.device)


class RankWindow:
    """The entries of descending rank in ``[lo, hi)`` of ``n`` non-negative values, as a
    few numbers (two thresholds and the counts above them) from which ``masks()``
    rebuilds each chunk's boolean mask, given that chunk's values in order.

    ``values``: a tensor, or a ``Values`` function (read once or a few times per radix
    pass, chunk by chunk); ``absolute``: rank ``|values|``. Up to ``SMALL`` entries
    the mask is found by a stable sort and kept (same ranks).
    """

    __slots__ = ("n", "lo", "hi", "stored", "v_lo", "above_lo", "v_hi", "above_hi", "absolute")

    def __init__(self, values: torch.Tensor | Values, n: int, lo: int, hi: int, *, dtype: torch.dtype,
                 device: torch.device, absolute: bool = False) -> None:
        lo, hi = max(0, lo), min(n, hi)
        self.n, self.lo, self.hi, self.absolute = n, lo, hi, absolute
        self.stored: torch.Tensor | None = None
        self.v_lo: float | None = None
        self.v_hi: float | None = None
        self.above_lo = self.above_hi = 0
        if hi <= lo or (lo == 0 and hi == n):
            return
        get = _values(values, absolute)
        if n <= SMALL:  # the same ranks by a stable sort: cheaper than two radix passes on small tensors
            order = get(0, n).sort(descending=True, stable=True).indices
            mask = torch.zeros(n, dtype=torch.bool, device=device)
            mask[order[lo:hi]] = True
            self.stored = mask
            return
        vd = _vdtype(dtype)
        if lo > 0:
            self.v_lo, self.above_lo = _kth(get, n, lo, vd, device)
        self.v_hi, self.above_hi = _kth(get, n, hi - 1, vd, device)

    def masks(self) -> "MaskStream":
        """A fresh stream of chunk masks (call ``next`` on consecutive chunks from entry 0)."""
        return MaskStream(self)


class MaskStream:
    """Chunk masks of a ``RankWindow``, built in flat order (ties by index need the counts so far)."""

    __slots__ = ("w", "seen_lo", "seen_hi", "pos")

    def __init__(self, w: RankWindow) -> None:
        self.w = w
        self.seen_lo = self.seen_hi = 0  # entries equal to v_lo / v_hi met so far (flat order)
        self.pos = 0

    def next(self, values: torch.Tensor, s: int, e: int) -> torch.Tensor:
        """The mask of entries ``[s, e)`` (``s`` must be where the previous chunk stopped) given their values."""
        w = self.w
        if s != self.pos:
            raise RuntimeError(f"internal: mask chunks out of order ({s} after {self.pos})")
        self.pos = e
        if w.stored is not None:
            return w.stored[s:e]
        if w.hi <= w.lo:
            return torch.zeros(e - s, dtype=torch.bool, device=values.device)
        if w.lo == 0 and w.hi == w.n:
            return torch.ones(e - s, dtype=torch.bool, device=values.device)
        x = _prep(values, w.absolute)
        v_hi = cast(float, w.v_hi)  # set whenever stored is None and the window is neither empty nor full
        m = x > v_hi
        eq_hi = x == v_hi
        # among entries equal to v_hi, ranks above_hi, above_hi + 1, ... in index order
        r_hi = w.above_hi + self.seen_hi + eq_hi.cumsum(0) - 1
        m |= eq_hi & (r_hi < w.hi)
        self.seen_hi += int(eq_hi.sum())
        if w.v_lo is not None:
            eq_lo = x == w.v_lo
            r_lo = w.above_lo + self.seen_lo + eq_lo.cumsum(0) - 1
            m &= (x < w.v_lo) | (eq_lo & (r_lo >= w.lo))
            self.seen_lo += int(eq_lo.sum())
        return m


def rank_mask(a: torch.Tensor, lo: int, hi: int, *, absolute: bool = False) -> torch.Tensor:
    """Boolean mask (shape of ``a``) of the entries of descending rank in ``[lo, hi)``
    (ranks of ``|a|`` with ``absolute``; ties by flat index, the lower first)."""
    flat = a.reshape(-1)
    n = flat.numel()
    w = RankWindow(flat, n, lo, hi, dtype=a.dtype, device=a.device, absolute=absolute)
    out = torch.empty(n, dtype=torch.bool, device=a.device)
    stream = w.masks()
    for s, e in chunks(n):
        out[s:e] = stream.next(flat[s:e], s, e)
    return out.view(a.shape)


def ascending_value(a: torch.Tensor, r: int) -> float:
    """The value of ascending rank ``r`` (0-based) of a non-negative tensor."""
    if a.numel() <= SMALL:
        return float(a.reshape(-1).sort().values[r])
    return kth_largest(a.reshape(-1), a.numel() - 1 - r)[0]
