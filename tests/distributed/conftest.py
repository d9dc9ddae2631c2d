"""Distributed runs, each launched once per session and shared by the tests that read it."""

from __future__ import annotations

import pytest

from ._launch import Run, launch

_cache: dict = {}


def run_once(suite: str, ranks: int, tmp_path_factory: pytest.TempPathFactory, **kw) -> Run:
    key = (suite, ranks)
    if key not in _cache:
        _cache[key] = launch(suite, ranks, tmp_path_factory.mktemp(f"{suite}{ranks}"), **kw)
    return _cache[key]


@pytest.fixture(scope="session", params=[2, 4], ids=lambda r: f"{r}ranks")
def main_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The global operations and the algorithm runs, in one launch per world size."""
    return run_once("main", request.param, tmp_path_factory, timeout=120).ok().results


@pytest.fixture()
def ops(main_run: list[dict]) -> list[dict]:
    return [r["ops"] for r in main_run]


@pytest.fixture()
def algos(main_run: list[dict]) -> list[dict]:
    return [r["algos"] for r in main_run]
