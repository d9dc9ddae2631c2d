"""The per-version build plan and the fast module build of particle operations.

A particle operation builds its result's modules from a plan cached on the
version data (which module holds which submodule and parameter ids). The
plan must never serve another module tree, and the modules it builds must be
what the generic path (``copy_modules`` + ``make_modules_ref``) builds.
"""

import copy
import pickle
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from nytorch.base import ParticleDataImp, _BuildPlan
from nytorch.module import NytoModule
from nytorch.mtype import ModuleMeta
from nytorch.utils import copy_modules, make_modules_ref

from .compat_models import Net


class Tree(NytoModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        self.head = Net()
        self.scale = nn.Parameter(torch.rand(2) + 0.5)
        self.none_param = None
        self.register_buffer("stat", torch.zeros(2))
        self.register_buffer("tmp", torch.ones(1), persistent=False)


def _structure(module):
    return (
        [(n, type(m).__name__) for n, m in module.named_modules()],
        [(n, tuple(p.shape)) for n, p in module.named_parameters()],
        [n for n, _ in module.named_buffers()],
    )


def _plan(module):
    return module._version_kernel.data._build_plan()


def test_plan_is_cached_per_version_and_keyed_on_its_tree():
    net = Tree()
    vdata = net._version_kernel.data
    plan = _plan(net)
    assert _plan(net) is plan and plan.meta is vdata._meta
    assert plan.mids == tuple(sorted(vdata.meta))
    _ = 2 * net
    assert _plan(net) is plan  # reused by operations of the same version


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: setattr(m, "extra", nn.Parameter(torch.randn(5))),
        lambda m: setattr(m, "extra_mod", nn.Linear(2, 2)),
        lambda m: delattr(m, "head"),
        lambda m: delattr(m, "scale"),
        lambda m: setattr(m, "head", None),
        lambda m: setattr(m, "scale", None),
        lambda m: setattr(m.head, "my_module", nn.Linear(3, 2)),
    ],
    ids=["add_param", "add_module", "del_module", "del_param", "module_none", "param_none", "replace_module"],
)
def test_an_edit_never_reuses_the_plan_of_another_version(edit):
    net = Tree()
    other = net.clone()
    old_version = net._version_kernel
    old_plan = _plan(net)
    _ = 0.5 * net + 0.5 * other  # the plan of the old version is in use
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edit(net)
    new_version = net._version_kernel
    assert new_version is not old_version
    new_plan = _plan(net)
    assert new_plan is not old_plan and new_plan.meta is new_version.data._meta
    assert _plan(old_version_particle := other) is old_plan  # not caught up yet: still the old tree
    assert old_version_particle._version_kernel is old_version
    # operations catch up first and build the new tree, for both particles
    for result in (2 * net, 2 * other, net + other):
        assert _structure(result) == _structure(net)
    assert _structure(other) == _structure(net)


def test_replacing_the_meta_map_of_a_version_replaces_its_plan():
    net = Tree()
    vdata = net._version_kernel.data
    plan = _plan(net)
    vdata.meta = dict(vdata.meta)  # a new map with the same content
    assert _plan(net) is not plan
    assert _structure(3 * net) == _structure(net)


def test_a_changed_tree_in_the_same_version_data_gets_a_new_plan():
    net = Tree()
    vdata = net._version_kernel.data
    plan = _plan(net)
    root = vdata.meta[0]
    slots = OrderedDict((k, v) for k, v in root.sub_params.items() if k != "scale")
    vdata._set_meta(0, ModuleMeta(OrderedDict(root.sub_modules), slots))
    new_plan = _plan(net)
    assert new_plan is not plan
    assert "scale" not in dict(new_plan.wiring[0][2]) and "scale" in dict(plan.wiring[0][2])


def test_config_changes_do_not_need_a_new_plan_and_are_seen():
    net = Tree()
    plan = _plan(net)
    net.set_param_config(operational=False, clone=False, name="scale")
    assert _plan(net) is plan
    out = 3 * net
    assert out.scale is net.scale
    torch.testing.assert_close(out.head.my_param, 3 * net.head.my_param)


