"""Bad input that needs no process group: uneven/too small populations, no group."""

from __future__ import annotations

import pytest
import torch

import nytorch_fn as nf
import nytorch_fn.distributed as nfd
from nytorch_fn import algorithms as alg

from . import _scenarios as sc


def test_block_sizes_policy():
    assert nfd.block_sizes(10, 4) == (3, 3, 2, 2)
    assert nfd.block_sizes(8, 4) == (2, 2, 2, 2)
    assert sum(nfd.block_sizes(1001, 64)) == 1001
    with pytest.raises(nf.PopulationSizeError, match="at least one member per rank"):
        nfd.block_sizes(3, 4)
    with pytest.raises(ValueError, match="population size >= 1"):
        nfd.block_sizes(0, 2)


@pytest.mark.parametrize("call", [
    lambda pop: nfd.world(),
    lambda pop: nfd.shard(pop),
    lambda pop: nfd.from_local(pop),
    lambda pop: nfd.check_species(pop.species),
    lambda pop: nfd.broadcast(pop),
    lambda pop: nfd.check_alive(),
])
def test_collectives_outside_a_process_group_are_refused(call):
    assert not nfd.is_initialized()
    pop = sc.population(sc.template(), 4)
    with pytest.raises(nfd.NotInitializedError, match="expected an initialised torch.distributed process group"):
        call(pop)


def test_fingerprint_sees_structure_not_values():
    tpl = sc.template()
    assert nfd.fingerprint(tpl.species) == nfd.fingerprint(sc.template().species)  # separate captures
    assert nfd.fingerprint(tpl.species) != nfd.fingerprint(tpl.species.with_config("0", operational=False))
    assert nfd.fingerprint(tpl.species) != nfd.fingerprint(tpl.species.remove("scale"))
    assert nfd.fingerprint((tpl * 2).species) == nfd.fingerprint(tpl.species)


def test_sharded_refuses_what_is_not_an_algorithm_and_needs_a_group():
    with pytest.raises(TypeError, match="expected an algorithm of nytorch_fn.algorithms"):
        nfd.sharded(object())
    s = nfd.sharded(alg.APSO(alpha=0.1))
    assert s.alpha == 0.1 and s.State is alg.APSOState and s.kind == "population"
    with pytest.raises(nfd.NotInitializedError, match="expected an initialised torch.distributed process group"):
        s.init(sc.population(sc.template(), 4))


def test_launched_reads_torchrun_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert not nfd.launched()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not nfd.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert nfd.launched()
