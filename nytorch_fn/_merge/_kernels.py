"""Per-tensor merge kernels: the math of every method, on plain tensors.

A kernel merges the inputs of **one** output tensor. It reads them through an
``Inputs`` object (so the out-of-core path can load each model's tensor when
the kernel asks for it and drop it afterwards) and returns a tensor in the
compute dtype (float32, or float64 when an input is float64); the caller
rounds it to the output dtype once. The particle and the file front ends call
the same kernels in the same order, so an in-memory merge and an out-of-core
merge of the same tensors agree bit for bit.

Chunked loops (``_select.chunks``) only run element-wise work, which gives the
same bits whatever the chunking; reductions run over whole tensors.
Randomness comes from ``Inputs.generator()``: one generator per output tensor,
seeded from the merge's seed and the tensor's name (so the draw does not
depend on the order tensors are visited).

Rules where mergekit 0.1.5 and the papers differ (``compat`` is False: ours,
True: mergekit's bits) are documented in each method's public docstring and in
``nytorch_fn.merge``.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence, cast

import torch
from torch.nn import functional as F

from ._select import MaskStream, RankWindow, ascending_value, chunks, rank_mask

Loader = Callable[[], torch.Tensor]


class MergeInputError(ValueError):
    """A merge's inputs cannot be merged as asked (the message names the tensor)."""


Part = Callable[[int, int, int], torch.Tensor]  # (model, start, stop) -> flat entries [start, stop)


