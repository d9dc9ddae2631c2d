"""Exact order statistics in O(chunk) extra memory: radix selection on float bit patterns.

``torch.topk`` / ``kthvalue`` / ``argsort`` on a tensor of ``n`` entries allocate
copies and ``int64`` indices (several times the tensor). Merging a 16 MiB layer
would then cost ~50 MiB of scratch per model. Here the k-th largest value of a
non-negative float tensor is found by counting 16-bit digits of its bit pattern
(non-negative IEEE floats order like their bit patterns as integers), one
``bincount`` per chunk, and masks are built chunk by chunk.

Ranks are *descending* with ties broken by flat index (the lower index ranks
first), so every selection is deterministic and independent of chunking.
"""

from __future__ import annotations

import torch

CHUNK = 1 << 20  # elements per chunk of every chunked pass in the merge kernels
SMALL = 1 << 16  # tensors up to this size are ranked by a stable sort

_INT = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}


def chunks(n: int):
    """``(start, stop)`` over ``range(n)`` in steps of ``CHUNK``."""
    for s in range(0, n, CHUNK):
        yield s, min(n, s + CHUNK)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(_INT[x.dtype][0])


def kth_largest(a: torch.Tensor, k: int) -> tuple[float, int]:
    """``(v, above)``: the value of rank ``k`` (0-based, descending) of the flat non-negative
    tensor ``a`` and the number of entries strictly greater than ``v``."""
    n = a.numel()
    if not 0 <= k < n:
        raise IndexError(f"rank {k} out of range for {n} entries")
    if a.dtype not in _INT:
        a = a.float()
    width = _INT[a.dtype][1]
    prefix, shift, target = 0, width, k  # target: rank still to skip inside the current prefix
    mask_hi = 0
    while shift > 0:
        shift -= 16
        counts = torch.zeros(1 << 16, dtype=torch.int64, device=a.device)
        for s, e in chunks(n):
            b = _bits(a[s:e])
            if mask_hi:
                b = b[(b >> (shift + 16)) == (prefix >> (shift + 16))]
            digit = (b >> shift) & 0xFFFF
            counts += torch.bincount(digit.long(), minlength=1 << 16)
        # walk digits from the top: the first digit whose cumulative count passes target
        desc = counts.flip(0).cumsum(0)
        j = int(torch.searchsorted(desc, torch.tensor(target, device=a.device), right=True))
        skipped = int(desc[j - 1]) if j > 0 else 0
        digit = (1 << 16) - 1 - j
        target -= skipped
        prefix |= digit << shift
        mask_hi = 1
    above = k - target
    value = torch.tensor([prefix], dtype=_INT[a.dtype][0]).view(a.dtype).item()
    return value, above


def rank_mask(a: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Boolean mask (shape of ``a``) of the entries of descending rank in ``[lo, hi)``."""
    flat = a.reshape(-1)
    n = flat.numel()
    lo, hi = max(0, lo), min(n, hi)
    mask = torch.zeros(n, dtype=torch.bool, device=a.device)
    if hi <= lo:
        return mask.view(a.shape)
    if lo == 0 and hi == n:
        return mask.fill_(True).view(a.shape)
    if n <= SMALL:  # the same ranks by a stable sort: cheaper than two radix passes on small tensors
        order = flat.sort(descending=True, stable=True).indices
        mask[order[lo:hi]] = True
        return mask.view(a.shape)
    v_lo, above_lo = kth_largest(flat, lo) if lo > 0 else (None, 0)
    v_hi, above_hi = kth_largest(flat, hi - 1)
    seen_lo = seen_hi = 0  # entries equal to v_lo / v_hi met so far (flat order)
    for s, e in chunks(n):
        x = flat[s:e]
        m = x > v_hi
        eq_hi = x == v_hi
        # among entries equal to v_hi, ranks above_hi, above_hi + 1, ... in index order
        r_hi = above_hi + seen_hi + eq_hi.cumsum(0) - 1
        m |= eq_hi & (r_hi < hi)
        seen_hi += int(eq_hi.sum())
        if v_lo is not None:
            eq_lo = x == v_lo
            r_lo = above_lo + seen_lo + eq_lo.cumsum(0) - 1
            m &= (x < v_lo) | (eq_lo & (r_lo >= lo))
            seen_lo += int(eq_lo.sum())
        mask[s:e] = m
    return mask.view(a.shape)


def ascending_value(a: torch.Tensor, r: int) -> float:
    """The value of ascending rank ``r`` (0-based) of a non-negative tensor."""
    if a.numel() <= SMALL:
        return float(a.reshape(-1).sort().values[r])
    return kth_largest(a.reshape(-1), a.numel() - 1 - r)[0]
