"""Every global operation on 2 and 4 gloo ranks against the single-process result."""

from __future__ import annotations

import torch

import nytorch_fn as nf
import nytorch_fn.distributed as nfd
from nytorch_fn import algorithms as alg

from . import _scenarios as sc
from ._worker import SIZES


def _full(ranks: int) -> nf.Particle:
    return sc.population(sc.template(), SIZES[ranks])


def _eq(xs, ys) -> bool:
    xs, ys = list(xs), list(ys)
    return len(xs) == len(ys) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(xs, ys)
    )


def _fitness(n: int) -> torch.Tensor:
    f = torch.arange(n, dtype=torch.float32) % 4
    f[1] = float("nan")
    return f


def test_blocks_cover_the_population_in_rank_order(ops):
    ranks = len(ops)
    full = _full(ranks)
    sizes = list(nfd.block_sizes(SIZES[ranks], ranks))
    assert sizes[0] > sizes[-1]  # uneven on purpose
    for r, out in enumerate(ops):
        assert out["sizes"] == sizes
        assert out["offset"] == sum(sizes[:r])
        assert _eq(out["local"], full[out["offset"]:out["offset"] + sizes[r]].tensors)


def test_gather_fitness(ops):
    f = _fitness(SIZES[len(ops)])
    for out in ops:
        assert torch.equal(out["fitness"].isnan(), f.isnan())
        assert torch.equal(out["fitness"].nan_to_num(-1), f.nan_to_num(-1))


def test_best_and_worst_like_single_process(ops):
    full = _full(len(ops))
    f = _fitness(len(full))
    want_best = nf.best(full, f)
    want_worst = nf.best(full, f, maximize=False)
    for out in ops:
        assert out["best_index"] == int(torch.argmax(f.nan_to_num(-1)))
        assert _eq(out["best"], want_best.tensors)
        assert float(out["best_fitness"]) == 3.0
        assert _eq(out["worst"], want_worst.tensors)


def test_global_top_k(ops):
    full = _full(len(ops))
    want = nf.top_k(full, _fitness(len(full)), 3)
    for out in ops:
        assert _eq(out["top3"], want.tensors)


def test_centred_ranks_match_the_es_shaping(ops):
    full = _full(len(ops))
    want = alg.centered_ranks(sc.losses(full), maximize=False)
    got = torch.cat([out["shaped"] for out in ops])
    assert torch.equal(got, want)


def test_fetch_and_take(ops):
    ranks = len(ops)
    full = _full(ranks)
    n = len(full)
    idx = torch.tensor([n - 1, 0, 2, 2, n - 1, 1])
    tidx = torch.randint(0, n, (n + 3,), generator=torch.Generator().manual_seed(5))
    want = full[tidx]
    sizes = nfd.block_sizes(n + 3, ranks)
    for r, out in enumerate(ops):
        assert _eq(out["fetch"], full[idx].tensors)
        assert out["take_sizes"] == list(sizes)
        off = sum(sizes[:r])
        assert _eq(out["take"], want[off:off + sizes[r]].tensors)


def test_all_gather_and_gather(ops):
    full = _full(len(ops))
    for r, out in enumerate(ops):
        assert _eq(out["all_gather"], full.tensors)
        if r == len(ops) - 1:
            assert _eq(out["gather"], full.tensors)
        else:
            assert out["gather"] is None


def test_mean_and_weighted_mean_to_rounding(ops):
    full = _full(len(ops))
    want_mean = nf.mean(full)
    want_w = nf.weighted_mean(full, torch.linspace(0.5, 2.0, len(full)))
    for out in ops:
        for got, want in ((out["mean"], want_mean), (out["weighted_mean"], want_w)):
            assert all(torch.allclose(x, y, rtol=1e-6, atol=1e-7) for x, y in zip(got, want.tensors))


def test_broadcast_and_from_local(ops):
    ranks = len(ops)
    want = (_full(ranks) * 2.0)[0]
    for out in ops:
        assert _eq(out["broadcast"], want.tensors)
        assert out["from_local_sizes"] == list(range(1, ranks + 1))


def test_species_mismatch_refused_on_every_rank(ops):
    for out in ops:
        assert "species" in out["mismatch"] and "rank(s) [1" in out["mismatch"], out["mismatch"]
        assert torch.equal(out["after"].nan_to_num(-1), out["fitness"].nan_to_num(-1))


def test_bytes_of_best_are_counted(ops):
    ranks = len(ops)
    width = 32 * 4 + 2 * 8  # float32 MLP + float64 scale: bytes per member
    m = max(nfd.block_sizes(SIZES[ranks], ranks))
    for r, out in enumerate(ops):
        ops_seen = [op for op, _, _ in out["best_log"]]
        assert ops_seen == ["all_gather(fitness)", "broadcast(member)", "broadcast(member)"]
        payload = sum(p for _, p, _ in out["best_log"])
        wire = sum(w for _, _, w in out["best_log"])
        assert out["best_log"][0][1] == 4 * m
        sizes = nfd.block_sizes(SIZES[ranks], ranks)
        owner = sum(sizes[:r]) <= 3 < sum(sizes[: r + 1])  # the best of the test fitness is member 3
        assert payload == 4 * m + (width if owner else 0)
        assert abs(wire - ((ranks - 1) * 4 * m + width * (ranks - 1) / ranks)) < 1e-9
