"""Every algorithm in ``nytorch_fn.algorithms.ALGORITHMS``, sharded over 2 and 4 gloo ranks with
``nfd.sharded(algo)``, against the single-process run with the same seed: bit for bit on CPU
where the example says the sums are exact, to float rounding otherwise."""

from __future__ import annotations

import math

import pytest
import torch
import torch.utils._pytree as pytree

from nytorch_fn import algorithms as alg

from . import _scenarios as sc

CASES = sorted(sc.algorithm_cases())


def _split(single_leaf, sharded_leaf, rows, n):
    """The part of a single-process leaf that a rank holds: its rows of a per-member value."""
    if isinstance(single_leaf, torch.Tensor) and isinstance(sharded_leaf, torch.Tensor):
        if single_leaf.shape != sharded_leaf.shape and single_leaf.dim() and single_leaf.shape[0] == n:
            return single_leaf[rows[0]:rows[1]]
    return single_leaf


def _same(x, y, exact: bool) -> bool:
    if isinstance(x, torch.Tensor):
        if not isinstance(y, torch.Tensor) or x.shape != y.shape or x.dtype != y.dtype:
            return False
        if exact or not x.is_floating_point():
            return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0), y.nan_to_num(0)) \
                if x.is_floating_point() else torch.equal(x, y)
        return torch.allclose(x.double(), y.double(), rtol=1e-4, atol=1e-6, equal_nan=True)
    if isinstance(x, float):
        return (math.isnan(x) and math.isnan(y)) or (x == y if exact else math.isclose(x, y, rel_tol=1e-6))
    return x == y


@pytest.mark.parametrize("name", CASES)
def test_sharded_run_equals_single_process(algos, name):
    a, x, objectives, exact = sc.algorithm_cases()[name]
    want = sc.run_case(a, x, objectives)
    n = int(want.asked[0, 0])
    want_leaves, spec = pytree.tree_flatten(want)
    names = [type(want).__name__]
    asked_at = None
    # where the asked probe sits among the leaves (row 0: N and the flag; then one row per member)
    offset = 0
    for field, value in zip(type(want)._fields, want):
        k = len(pytree.tree_flatten(value)[0])
        if field == "asked":
            asked_at = offset
        offset += k
    for out in algos:
        got = out[name]
        rows = got["rows"]
        assert len(got["leaves"]) == len(want_leaves), (name, names)
        for k, (w, g) in enumerate(zip(want_leaves, got["leaves"])):
            if k == asked_at:
                w = torch.cat([w[:1], w[1 + rows[0]:1 + rows[1]]])
            else:
                w = _split(w, g, rows, n)
            assert _same(w, g, exact), (name, k, rows)


def test_every_registered_algorithm_is_checked():
    assert set(alg.ALGORITHMS) <= set(CASES)


def test_single_process_runs_move(algos):
    # the comparison above would be vacuous if the algorithms did nothing
    for name in CASES:
        a, x, objectives, _ = sc.algorithm_cases()[name]
        state = a.init(x, generator=torch.Generator().manual_seed(3))
        after = sc.run_case(a, x, objectives)
        assert after.generation == sc.GENERATIONS
        assert not torch.equal(after.best_fitness, state.best_fitness), name


def test_restart_cases_cross_restarts_with_a_changing_population():
    # the sharded comparison above covers them; here: they really restart, with other sizes
    for name in ("IPOP(restarts)", "BIPOP(restarts)"):
        a, x, objectives, _ = sc.algorithm_cases()[name]
        g = torch.Generator().manual_seed(3)
        state = a.init(x, generator=g)
        sizes = []
        for _ in range(sc.GENERATIONS):
            pop, state = a.ask(state, generator=g)
            sizes.append(len(pop))
            state = a.tell(state, pop, sc.fitness_fn(objectives)(pop), generator=g)
        assert state.restarts >= 2 and max(sizes) > min(sizes) == 6, (name, sizes)
        assert int(state.asked[0, 0]) == state.population_size


def test_communication_is_counted(algos):
    for out in algos:
        for name in CASES:
            assert out[name]["calls"] > 0 and out[name]["wire"] > 0, name
