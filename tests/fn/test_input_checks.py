"""Input checks added after the bad-input review: each names what was expected and what came."""

from __future__ import annotations

import pytest
import torch

import nytorch_fn as nf
from nytorch_fn import optim
from tests.helpers import Snapshot, mlp


@pytest.mark.parametrize("call", [lambda s: s.remove(["0.weight"]), lambda s: s.set_none(("0",)), lambda s: s.with_config(["0"], operational=False)])
def test_edit_paths_must_be_strings(call):
    sp = nf.particle(mlp()).species
    with pytest.raises(TypeError, match="dotted path"):
        call(sp)


def test_adding_over_an_existing_module_attribute_names_the_clash():
    sp = nf.particle(mlp()).species
    with pytest.raises(ValueError, match="'half' is already an attribute of Linear"):
        sp.add_param("0.half", torch.ones(1))
    none_bias = sp.set_none("0.bias")
    with pytest.raises(ValueError, match="'bias' is already an attribute"):
        none_bias.add_buffer("0.bias", torch.ones(1))


def test_flags_must_be_bools():
    m = mlp()
    with pytest.raises(TypeError, match="copy expects a bool"):
        nf.particle(m, copy="no")
    pop = nf.init_population(m, 3)
    with pytest.raises(TypeError, match="maximize expects a bool"):
        nf.best(pop, torch.ones(3), maximize="no")
    with pytest.raises(TypeError, match="persistent expects a bool"):
        pop.species.add_buffer("0.stat", torch.ones(1), persistent="no")


def test_custom_operators_must_be_callable():
    p = nf.particle(mlp())
    snap = Snapshot(p)
    with pytest.raises(TypeError, match="callable"):
        p.map(None)
    with pytest.raises(TypeError, match="callable"):
        p.zip_with(p, "add")
    assert snap.unchanged()


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), torch.tensor([0.1, float("inf")])])
def test_learning_rates_must_be_finite(lr):
    with pytest.raises(ValueError):
        optim.sgd(lr)


def test_add_param_keeps_a_frozen_parameters_requires_grad():
    sp = nf.particle(mlp()).species
    frozen = sp.add_param("0.frozen", torch.nn.Parameter(torch.ones(2), requires_grad=False))
    plain = sp.add_param("0.plain", torch.ones(2))
    assert frozen.requires_grad["0.frozen"] is False
    assert plain.requires_grad["0.plain"] is True
    p = nf.migrate(nf.Particle(sp, dict(zip(sp.names, nf.particle(mlp()).tensors))), frozen)
    assert p.species.requires_grad["0.frozen"] is False
    assert nf.to_module(p)[0].frozen.requires_grad is False
