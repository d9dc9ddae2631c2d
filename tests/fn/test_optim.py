"""Functional optimisers: equal to torch.optim step by step, per-member learning rates, bad input."""

from __future__ import annotations

import pytest
import torch

import nytorch_fn as nf
from nytorch_fn import optim
from tests.helpers import Snapshot, mlp

X, Y = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), torch.randn(16, 3, generator=torch.Generator().manual_seed(1))


def _loss(p):
    return (nf.apply(p, X) - Y).pow(2).mean()


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: optim.sgd(0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
        (lambda: optim.sgd(0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
        (
            lambda: optim.sgd(0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.01),
        ),
        (lambda: optim.adam(0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
        (lambda: optim.adam(0.02, b1=0.8, weight_decay=0.1), lambda ps: torch.optim.Adam(ps, lr=0.02, betas=(0.8, 0.999), weight_decay=0.1)),
    ],
)
def test_matches_torch_optim(ours, theirs):
    p = nf.particle(mlp())
    net = nf.to_module(p)
    opt, topt = ours(), theirs(net.parameters())
    state = opt.init(p)
    for _ in range(6):
        g = torch.func.grad(_loss)(p)
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
        topt.zero_grad()
        (net(X) - Y).pow(2).mean().backward()
        topt.step()
    for name, param in net.named_parameters():
        assert torch.allclose(p.params[name], param.detach(), atol=1e-6), name


def test_per_member_learning_rates_on_a_population():
    pop = nf.init_population(mlp(), 3, generator=torch.Generator().manual_seed(0))
    lr = torch.tensor([0.0, 0.1, 0.5])
    opt = optim.sgd(lr)
    grads = torch.func.vmap(torch.func.grad(_loss))(pop)
    snap = Snapshot(pop, grads)
    updates, _ = opt.update(grads, opt.init(pop))
    new = optim.apply_updates(pop, updates)
    assert snap.unchanged()
    for i in range(3):
        expected = pop.params["0.weight"][i] - lr[i] * grads.params["0.weight"][i]
        assert torch.allclose(new.params["0.weight"][i], expected, atol=1e-7)


def test_non_operational_parameters_are_not_updated():
    p = nf.particle(mlp())
    p = nf.migrate(p, p.species.with_config("0", operational=False))
    opt = optim.adam(0.1)
    g = torch.func.grad(_loss)(p)
    updates, _ = opt.update(g, opt.init(p), p)
    new = optim.apply_updates(p, updates)
    assert torch.equal(new.params["0.weight"], p.params["0.weight"])
    assert not torch.equal(new.params["2.weight"], p.params["2.weight"])


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: optim.sgd(-0.1), ValueError),
        (lambda: optim.sgd("0.1"), TypeError),
        (lambda: optim.sgd(0.1, momentum=1.0), ValueError),
        (lambda: optim.sgd(0.1, nesterov=True), ValueError),
        (lambda: optim.adam(0.1, b1=1.5), ValueError),
        (lambda: optim.adam(0.1, eps=-1.0), ValueError),
        (lambda: optim.sgd(torch.tensor([0.1, float("nan")])), ValueError),
    ],
)
def test_bad_hyperparameters_are_refused(make, error):
    with pytest.raises(error):
        make()


def test_update_refuses_non_particles_and_wrong_lr_length():
    opt = optim.sgd(torch.tensor([0.1, 0.2]))
    pop = nf.init_population(mlp(), 3)
    with pytest.raises(TypeError):
        opt.update("grads", opt.init(pop))
    with pytest.raises(nf.PopulationSizeError, match="3"):
        opt.update(pop, opt.init(pop))
