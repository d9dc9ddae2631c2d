"""Pytree registration: torch.func and torch.utils._pytree see tensors as leaves."""

import pickle

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from torch import nn

import nytorch_fn as nf
from nytorch_fn import apply, particle

from ..helpers import Snapshot, mlp, tensor_equal, tree_equal


def test_leaves_in_names_order_and_rebuild():
    p = particle(mlp())
    leaves, spec = pytree.tree_flatten(p)
    assert len(leaves) == len(p.species.names)
    assert all(a is b for a, b in zip(leaves, p.tensors))
    back = pytree.tree_unflatten(leaves, spec)
    assert isinstance(back, nf.Particle) and back.species is p.species
    assert tree_equal(back, p)


def test_keys_are_parameter_names():
    p = particle(mlp())
    pairs, _ = pytree.tree_flatten_with_path(p)
    assert [path[-1].key for path, _ in pairs] == list(p.species.names)


def test_tree_map_rebuilds_same_species():
    p = particle(mlp())
    snap = Snapshot(p)
    doubled = pytree.tree_map(lambda t: t * 2, p)
    assert doubled.species is p.species
    assert all(tensor_equal(a, b * 2) for a, b in zip(doubled.tensors, p.tensors))
    nested = pytree.tree_map(lambda t: t + 1, {"a": p, "b": [p, 3]})
    assert nested["a"].species is p.species and nested["b"][0].species is p.species
    assert nested["b"][1] == 4  # a number is a leaf too
    assert snap.unchanged()


def test_tree_map_over_two_particles():
    p = particle(mlp())
    q = p.randn(generator=torch.Generator().manual_seed(0))
    half = 0.5 * q
    s = pytree.tree_map(lambda a, b: a + b, p, half)
    assert all(torch.equal(x, a + 0.5 * b) for x, a, b in zip(s.tensors, p.tensors, q.tensors))


def test_same_species_same_treespec():
    p = particle(mlp())
    q = particle(mlp())
    assert pytree.tree_structure(p) == pytree.tree_structure(p.randn())
    assert pytree.tree_structure(p) != pytree.tree_structure(q)


def test_grad_returns_particle_of_same_species():
    torch.manual_seed(0)
    net = mlp()
    p = particle(net)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    g = torch.func.grad(lambda pp: F.cross_entropy(apply(pp, x), y))(p)
    assert g.species is p.species
    F.cross_entropy(net(x), y).backward()
    assert all(torch.allclose(a, b.grad, atol=1e-6) for a, b in zip(g.tensors, net.parameters()))


def test_grad_wrt_coefficient_and_particle():
    p = particle(mlp())
    q = p.randn(generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 4)

    def loss(c, pp):
        return apply(c * pp + (1 - c) * q, x).sum()

    gc, gp = torch.func.grad(loss, argnums=(0, 1))(torch.tensor(0.3), p)
    # finite difference on the coefficient, plain torch on the mixed module
    eps = 1e-3
    fd = (loss(torch.tensor(0.3 + eps), p) - loss(torch.tensor(0.3 - eps), p)) / (2 * eps)
    assert torch.allclose(gc, fd, atol=1e-2)
    assert gp.species is p.species


def test_vmap_over_stacked_particles():
    torch.manual_seed(0)
    nets = [mlp(seed) for seed in range(4)]
    members = [particle(nets[0])]
    members += [nf.Particle(members[0].species, dict(n.named_parameters())) for n in nets[1:]]
    members = [pytree.tree_map(torch.detach, m) for m in members]
    pop = pytree.tree_map(lambda *ts: torch.stack(ts), *members)
    assert pop.species is members[0].species and pop.tensors[0].shape == (4, 8, 4)
    x = torch.randn(5, 4)
    out = torch.func.vmap(lambda m: apply(m, x))(pop)
    for i, net in enumerate(nets):
        assert torch.allclose(out[i], net(x), atol=1e-6)
    # particle arithmetic inside vmap, and a particle returned from vmap
    scaled = torch.func.vmap(lambda m: 0.5 * m + 0.5 * m.map(lambda t, cfg: t * 3))(pop)
    assert scaled.species is pop.species
    assert all(torch.allclose(a, 2 * b) for a, b in zip(scaled.tensors, pop.tensors))


def test_vmap_of_grad_per_member():
    torch.manual_seed(0)
    base = particle(mlp())
    members = [base.randn(generator=torch.Generator().manual_seed(s)) for s in range(3)]
    pop = pytree.tree_map(lambda *ts: torch.stack(ts), *members)
    x = torch.randn(4, 4)
    grads = torch.func.vmap(torch.func.grad(lambda m: apply(m, x).pow(2).sum()))(pop)
    for i, m in enumerate(members):
        g = torch.func.grad(lambda mm: apply(mm, x).pow(2).sum())(m)
        assert all(torch.allclose(a[i], b, atol=1e-5) for a, b in zip(grads.tensors, g.tensors))


def test_pickle_round_trip():
    p = particle(nn.Linear(2, 2))
    q = pickle.loads(pickle.dumps(p))
    assert q.species.names == p.species.names
    assert all(tensor_equal(a, b) for a, b in zip(q.tensors, p.tensors))
