"""What the legacy library refuses, and the copies it hands out (its own suite, test_convert_attar_type.py
and test_config.py, are the rule; DESIGN, "The legacy layer reads no frames").

A parameter never becomes a module or a buffer, and a module never becomes a
buffer: the edit raises as torch would (``TypeError`` / ``KeyError``) and
leaves the particle, its modules and its version exactly as they were. The
other conversions work. Copies of version data hand out the legacy,
writable ``ParamConfig``.
"""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import nytorch as nyto
from nytorch.base import VersionDataImp
from nytorch.kernel import VersionKernel
from nytorch.mtype import ModuleMeta, ParamConfig

from .compat_models import Net


class Holder(nyto.NytoModule):
    def __init__(self):
        super().__init__()
        self.param0 = nn.Parameter(torch.randn(2, 2))
        self.lin = nn.Linear(2, 3)
        self.register_buffer("buffer0", torch.randn(1))
        self.data0 = "user data"


def _state(m):
    return (
        list(m._parameters.items()),
        list(m._modules.items()),
        list(m._buffers.items()),
        m.__dict__.get("data0"),
        m._version_kernel,
    )


REFUSED = [
    ("param_to_module", lambda m: setattr(m, "param0", nn.Linear(2, 3)), TypeError, "as parameter 'param0'"),
    ("param_to_module_by_add_module", lambda m: m.add_module("param0", nn.Linear(2, 3)), TypeError, "as parameter"),
    ("param_to_buffer", lambda m: m.register_buffer("param0", torch.randn(1)), KeyError, "already exists"),
    ("module_to_buffer", lambda m: m.register_buffer("lin", torch.randn(1)), KeyError, "already exists"),
    ("value_to_buffer", lambda m: m.register_buffer("data0", torch.randn(1)), KeyError, "already exists"),
    ("param_to_value", lambda m: setattr(m, "param0", object()), TypeError, "parameter"),
    ("module_to_value", lambda m: setattr(m, "lin", object()), TypeError, "Module"),
    ("buffer_to_value", lambda m: setattr(m, "buffer0", object()), TypeError, "buffer"),
]


@pytest.mark.parametrize("edit,error,match", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_conversions_raise_and_change_nothing(edit, error, match):
    m = Holder()
    other = m.clone()
    version = m._version_kernel
    before = _state(m)
    with pytest.raises(error, match=match):
        edit(m)
    assert _state(m) == before and version.is_newest and m._version_kernel is version
    assert other.touch()._version_kernel is version
    assert torch.equal((m + other).param0, m.param0 + other.param0)  # still a working particle


ALLOWED = [
    ("module_to_param", "lin", lambda: nn.Parameter(torch.randn(2)), "_parameters"),
    ("buffer_to_param", "buffer0", lambda: nn.Parameter(torch.randn(2)), "_parameters"),
    ("buffer_to_module", "buffer0", lambda: nn.Linear(1, 1), "_modules"),
    ("value_to_module", "data0", lambda: nn.Linear(1, 1), "_modules"),
    ("value_to_param", "data0", lambda: nn.Parameter(torch.randn(2)), "_parameters"),
]


@pytest.mark.parametrize("name,make,table", [c[1:] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_the_other_conversions_work_for_every_particle(name, make, table):
    m = Holder()
    other = m.clone()
    value = make()
    setattr(m, name, value)
    assert getattr(m, name) is value and name in getattr(m, table)
    for t in ("_parameters", "_modules", "_buffers"):
        assert (name in getattr(m, t)) == (t == table)
    assert name in getattr(other.touch(), table) and getattr(other, name) is not value


def test_a_stale_particle_is_refused_a_name_another_particle_made_a_parameter():
    m = Holder()
    stale = m.clone()
    m.extra = nn.Parameter(torch.ones(3))
    with pytest.raises(KeyError, match="'extra' already exists"):
        stale.register_buffer("extra", torch.zeros(1))  # caught up first, then refused
    assert stale._version_kernel is m._version_kernel and m._version_kernel.is_newest
    assert isinstance(stale.extra, nn.Parameter) and torch.equal(stale.extra.data, torch.ones(3))
    with pytest.raises(TypeError, match="as parameter 'extra'"):
        stale.extra = nn.Linear(1, 1)


def test_a_buffer_can_be_registered_again():
    m = Holder()
    new = torch.zeros(4)
    m.register_buffer("buffer0", new)
    assert m.buffer0 is new and m.clone().buffer0 is new


def _hand_made_version():
    meta = OrderedDict([(0, ModuleMeta(OrderedDict(), OrderedDict([("p", 0), ("q", 1)])))])
    configs = OrderedDict([(0, ParamConfig(operational=False)), (1, ParamConfig())])
    configs[1].is_weight = True
    return VersionKernel(VersionDataImp(meta, configs)), configs


def test_a_hand_made_version_keeps_the_writable_configs_it_was_given():
    kernel, configs = _hand_made_version()
    assert kernel.data.config is configs and kernel.data.config[0] is configs[0]
    kernel.data.config[0].operational = True
    assert configs[0].operational is True


def test_a_copied_hand_made_version_has_its_own_writable_legacy_configs():
    kernel, configs = _hand_made_version()
    cp = kernel.copy()
    assert cp is not kernel and cp.data is not kernel.data
    for pid in (0, 1):
        cfg = cp.data.config[pid]
        assert type(cfg) is ParamConfig and cfg is not configs[pid] and cfg == configs[pid]
    assert cp.data.config[1].is_weight is True
    cp.data.config[0].operational = True
    cp.data.config[1].clone = False
    assert configs[0].operational is False and configs[1].clone is True  # the original is untouched


def test_a_copied_version_of_a_particle_has_writable_configs_of_its_own():
    net = Net()
    net.set_param_config(operational=False, name="my_param")
    pid = net.get_param_id(net.my_param)
    cp = net._version_kernel.copy()
    cfg = cp.data.config[pid]
    assert isinstance(cfg, ParamConfig) and cfg.operational is False
    cfg.operational = True
    cfg.is_weight = False
    assert cp.data.config[pid].operational is True and cp.data.config[pid].is_weight is False
    assert net._version_kernel.data.config[pid].operational is False  # the source version keeps its own
    assert not hasattr(net._version_kernel.data.config[pid], "is_weight")
    detached = net.detach()
    detached._version_kernel.data.config[pid].operational = True
    assert net._version_kernel.data.config[pid].operational is False
    assert torch.equal((detached * 2).my_param, 2 * net.my_param)


def test_config_copies_are_plain_writable_legacy_configs():
    net = Net()
    bound = net._version_kernel.data.config[0]
    bound.tag = "x"
    copied = bound.copy()
    assert type(copied) is ParamConfig and copied.tag == "x"
    copied.operational = False  # changes the copy only
    assert net._version_kernel.data.config[0].operational is True