class Inputs:
    """The inputs of one output tensor: an optional base and ``k`` other models.

    Kernels read them in three ways:

    - whole tensors (``base``, ``model``, ``writable``, ``delta``): held as long
      as the kernel likes;
    - ``delta(i, transient=True)``: a whole tensor valid only until the next
      transient read (the file path reuses one buffer for all of them: a kernel
      that looks at one model at a time, to choose a mask, holds one tensor);
    - ``part`` / ``delta_part``: entries ``[start, stop)`` of the flattened
      tensor (the file path reads just those bytes), for element-wise passes.

    ``owned``: the loaders return fresh tensors the kernel may overwrite (files);
    otherwise (particles) they alias the caller's tensors and are copied before
    any in-place write. ``parts`` / ``transient``: the file path's chunk and
    scratch readers (default: slices of / the whole tensors from ``models``).
    """

    __slots__ = ("name", "k", "_base", "_models", "_owned", "dtype", "compat", "_seed", "_base_t", "_base_owned",
                 "_base_flat", "_parts", "_transient", "_flat")

    def __init__(
        self,
        name: str,
        base: Loader | None,
        models: Sequence[Loader],
        *,
        owned: bool,
        dtype: torch.dtype,
        compat: bool,
        seed: int | None,
        parts: Part | None = None,
        transient: Callable[[int], torch.Tensor] | None = None,
    ) -> None:
        self.name = name
        self.k = len(models)
        self._base = base
        self._models = models
        self._owned = owned
        self.dtype = dtype
        self.compat = compat
        self._seed = seed
        self._base_t: torch.Tensor | None = None
        self._base_owned = False
        self._base_flat: torch.Tensor | None = None
        self._parts = parts
        self._transient = transient
        self._flat: dict[int, torch.Tensor] = {}

    @property
    def has_base(self) -> bool:
        return self._base is not None

    def _load(self, loader: Loader) -> tuple[torch.Tensor, bool]:
        t = loader()
        if t.dtype != self.dtype:
            return t.to(self.dtype), True
        return t, self._owned

    def base(self) -> torch.Tensor:
        """The base tensor in the compute dtype (read-only; loaded once)."""
        if self._base_t is None:
            self._base_t, self._base_owned = self._load(cast(Loader, self._base))  # has_base: the callers check
        return self._base_t

    def writable_base(self) -> torch.Tensor:
        """The base for in-place use as the result (the last use of the base); contiguous.

        Element-wise passes that write the result chunk by chunk read each chunk of
        ``base`` / ``delta_part`` before writing it (the two may share storage)."""
        b = self.base()
        return b if self._base_owned and b.is_contiguous() else b.clone(memory_format=torch.contiguous_format)

    def _base_entries(self) -> torch.Tensor:
        if self._base_flat is None:
            self._base_flat = self.base().reshape(-1)
        return self._base_flat

    def model(self, i: int) -> torch.Tensor:
        """Model ``i``'s tensor in the compute dtype (read-only)."""
        return self._load(self._models[i])[0]

    def writable(self, i: int) -> torch.Tensor:
        """Model ``i``'s tensor for in-place use (a fresh or owned contiguous tensor)."""
        t, owned = self._load(self._models[i])
        return t if owned and t.is_contiguous() else t.clone(memory_format=torch.contiguous_format)

    def delta(self, i: int, *, transient: bool = False) -> torch.Tensor:
        """``model(i) - base``, a tensor the kernel owns; with ``transient`` valid only
        until the next transient read."""
        read = self._transient if transient else None
        if read is not None:
            t, owned = self._load(lambda: read(i))
        else:
            t, owned = self._load(self._models[i])
        b = self.base()
        return t.sub_(b) if owned else t - b

    def part(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Entries ``[start, stop)`` of model ``i``'s flattened tensor in the compute dtype (read-only)."""
        if self._parts is not None:
            t = self._parts(i, start, stop)
        else:
            flat = self._flat.get(i)
            if flat is None:
                flat = self._flat[i] = self._models[i]().reshape(-1)
            t = flat[start:stop]
        return t if t.dtype == self.dtype else t.to(self.dtype)

    def delta_part(self, i: int, start: int, stop: int) -> torch.Tensor:
        """``part(i, start, stop) - base`` entries, a fresh tensor: the same bits as ``delta(i)``'s entries."""
        return self.part(i, start, stop) - self._base_entries()[start:stop]

    def generator(self, device: torch.device) -> torch.Generator:
        """A generator for this tensor, from the merge's seed and the tensor's name."""
        if self._seed is None:
            raise RuntimeError("internal: a random merge method was run without a seed")
        return tensor_generator(self._seed, self.name, device)


def tensor_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """The generator of tensor ``name`` in a merge seeded ``seed`` (independent of visiting order)."""
    h = zlib.crc32(name.encode("utf-8"))
    g = torch.Generator(device=device)
    g.manual_seed((seed + h * 0x9E3779B97F4A7C15) % (1 << 63))
    return g


def _scalar(x: torch.Tensor) -> float:
    return float(x)


# ---------------------------------------------------------------------------
# averaging
# ---------------------------------------------------------------------------


def linear(ctx: Inputs, *, weight: Sequence[float], normalize: bool) -> torch.Tensor:
    w = list(weight)
    acc = ctx.writable(0)
    if w[0] != 1.0:
        acc.mul_(w[0])
    flat = acc.view(-1)
    for s, e in chunks(flat.numel()):  # acc += x_i * w_i for i = 1, 2, ...: per entry the same bits as whole
        for i in range(1, ctx.k):      # tensors, with chunk-sized temporaries and chunk-sized reads
            flat[s:e] += ctx.part(i, s, e) * w[i]
    if normalize:
        acc /= sum(w)  # after the sum, as mergekit: exact for dyadic weights, one rounding less
    return acc


def passthrough(ctx: Inputs, *, scale: Sequence[float | None]) -> torch.Tensor:
    s = None if scale is None else scale[0]
    t = ctx.writable(0)
    return t if s is None else t.mul_(s)


# ---------------------------------------------------------------------------
# spherical
# ---------------------------------------------------------------------------


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return (1 - t) * a + t * b


def slerp(ctx: Inputs, *, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    a, b = ctx.base(), ctx.model(0)
    if a.numel() == 0:
        return _lerp(a, b, t)
    na = _scalar(torch.linalg.vector_norm(a))
    nb = _scalar(torch.linalg.vector_norm(b))
    if (na <= eps or nb <= eps) and not ctx.compat:
        return _lerp(a, b, t)  # no direction to rotate from or to
    na = na if na > eps else 1.0
    nb = nb if nb > eps else 1.0
    dot = _scalar(torch.dot(a.reshape(-1), b.reshape(-1))) / (na * nb)
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > dot_threshold:
        return _lerp(a, b, t)
    theta = math.acos(dot)
    s = math.sin(theta)
    c0, c1 = math.sin((1 - t) * theta) / s, math.sin(t * theta) / s
    return c0 * a + c1 * b


def _pair(ctx: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    if ctx.has_base:
        return ctx.delta(0), ctx.delta(1)
    return ctx.model(0), ctx.model(1)


def nuslerp(ctx: Inputs, *, weight: Sequence[float], row_wise: bool, flatten: bool, eps: float = 1e-8) -> torch.Tensor:
    w0, w1 = weight
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    v0, v1 = _pair(ctx)
    shape = v0.shape
    if v0.dim() == 0 or flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    n0 = torch.linalg.vector_norm(v0, dim=-1, keepdim=True)
    n1 = torch.linalg.vector_norm(v1, dim=-1, keepdim=True)
    cos = ((v0 / n0.clamp(min=1e-7)) * (v1 / n1.clamp(min=1e-7))).sum(-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    if not ctx.compat:
        colinear = colinear | (n0 < 1e-7) | (n1 < 1e-7)  # a zero vector has no direction: lerp
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin = torch.sin(theta)
    sin = torch.where(colinear, torch.ones_like(sin), sin)
    res = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    res = torch.where(colinear, (1 - t) * v0 + t * v1, res)
    if row_wise and not flatten and res.dim() > 0 and len(shape) > 0:
        res = res.transpose(0, -1)
    res = res.reshape(shape)
    return res + ctx.base() if ctx.has_base else res


def multislerp(ctx: Inputs, *, weight: Sequence[float], normalize: bool, eps: float) -> torch.Tensor:
    k = ctx.k
    if k == 1:
        return ctx.delta(0).add_(ctx.base()) if ctx.has_base else ctx.writable(0)
    rows = [ctx.delta(i) if ctx.has_base else ctx.writable(i) for i in range(k)]
    shape = rows[0].shape
    x = torch.stack([r.reshape(-1) for r in rows])
    del rows
    w = torch.tensor(list(weight), dtype=x.dtype, device=x.device)
    if normalize:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    u = x.div_(norms + eps)  # unit vectors, in place
    mean = w @ u
    mean_norm = _scalar(torch.linalg.vector_norm(mean))
    if mean_norm < eps:
        if k == 2:
            res = (u[0] * (norms[0] + eps)) * w[0] + (u[1] * (norms[1] + eps)) * w[1]
            res = res.reshape(shape)
            return res + ctx.base() if ctx.has_base else res
        raise MergeInputError(
            f"multislerp: {ctx.name!r}: the weighted mean of the unit directions is zero "
            f"(antipodal inputs whose weights cancel); change the weights"
        )
    mean /= mean_norm
    dots = u @ mean
    u.addr_(dots, mean, alpha=-1.0)  # tangent vectors at the mean
    tangent = w @ u
    tn = _scalar(torch.linalg.vector_norm(tangent)) + eps
    res = mean * math.cos(tn) + tangent * (math.sin(tn) / tn)
    res *= _scalar((norms.squeeze(1) * w).sum())
    res = res.reshape(shape)
    return res + ctx.base() if ctx.has_base else res


def karcher(ctx: Inputs, *, weight: Sequence[float] | None, max_iter: int, tol: float) -> torch.Tensor:
    k = ctx.k
    if k == 1:
        return ctx.writable(0)
    alphas = [1.0 / k] * k if weight is None else [x / sum(weight) for x in weight]
    xs = [ctx.model(i) for i in range(k)]
    shape = xs[0].shape
    norms = [_scalar(torch.linalg.vector_norm(x)) for x in xs]
    valid = [i for i in range(k) if norms[i] > tol]
    if not valid:
        return torch.zeros_like(xs[0])
    units = [(xs[i] / norms[i]).reshape(-1) for i in valid]
    del xs
    a_sum = sum(alphas[i] for i in valid)
    al = [alphas[i] / a_sum for i in valid]
    u = torch.zeros_like(units[0])
    for a, ui in zip(al, units):
        u += a * ui
    nu = _scalar(torch.linalg.vector_norm(u))
    u = units[0].clone() if nu < tol else u.div_(nu)
    for _ in range(max_iter):
        tangent = torch.zeros_like(u)
        for a, ui in zip(al, units):
            dot = min(1.0, max(-1.0, _scalar(torch.dot(u, ui))))
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent += (a * theta / math.sin(theta)) * (ui - dot * u)
        nt = _scalar(torch.linalg.vector_norm(tangent))
        if nt < tol:
            break
        u = math.cos(nt) * u + (math.sin(nt) / nt) * tangent
        nu = _scalar(torch.linalg.vector_norm(u))
        if nu > tol:
            u.div_(nu)
    scale = sum(a * n for a, n in zip(alphas, norms))
    return (u * scale).reshape(shape)


# ---------------------------------------------------------------------------
# task vectors: sparsify, then (optionally) TIES' sign consensus
# ---------------------------------------------------------------------------


def _keep_count(density: float, n: int, *, at_least_one: bool) -> int:
    k = int(density * n)
    return max(1, k) if at_least_one and n > 0 else k


class _Tau:
    """How one model's (sparsified, rescaled) task vector is rebuilt entry by entry.

    The merge pass of ``task_vectors`` runs chunk by chunk over all models at once.
    What is kept per model between the passes is small: a ``RankWindow`` (a few
    numbers: a magnitude selection's mask is rebuilt per chunk from the chunk's
    values), a random boolean mask, a scalar rescale, or, for DELLA, whose rescale
    is per entry, the finished vector. The entries are recomputed from
    ``delta_part`` with the same operations in the same order as on whole tensors
    (``(m - b) * mask * (before / after)`` or ``/ density``), so the bits are the same.
    """

    __slots__ = ("dense", "mask", "window", "mul", "div", "_stream")

    def __init__(
        self,
        *,
        dense: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        window: RankWindow | None = None,
        mul: float | None = None,
        div: float | None = None,
    ) -> None:
        self.dense, self.mask, self.window, self.mul, self.div = dense, mask, window, mul, div
        self._stream: MaskStream | None = window.masks() if window is not None else None

    def entries(self, ctx: Inputs, i: int, s: int, e: int) -> torch.Tensor:
        """Entries ``[s, e)`` (called on consecutive chunks from 0), a tensor the caller owns."""
        if self.dense is not None:
            return self.dense[s:e]
        x = ctx.delta_part(i, s, e)
        if self.window is not None:
            x.mul_(cast(MaskStream, self._stream).next(x, s, e))
        elif self.mask is not None:
            x.mul_(self.mask[s:e])
        if self.mul is not None:
            x.mul_(self.mul)
        if self.div is not None:
            x.div_(self.div)
        return x


def _l1_factor(before: float, after: float, eps: float = 1e-7) -> float | None:
    """mergekit's rescale of a masked task vector to the L1 norm it had (None: left as is)."""
    return None if before < eps or after < eps else before / after


def _ranked(ctx: Inputs, i: int, lo: int, hi: int, rescale: bool) -> _Tau:
    """Keep the entries of task vector ``i`` whose magnitude ranks in ``[lo, hi)``."""
    b = ctx.base()
    n = b.numel()
    if not rescale:  # the selection reads chunks of m_i - b: no copy of the task vector
        w = RankWindow(lambda s, e: ctx.delta_part(i, s, e), n, lo, hi, dtype=ctx.dtype, device=b.device,
                       absolute=True)
        return _Tau(window=w)
    d = ctx.delta(i, transient=True).reshape(-1)  # the L1 norms need the whole vector, before and after
    w = RankWindow(d, n, lo, hi, dtype=d.dtype, device=d.device, absolute=True)
    before = _scalar(torch.linalg.vector_norm(d, 1))
    stream = w.masks()
    for s, e in chunks(n):
        d[s:e].mul_(stream.next(d[s:e], s, e))
    after = _scalar(torch.linalg.vector_norm(d, 1))
    return _Tau(window=w, mul=_l1_factor(before, after))


def _magnitude(ctx: Inputs, i: int, density: float, rescale: bool) -> _Tau:
    """TIES' trim: keep the ``density`` fraction of largest magnitudes (at least one entry)."""
    n = ctx.base().numel()
    return _ranked(ctx, i, 0, _keep_count(density, n, at_least_one=True), rescale)


def _outliers(ctx: Inputs, i: int, density: float, gamma: float, rescale: bool) -> _Tau:
    """Model breadcrumbs: drop the ``gamma`` fraction of largest magnitudes and keep the
    next ``density`` fraction (ours: at least one entry; mergekit's: possibly none)."""
    n = ctx.base().numel()
    target = _keep_count(density, n, at_least_one=not ctx.compat)
    top = int(gamma * n)
    bottom = max(0, n - target - top)
    lo = n - bottom - target  # descending ranks [lo, lo + target) are kept
    return _ranked(ctx, i, lo, lo + target, rescale)


def random_keep(shape: Sequence[int], density: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """DARE's flat boolean keep mask: each entry kept with probability ``density`` (drawn on ``g``'s device)."""
    keep = torch.empty(tuple(shape), dtype=torch.bool, device=g.device).bernoulli_(density, generator=g)
    return keep.to(device).reshape(-1)


def _random(ctx: Inputs, i: int, density: float, rescale: bool, g: torch.Generator) -> _Tau:
    """DARE: keep each entry with probability ``density``; rescale by ``1 / density``
    (ours, unbiased) or to the L1 norm it had (mergekit's)."""
    b = ctx.base()
    keep = random_keep(b.shape, density, g, b.device)
    if not rescale:
        return _Tau(mask=keep)
    if ctx.compat:
        d = ctx.delta(i, transient=True).reshape(-1)
        before = _scalar(torch.linalg.vector_norm(d, 1))
        d.mul_(keep)
        return _Tau(mask=keep, mul=_l1_factor(before, _scalar(torch.linalg.vector_norm(d, 1))))
    return _Tau(mask=keep, div=density)


def _della(ctx: Inputs, i: int, density: float, epsilon: float, rescale: bool, g: torch.Generator) -> _Tau:
    """DELLA: keep probabilities rising linearly with the magnitude rank in each row,
    ``density -+ epsilon``; rescale each kept entry by ``1 / p`` (ours) or to the L1 norm (mergekit's)."""
    d = ctx.delta(i)
    compat = ctx.compat
    shape = d.shape
    rows = d.reshape(1, -1) if d.dim() < 2 else d.reshape(shape[0], -1)
    m = rows.shape[1]
    before = _scalar(torch.linalg.vector_norm(d, 1)) if rescale and compat else 0.0
    step = max(1, (1 << 20) // max(1, m))
    for s in range(0, rows.shape[0], step):
        r = rows[s : s + step]
        ranks = r.abs().argsort(dim=1, stable=True).argsort(dim=1).to(r.dtype)  # 0 = smallest
        norm = ranks / (m - 1) if m > 1 else torch.full_like(ranks, 0.5)
        probs = (density - epsilon) + norm * (2 * epsilon)
        keep = torch.rand(probs.shape, generator=g, device=g.device, dtype=probs.dtype).to(r.device) < probs
        r.mul_(keep)
        if rescale and not compat:
            r.div_(probs)  # each kept entry divided by its own keep probability
    if rescale and compat:
        after = _scalar(torch.linalg.vector_norm(d, 1))
        if before >= 1e-7 and after >= 1e-7:
            d.mul_(before / after)
    return _Tau(dense=d.reshape(-1))


def task_vectors(
    ctx: Inputs,
    *,
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    lambda_: float = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    sparsify: str | None = None,
    consensus: bool = False,
) -> torch.Tensor:
    """The generalised task arithmetic of mergekit: sparsify each ``tau_i``, weight it,
    (sign consensus), sum, (normalise), scale by ``lambda_``, add to the base.

    Two passes: the masks, one model at a time (one whole task vector alive), then
    the merge, chunk by chunk over every model (chunk-sized reads and temporaries)."""
    taus = []
    g = None
    for i in range(ctx.k):
        dens = 1.0 if density is None else density[i]
        if sparsify is None or dens >= 1.0:
            taus.append(_Tau())
        elif sparsify == "magnitude":
            taus.append(_magnitude(ctx, i, dens, rescale))
        elif sparsify == "outliers":
            taus.append(_outliers(ctx, i, dens, cast(Sequence[float], gamma)[i], rescale))
        else:
            g = g or ctx.generator(ctx.base().device)
            if sparsify == "random":
                taus.append(_random(ctx, i, dens, rescale, g))
            else:
                taus.append(_della(ctx, i, dens, cast(Sequence[float], epsilon)[i], rescale, g))
    out = ctx.writable_base()
    flat = out.view(-1)
    total = sum(weight)
    for s, e in chunks(flat.numel()):
        ds = []
        for i, tau in enumerate(taus):  # every read of this chunk of the base happens before it is written
            d = tau.entries(ctx, i, s, e)
            if weight[i] != 1.0:
                d.mul_(weight[i])
            ds.append(d)
        if consensus:
            elected = _elect(ds, ctx.compat)
            mixed = torch.zeros_like(ds[0])
            div = torch.zeros_like(ds[0]) if normalize else None
            for i, d in enumerate(ds):
                agree = d.sign() == elected
                mixed += torch.where(agree, d, 0.0)
                if div is not None:  # normalize
                    div += agree * weight[i]
            if div is not None:
                div[div == 0] = 1
                mixed /= div
        else:
            mixed = ds[0].clone()
            for d in ds[1:]:
                mixed += d
            if normalize:
                mixed /= total
        if lambda_ != 1:
            mixed *= lambda_
        flat[s:e] += mixed
    return out


def _elect(ds: Sequence[torch.Tensor], compat: bool) -> torch.Tensor:
    """TIES' elected sign per entry: the sign of the sum of the (weighted) task vectors.
    Ours: an exact tie elects 0 (no task agrees: the base is kept); mergekit elects +."""
    total = ds[0].clone()
    for d in ds[1:]:
        total += d
    if compat:
        return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    return total.sign_()


def sce(ctx: Inputs, *, select_topk: float) -> torch.Tensor:
    taus = [ctx.delta(i).reshape(-1) for i in range(ctx.k)]
    k = ctx.k
    n = taus[0].numel()
    if select_topk < 1:
        var = torch.empty_like(taus[0])
        for s, e in chunks(n):
            var[s:e] = torch.stack([t[s:e] for t in taus]).var(dim=0, unbiased=False)
        keep = int(int(torch.count_nonzero(var)) * select_topk)
        mask = rank_mask(var, 0, keep)
        del var
        for t in taus:
            t.mul_(mask)
    w = [_scalar(torch.linalg.vector_norm(t)) ** 2 / max(1, n) for t in taus]
    total = sum(w)
    w = [1.0 / k] * k if abs(total) < 1e-6 else [x / total for x in w]
    out = ctx.writable_base()
    flat = out.view(-1)
    for s, e in chunks(n):
        ds = [t[s:e] for t in taus]
        elected = _elect(ds, ctx.compat)
        num = torch.zeros_like(ds[0])
        den = torch.zeros_like(ds[0])
        for wi, d in zip(w, ds):
            agree = d.sign() == elected
            num += torch.where(agree, d, 0.0) * wi
            den += agree * wi
        flat[s:e] += num / den.clamp(min=1e-6)
    return out


def ram(ctx: Inputs, *, epsilon: float, r: float | None = None, alpha: float | None = None) -> torch.Tensor:
    """RAM (and RAM+ tensor-local when ``r`` is given)."""
    taus = [ctx.delta(i).reshape(-1) for i in range(ctx.k)]
    active = [t.abs() > epsilon for t in taus]
    count = torch.zeros(taus[0].shape, dtype=torch.int64, device=taus[0].device)
    for a in active:
        count += a
    unique = count == 1
    overlap = count > 1
    scale = [1.0] * ctx.k
    if r is not None:
        for i, a in enumerate(active):
            shared = int((a & overlap).sum())
            uniq = int((a & unique).sum())
            rho = shared / max(uniq, epsilon)
            scale[i] = 1 + r * min(max(rho, 0.0), cast(float, alpha))  # RAM+ gives alpha with r
    share = count.clamp(min=1).to(taus[0].dtype)
    out = ctx.writable_base()
    flat = out.view(-1)
    for i, (t, a) in enumerate(zip(taus, active)):
        z = t * a
        flat += torch.where(unique, z * scale[i], 0.0) + torch.where(overlap, z / share, 0.0)
    return out


# ---------------------------------------------------------------------------
# specialised
# ---------------------------------------------------------------------------


def model_stock(ctx: Inputs, *, filter_wise: bool) -> torch.Tensor:
    w0 = ctx.base()
    shape = w0.shape
    if filter_wise:
        view = (lambda x: x.reshape(1, -1)) if w0.dim() <= 1 else (lambda x: x)
    else:
        view = lambda x: x.reshape(-1)  # noqa: E731
    offsets = [view(ctx.delta(i)) for i in range(ctx.k)]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            prod = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / prod.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(offsets)
    den = 1 + (n - 1) * c
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), (n * c) / torch.where(singular, torch.ones_like(den), den))
    avg = offsets[0].clone()
    for o in offsets[1:]:
        avg += o
    avg /= n  # mean offset: w_avg - w_0
    return (view(w0) + t * avg).reshape(shape)


def nearswap(ctx: Inputs, *, t: float) -> torch.Tensor:
    a, b = ctx.base(), ctx.model(0)
    w = (t / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return w * b + (1 - w) * a


def arcee_fusion(ctx: Inputs) -> torch.Tensor:
    a, b = ctx.base(), ctx.model(0)
    shape = a.shape
    a2, b2 = (a.reshape(1), b.reshape(1)) if a.dim() == 0 else (a, b)
    p = F.softmax(b2, dim=-1) + 1e-8
    q = F.softmax(a2, dim=-1) + 1e-8
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    importance = (b2 - a2).abs() * kl
    flat = importance.reshape(-1)
    n = flat.numel()
    q1, med, q3 = (_quantile(flat, q, n) for q in (0.25, 0.5, 0.75))
    threshold = med + 1.5 * (q3 - q1)
    mask = importance >= threshold
    return (a2 + (b2 - a2) * mask).reshape(shape)


def _quantile(flat: torch.Tensor, q: float, n: int) -> float:
    """Order statistic at ascending position ``floor(q (n - 1))``, exact (no sampling)."""
    r = int(q * (n - 1))
    if bool((flat >= 0).all()):
        return ascending_value(flat, r)
    return float(flat.kthvalue(r + 1).values)
