"""The boundary with nn.Module: particle(module), apply, apply_with_buffers, to_module."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nytorch_fn as nf
from nytorch_fn import apply, apply_with_buffers, particle, to_module

from ..helpers import Snapshot, TiedLM, mlp, tensor_equal


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.act = "relu"      # a non-tensor attribute used in forward
        self.pool_size = (1, 1)

    def forward(self, x):
        h = getattr(F, self.act)(self.bn(self.conv(x)))
        return self.head(F.adaptive_avg_pool2d(h, self.pool_size).flatten(1))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.lstm = nn.LSTM(4, 5, num_layers=2, batch_first=True)
        self.out = nn.Linear(5, 2)

    def forward(self, idx):
        h, _ = self.lstm(self.embed(idx))
        return self.out(h[:, -1])


def modules_and_inputs():
    torch.manual_seed(0)
    return [
        ("mlp", mlp(), torch.randn(5, 4)),
        ("conv_bn", ConvNet(), torch.randn(3, 2, 6, 6)),
        ("conv_bn_eval", ConvNet().eval(), torch.randn(3, 2, 6, 6)),
        ("embedding_lstm", Recurrent(), torch.randint(0, 10, (3, 6))),
        ("tied", TiedLM(), torch.tensor([[1, 2, 3], [4, 5, 6]])),
    ]


CASES = modules_and_inputs()
IDS = [c[0] for c in CASES]


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}


def state_equal(a, b):
    return a.keys() == b.keys() and all(tensor_equal(a[k], b[k]) for k in a)


# -- particle(module) --------------------------------------------------------------


@pytest.mark.parametrize("name,module,x", CASES, ids=IDS)
def test_particle_never_modifies_module(name, module, x):
    before = state(module)
    params_before = [(n, p) for n, p in module.named_parameters()]
    training = module.training
    p = particle(module)
    apply(p, x)
    apply_with_buffers(p, None, (x,))
    to_module(p * 2)
    assert state_equal(before, state(module))
    assert [(n, p) for n, p in module.named_parameters()] == params_before  # same objects
    assert module.training == training


def test_copy_true_is_independent_of_later_module_changes():
    net = mlp()
    p = particle(net)
    kept = [t.clone() for t in p.tensors]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    with torch.no_grad():
        net[0].bias.add_(1)
    assert all(tensor_equal(a, b) for a, b in zip(p.tensors, kept))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(p.tensors, net.parameters()))


def test_copy_false_shares_storage():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    p = particle(net, copy=False)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(p.tensors, net.parameters()))
    assert p.species.buffers["1.running_mean"].data_ptr() == net[1].running_mean.data_ptr()
    with torch.no_grad():
        net[0].bias.add_(1)
    assert tensor_equal(p.params["0.bias"], net[0].bias.detach())


def test_particle_tensors_are_detached():
    p = particle(mlp())
    assert all(not t.requires_grad for t in p.tensors)


def test_particle_refuses_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        particle(torch.ones(3))


# -- apply ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,module,x", CASES, ids=IDS)
def test_apply_matches_module_and_never_writes_species_buffers(name, module, x):
    reference = copy.deepcopy(module)
    p = particle(module)
    snap = Snapshot(p, x)
    out = apply(p, x)
    assert torch.allclose(out, reference(x), atol=1e-5)
    out2 = apply(p, x)   # the same again: running stats were not updated in between
    assert torch.equal(out, out2) or not module.training
    assert snap.unchanged()


def test_apply_kwargs():
    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(2.0))

        def forward(self, x, *, shift=0.0):
            return self.w * x + shift

    p = particle(Affine())
    assert torch.equal(apply(p * 3, torch.ones(2), shift=1.0), torch.full((2,), 7.0))


def test_apply_of_arithmetic_matches_module_with_same_arithmetic():
    torch.manual_seed(1)
    m1, m2 = ConvNet(), ConvNet()
    p = particle(m1)
    q = nf.Particle(p.species, {n: t.detach() for n, t in m2.named_parameters()})
    mixed = 0.3 * p + 0.7 * q
    ref = copy.deepcopy(m1)
    with torch.no_grad():
        for (n, a), b in zip(ref.named_parameters(), m2.parameters()):
            a.copy_(0.3 * a + 0.7 * b)
    x = torch.randn(2, 2, 5, 5)
    assert torch.allclose(apply(mixed, x), ref(x), atol=1e-5)


# -- apply_with_buffers ----------------------------------------------------------------


def test_apply_with_buffers_returns_updated_running_stats():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ref = copy.deepcopy(net)
    p = particle(net)
    snap = Snapshot(p)
    x1, x2 = torch.randn(8, 3), torch.randn(8, 3)
    out1, stats = apply_with_buffers(p, None, (x1,))
    given = {k: v.clone() for k, v in stats.items()}
    out2, stats2 = apply_with_buffers(p, stats, (x2,))
    r1, r2 = ref(x1), ref(x2)
    assert torch.allclose(out1, r1, atol=1e-6) and torch.allclose(out2, r2, atol=1e-6)
    for name, buf in ref.named_buffers():
        assert tensor_equal(stats2[name], buf), name
    assert all(tensor_equal(stats[k], given[k]) for k in stats)  # the dict passed in was not modified
    assert snap.unchanged()
    assert tensor_equal(p.species.buffers["1.running_mean"], torch.zeros(4))
    assert int(p.species.buffers["1.num_batches_tracked"]) == 0


def test_apply_with_buffers_training_flag():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    p = particle(net)
    x = torch.randn(8, 3)
    out, stats = apply_with_buffers(p, None, (x,), training=False)
    assert torch.allclose(out, copy.deepcopy(net).eval()(x), atol=1e-6)
    assert tensor_equal(stats["1.running_mean"], torch.zeros(4))
    assert net.training  # the module's mode is untouched
    out, stats = apply_with_buffers(particle(copy.deepcopy(net).eval()), None, (x,), training=True)
    assert int(stats["1.num_batches_tracked"]) == 1


def test_apply_with_buffers_bad_input():
    p = particle(nn.BatchNorm1d(2))
    with pytest.raises(KeyError, match="nope"):
        apply_with_buffers(p, {"nope": torch.zeros(2)}, (torch.randn(4, 2),))
    with pytest.raises(TypeError, match="tuple"):
        apply_with_buffers(p, None, torch.randn(4, 2))


# -- to_module -------------------------------------------------------------------------


@pytest.mark.parametrize("name,module,x", CASES, ids=IDS)
def test_to_module_is_independent_and_trainable(name, module, x):
    p = particle(module) * 1.5
    p.tensors
    snap = Snapshot(p)
    net = to_module(p)
    assert type(net) is type(module)
    assert net.training == module.training
    ptrs = {t.data_ptr() for t in p.tensors}
    assert all(t.data_ptr() not in ptrs for t in net.parameters())
    assert all(isinstance(t, nn.Parameter) and t.requires_grad for t in net.parameters())
    assert torch.allclose(net(x), apply(p, x), atol=1e-5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x).float().pow(2).mean().backward()
    opt.step()
    assert any(not tensor_equal(a.detach(), b) for a, b in zip(net.parameters(), p.tensors))
    assert snap.unchanged()


def test_to_module_reties_tied_weights_and_keeps_attributes():
    p = particle(TiedLM())
    net = to_module(p)
    assert net.out.weight is net.embed.weight
    assert len(list(net.parameters())) == 1
    assert net.scale == 2.0 and net.label == "tied"


def test_to_module_keeps_requires_grad_false():
    net = mlp()
    net[2].weight.requires_grad_(False)
    back = to_module(particle(net) + 1)
    assert back[2].weight.requires_grad is False
    assert back[0].weight.requires_grad is True


def test_to_module_buffers_are_copies():
    p = particle(nn.BatchNorm1d(3), copy=False)
    net = to_module(p)
    assert net.running_mean.data_ptr() != p.species.buffers["running_mean"].data_ptr()
    net(torch.randn(5, 3))
    assert tensor_equal(p.species.buffers["running_mean"], torch.zeros(3))


def test_to_module_refuses_non_particles():
    with pytest.raises(TypeError, match="Particle"):
        to_module(mlp())


# -- dtypes and devices ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_round_trip(dtype):
    net = mlp().to(dtype)
    p = particle(net)
    assert all(t.dtype == dtype for t in p.tensors)
    x = torch.randn(2, 4, dtype=dtype)
    assert torch.allclose(apply(p, x).double(), net(x).double(), atol=1e-2)
    back = to_module(0.5 * p + 0.5 * p)
    assert all(t.dtype == dtype for t in back.parameters())


def test_meta_device():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to("meta")
    p = particle(net)
    assert all(t.device.type == "meta" for t in p.tensors)
    q = 0.5 * p + p.randn()
    assert all(t.device.type == "meta" for t in q.tensors)
    out = apply(q, torch.empty(2, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 4)
    assert next(to_module(q).parameters()).device.type == "meta"


# -- differentiability ------------------------------------------------------------------


def test_grad_through_arithmetic_equals_autograd_on_module():
    torch.manual_seed(0)
    net = mlp()
    p = particle(net)
    q = p.randn(generator=torch.Generator().manual_seed(1))
    x, y = torch.randn(6, 4), torch.randn(6, 3)

    def loss(particle_):
        return F.mse_loss(apply(0.5 * particle_ + 0.5 * q, x), y)

    g = torch.func.grad(loss)(p)
    assert isinstance(g, nf.Particle) and g.species is p.species

    ref = copy.deepcopy(net)
    with torch.no_grad():
        for a, b in zip(ref.parameters(), q.tensors):
            a.copy_(0.5 * a + 0.5 * b)
    F.mse_loss(ref(x), y).backward()
    for (n, param), got in zip(ref.named_parameters(), g.tensors):
        assert torch.allclose(got, 0.5 * param.grad, atol=1e-6), n

    # plain autograd on the particle's tensors gives the same
    leaves = [t.clone().requires_grad_() for t in p.tensors]
    loss(nf.Particle(p.species, dict(zip(p.species.names, leaves)))).backward()
    assert all(torch.allclose(a.grad, b, atol=1e-6) for a, b in zip(leaves, g.tensors))


def test_grad_through_batchnorm_module():
    torch.manual_seed(0)
    net = ConvNet()
    p = particle(net)
    x = torch.randn(4, 2, 5, 5)
    g = torch.func.grad(lambda pp: apply(2.0 * pp - pp, x).pow(2).sum())(p)
    ref = copy.deepcopy(net)
    ref(x).pow(2).sum().backward()
    for (n, param), got in zip(ref.named_parameters(), g.tensors):
        assert torch.allclose(got, param.grad, atol=1e-4), n
