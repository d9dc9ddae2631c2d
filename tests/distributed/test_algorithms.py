"""A short run of each algorithm, sharded over 2 and 4 gloo ranks, against the
single-process run with the same seed: bit for bit (CPU, deterministic ops)."""

from __future__ import annotations

import pytest
import torch

from . import _scenarios as sc
from ._worker import SIZES

NAMES = ["apso", "ga_uniform", "ga_blend", "ga_elite", "es", "hybrid", "pbt"]


def _eq(xs, ys) -> bool:
    xs, ys = list(xs), list(ys)
    return len(xs) == len(ys) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(xs, ys)
    )


@pytest.mark.parametrize("name", NAMES)
def test_sharded_run_equals_single_process(algos, name):
    ranks = len(algos)
    want = sc.run_single(name, SIZES[ranks])
    for out in algos:
        got = out[name]
        for key, value in want.items():
            if isinstance(value, list):
                assert _eq(got[key], value), (name, key)
            else:
                assert torch.equal(got[key], value), (name, key)


def test_single_process_runs_move_the_population():
    # the comparison above would be vacuous if the algorithms did nothing
    start = sc.population(sc.template(), SIZES[2])
    for name in ("apso", "ga_uniform", "hybrid", "pbt"):
        after = sc.run_single(name, SIZES[2])["pop"]
        assert not _eq(after, start.tensors), name


def test_hybrid_communicates_only_every_k_steps(algos):
    # 6 steps with every=2: 3 blends, each one fitness all_gather + one member broadcast per dtype (2)
    for out in algos:
        assert out["hybrid"]["calls"] == 3 * (1 + 2)
