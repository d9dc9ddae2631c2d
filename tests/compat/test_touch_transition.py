"""The per-transition plan that ``touch()`` uses to bring particles across one version.

Every particle that catches up across the same pair of versions shares one
``Transition`` (the edits between the two core species, read once), cached
on the particle updater and checked by identity against both species: it
can never serve another pair. What a particle gets is what ``migrate``
gives it.
"""

import copy
import pickle

import torch
from torch import nn

import nytorch_fn as fn
from nytorch import _bridge as br

from .compat_models import Net


def _updater(net):
    return net._version_kernel.particle_updater


def test_one_transition_serves_every_particle_of_a_version():
    base = Net()
    others = [base.clone() for _ in range(4)]
    old = base._version_kernel
    base.extra = nn.Parameter(torch.randn(3))
    upd = old.particle_updater
    for p in others:
        p.touch()
    plan = upd.__dict__["_plan"]
    assert plan.old is upd._from and plan.new is upd._to
    assert upd._transition() is plan


def test_transition_is_rebuilt_for_another_pair_of_species():
    base = Net()
    other = base.clone()
    old = base._version_kernel
    base.extra = nn.Parameter(torch.randn(3))
    upd = old.particle_updater
    plan = upd._transition()
    upd._to = upd._to.with_config(br.pname(0), operational=False)  # another (later) species
    again = upd._transition()
    assert again is not plan and again.new is upd._to and again.old is upd._from
    other.touch()
    assert hasattr(other, "extra")


def test_transition_is_not_pickled_or_copied():
    base = Net()
    base.clone()
    old = base._version_kernel
    base.extra = nn.Parameter(torch.randn(3))
    upd = old.particle_updater
    upd._transition()
    assert "_plan" not in upd.__getstate__()
    assert "_plan" not in copy.deepcopy(upd).__dict__
    assert "_plan" not in pickle.loads(pickle.dumps(upd)).__dict__


def test_recipients_get_own_copies_of_the_value_at_the_edit():
    base = Net()
    others = [base.clone() for _ in range(3)]
    kept = [dict(p.named_parameters()) for p in others]
    added = nn.Parameter(torch.arange(3.0))
    base.extra = added
    with torch.no_grad():
        added.add_(10)  # after the edit: recipients still get the value at the edit
    for p in others:
        p.touch()
    assert base.extra is added
    objs = {id(p.extra) for p in others} | {id(added)}
    assert len(objs) == 4
    for p, before in zip(others, kept):
        assert isinstance(p.extra, nn.Parameter) and p.extra.requires_grad
        assert torch.equal(p.extra, torch.arange(3.0))
        assert p.extra.grad_fn is None
        for name, param in before.items():  # untouched parameters are the same objects
            assert dict(p.named_parameters())[name] is param


def test_requires_grad_of_the_added_parameter_is_kept():
    base = Net()
    other = base.clone()
    base.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    assert other.touch().frozen.requires_grad is False


def test_catching_up_across_several_versions_and_deletions():
    base = Net()
    others = [base.clone() for _ in range(3)]
    base.a = nn.Parameter(torch.ones(2))
    base.b = nn.Parameter(torch.zeros(2))
    del base.a
    base.my_param = None
    base.register_buffer("buf", torch.ones(4))
    for p in others:
        p.touch()
        assert not hasattr(p, "a") and p.my_param is None
        assert torch.equal(p.b, torch.zeros(2)) and p.b is not base.b
        assert p.buf is base.buf  # buffers shared by reference
        assert [n for n, _ in p.named_parameters()] == [n for n, _ in base.named_parameters()]
        assert p.get_param_id(p.b) == base.get_param_id(base.b)
    out = others[0] + others[1]
    assert torch.equal(out.b, torch.zeros(2))


def test_configs_and_user_attributes_survive_the_transition():
    base = Net()
    other = base.clone()

    def mark(pid, conf):
        conf.is_weight = True
        conf.operational = False

    base.apply_param_config(mark, "my_module")
    base.extra = nn.Parameter(torch.ones(2))
    other.touch()
    config = other._version_kernel.data.config
    ids = [other.get_param_id(p) for p in other.my_module.parameters()]
    assert all(config[i].is_weight and not config[i].operational for i in ids)
    out = other + 1
    assert torch.equal(out.my_module.weight, other.my_module.weight)
    assert torch.equal(out.extra, other.extra + 1)


def test_transition_matches_migrate_and_falls_back_on_module_edits():
    base = br.species_from([(0, torch.Size((2, 3)), torch.float32, True), (1, torch.Size((2,)), torch.float32, True)], {})
    added = base.add_param("p2", torch.ones(2)).remove("p1").add_buffer("b0_stat", torch.zeros(1))
    tensors = [torch.randn(2, 3), torch.randn(2)]
    t = br.Transition(base, added)
    assert t.sources is not None
    got = t.advance(tensors)
    want = fn.migrate(br.particle_of(base, tensors), added).tensors
    assert len(got) == len(want) == 2 and got[0] is tensors[0] and t.pids == (0, 2)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    with_module = base.add_module("sub", nn.Linear(1, 1))
    t2 = br.Transition(base, with_module)
    assert t2.sources is None and t2.pids is None  # not a flat edit: migrate replays it
    got = t2.advance(tensors)
    want = fn.migrate(br.particle_of(base, tensors), with_module).tensors
    assert [tuple(x.shape) for x in got] == [tuple(x.shape) for x in want]