def test_plan_is_not_pickled_or_deep_copied():
    net = Tree()
    vdata = net._version_kernel.data
    _plan(net)
    for clone in (pickle.loads(pickle.dumps(vdata)), copy.deepcopy(vdata)):
        assert getattr(clone, "_plan", None) is None
        assert clone._build_plan().mids == _plan(net).mids
    restored = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close((2 * restored).scale, 2 * net.scale)


def test_fast_build_matches_the_generic_build():
    net = Tree()
    hook_calls = []
    net.head.register_forward_hook(lambda *a: hook_calls.append(1))
    kernel = net._particle_kernel
    vdata = kernel.version.data
    params = kernel.data.params
    fast = kernel.data.create(vdata, params)
    modules = copy_modules(kernel.data._resolved())
    make_modules_ref(modules, params, vdata.meta, set(modules))
    generic = ParticleDataImp(modules, params)
    assert list(fast._modules) == list(generic._modules)
    for mid in generic._modules:
        f, g = fast._modules[mid], generic._modules[mid]
        assert type(f) is type(g)
        assert f.__dict__.keys() == g.__dict__.keys()
        source = kernel.data._module(mid)
        for key, value in g.__dict__.items():
            mine = f.__dict__[key]
            if key == "_modules":  # the same names, wired to the new particle's own modules
                assert type(mine) is type(value) and list(mine) == list(value)
                for name, sub in mine.items():
                    assert sub is fast._modules[vdata._meta[mid].sub_modules[name]]
                    assert value[name] is generic._modules[vdata._meta[mid].sub_modules[name]]
            elif key in ("_parameters", "_buffers", "_non_persistent_buffers_set"):
                assert type(mine) is type(value) and mine == value
                assert mine is not value and mine is not source.__dict__[key]
            else:
                assert mine is value, key
    assert list(fast.params.items()) == list(params.items()) and fast.params is not params


def test_operation_results_are_independent_of_sources_and_each_other():
    net = Tree()
    other = net.randn()
    out = 0.5 * net + 0.5 * other
    expected = {n: p.detach().clone() for n, p in out.named_parameters()}
    with torch.no_grad():
        for p in list(net.parameters()) + list(other.parameters()):
            p.data.add_(100.0)  # .data bumps no version counter
    for n, p in out.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n])
    with torch.no_grad():
        out.scale.mul_(0)
    assert bool((net.scale != 0).all())
    # buffers are shared by reference; the buffer dictionaries and module objects are not
    assert out.stat is net.stat
    out.body[0].register_buffer("local", torch.zeros(1))
    assert "local" not in net.body[0]._buffers
    assert out.body is not net.body and out.body[0] is not net.body[0]
    assert out._non_persistent_buffers_set == {"tmp"}
    assert out._non_persistent_buffers_set is not net._non_persistent_buffers_set


def test_stale_product_module_after_an_edit():
    # the kernel moves on, the product keeps its version: same outcomes as before the fast path
    net = Tree()
    prod = 2 * net.product()
    net.extra = nn.Parameter(torch.randn(4))  # same module ids: built with the product's version
    old = prod.module()
    assert "extra" not in dict(old.named_parameters())
    torch.testing.assert_close(old.scale, 2 * net.scale)
    assert "extra" in dict((2 * old).named_parameters())  # catches up on the next operation
    net = Tree()
    prod = 2 * net.product()
    net.extra = nn.Linear(1, 1)  # a new module id: the generic path and its error
    with pytest.raises(AssertionError, match="modules and metas must hold the same ids"):
        prod.module()


def test_rnn_flat_weights_follow_the_new_parameters():
    class Rnn(NytoModule):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 4)

    net = Rnn()
    out = 2 * net
    x = torch.randn(5, 1, 3)
    ref = nn.LSTM(3, 4)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), out.lstm.parameters()):
            p.copy_(q)
    assert all(a is b for a, b in zip(out.lstm._flat_weights, out.lstm.parameters()))
    torch.testing.assert_close(out.lstm(x)[0], ref(x)[0])


def test_plan_holds_only_the_tree():
    plan = _plan(Tree())
    assert isinstance(plan, _BuildPlan)
    for _, subs, slots in plan.wiring:
        for _, ref in subs + slots:
            assert ref is None or type(ref) is int  # ids only: no module, parameter or value
