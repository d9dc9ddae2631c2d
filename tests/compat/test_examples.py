"""The docstring examples of the legacy API reference, with their observable outcomes."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

import nytorch as nyto
from nytorch.base import NytoModuleBase
from nytorch.kernel import ParticleKernel
from nytorch.module import NytoModule, ParamProduct
from nytorch.mtype import ModuleMeta, ParamConfig
from nytorch.particle_module import GetNytoModule, PMProduct, ParticleModule
from nytorch.utils import make_modules_ref
from nytorch.version_updater import (
    AddModuleVersionUpdater,
    AddParamVersionUpdater,
    DelBufferVersionUpdater,
    DelModuleVersionUpdater,
    DelParamVersionUpdater,
    RegisterBufferVersionUpdater,
    SetModuleNoneVersionUpdater,
    SetParamNoneVersionUpdater,
)

from .compat_models import Net, Vec


class MyNet(NytoModule):
    pass


class Holder(NytoModule):
    def __init__(self, my_tensor):
        super().__init__()
        self.my_param = nn.Parameter(my_tensor)


def test_particle_operations_example():
    new_net = 2 * Vec()
    assert isinstance(new_net.my_param, nn.Parameter)
    assert new_net.my_param.requires_grad
    assert torch.equal(new_net.my_param.data, torch.tensor([0.0, 2.0, 4.0]))


def test_product_example():
    assert isinstance(Vec().product(), ParamProduct)


def test_version_management_example():
    net = Vec()
    new_net = 2 * net
    new_net.my_param2 = nn.Parameter(torch.Tensor([3.0, 4.0]))
    assert not hasattr(net, "my_param2")
    net.touch()
    assert torch.equal(net.my_param2.data, torch.tensor([3.0, 4.0]))
    assert net.my_param2.requires_grad
    assert net.my_param2 is not new_net.my_param2  # the recipient gets its own copy


def test_apply_param_config_example(net):
    def set_operational_false(pid, conf):
        conf.operational = False

    net.apply_param_config(set_operational_false, "my_module")
    config = net._version_kernel.data.config
    ids = {name: net.get_param_id(p) for name, p in net.named_parameters()}
    assert not config[ids["my_module.weight"]].operational
    assert not config[ids["my_module.bias"]].operational
    assert config[ids["my_param"]].operational
    moved = net + 1
    assert torch.equal(moved.my_module.weight, net.my_module.weight)
    assert torch.equal(moved.my_param, net.my_param + 1)


def test_clone_from_example():
    net1, net2 = Net(), Net()
    net3 = net1.clone_from(net2)
    assert net1._version_kernel is not net2._version_kernel
    assert net1._version_kernel is net3._version_kernel
    assert net1.my_param is not net3.my_param
    assert torch.equal(net3.my_param, net2.my_param)


def test_detach_example():
    net1 = Net()
    net2 = net1.detach()
    assert net1._version_kernel is not net2._version_kernel
    assert net1.my_param is net2.my_param


def test_get_param_id_example(net):
    assert net.get_param_id(net.my_param) == 2
    assert net.get_param_id(net.my_module.weight) == 0
    assert net.get_param_id(net.my_module.bias) == 1


def test_set_param_config_example(net):
    net.set_param_config(operational=False, name="my_module")
    config = net._version_kernel.data.config
    assert [config[i].operational for i in (0, 1, 2)] == [False, False, True]
    assert all(config[i].clone for i in (0, 1, 2))


def test_touch_example():
    class Empty(NytoModule):
        def __init__(self):
            super().__init__()

    net1 = Empty()
    net2 = net1.clone()
    net1.my_param = nn.Parameter(torch.randn(2, 2))
    assert not hasattr(net2, "my_param")
    assert net2.touch() is net2
    assert hasattr(net2, "my_param")


def test_register_buffer_example():
    net = MyNet()
    net.register_buffer("running_mean", torch.zeros(4))
    assert torch.equal(net.running_mean, torch.zeros(4))
    assert "running_mean" in net.state_dict()


def test_param_product_binary_operator_example():
    net1 = Holder(torch.Tensor([0.0, 1.0, 2.0]))
    net2 = net1.clone_from(Holder(torch.Tensor([5.0, 4.0, 3.0])))
    fn = lambda param1, param2, conf: nn.Parameter(param1 - param2)  # noqa: E731
    new_net = net1.product().binary_operator(net2.product(), fn).module()
    assert torch.equal(new_net.my_param.data, torch.tensor([-5.0, -3.0, -1.0]))
    assert new_net.my_param.requires_grad


def test_param_product_binary_operator_other_species():
    with pytest.raises(AssertionError):
        Vec().product().binary_operator(Vec().product(), lambda a, b, c: a)


def test_param_product_unary_operator_example():
    new_net = Vec().product().unary_operator(lambda param, conf: nn.Parameter(param + 10.0)).module()
    assert torch.equal(new_net.my_param.data, torch.tensor([10.0, 11.0, 12.0]))
    assert new_net.my_param.requires_grad


def test_pm_product_binary_operator_example():
    net1 = ParticleModule(Holder(torch.Tensor([0.0, 1.0, 2.0])))
    net2 = ParticleModule(Holder(torch.Tensor([5.0, 4.0, 3.0])))
    net2 = net1.clone_from(net2)
    fn = lambda param1, param2, conf: nn.Parameter(param1 - param2)  # noqa: E731
    new_net = net1.product().binary_operator(net2.product(), fn).module()
    assert isinstance(new_net, ParticleModule)
    assert torch.equal(new_net.root_module.my_param.data, torch.tensor([-5.0, -3.0, -1.0]))


def test_pm_product_unary_operator_example():
    net = ParticleModule(Vec())
    new_net = net.product().unary_operator(lambda param, conf: nn.Parameter(param + 10.0)).module()
    assert isinstance(new_net, ParticleModule)
    assert torch.equal(new_net.root_module.my_param.data, torch.tensor([10.0, 11.0, 12.0]))


def test_pm_product_from_param_product():
    product = Vec().product()
    wrapped = PMProduct.from_ParamProduct(product)
    assert wrapped.product is product
    assert isinstance(wrapped.particle(), ParticleModule)


class Embedder(NytoModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 2)


def test_get_nyto_module_example_by_hand():
    model = ParticleModule(Embedder())
    model_clone = model.clone()
    model.restore_kernel_ref()
    model.root_module.data_embed = nn.Embedding(30, 8)
    model.clear_kernel_ref()
    model_clone.restore_kernel_ref()
    model_clone.root_module.touch()
    model_clone.clear_kernel_ref()
    assert isinstance(model_clone.root_module.data_embed, nn.Embedding)
    assert model_clone.root_module.data_embed is not model.root_module.data_embed
    assert torch.equal(model_clone.root_module.data_embed.weight, model.root_module.data_embed.weight)
    assert model.root_module._particle_kernel is None
    assert model_clone.root_module._particle_kernel is None


def test_get_nyto_module_example_context_manager():
    model = ParticleModule(Embedder())
    model_clone = model.clone()
    with GetNytoModule(model) as my_nyto_module:
        assert my_nyto_module is model.root_module
        assert my_nyto_module._particle_kernel is model.particle_kernel
        my_nyto_module.data_embed = nn.Embedding(30, 8)
    with GetNytoModule(model_clone) as my_nyto_module_clone:
        my_nyto_module_clone.touch()
    assert isinstance(model_clone.root_module.data_embed, nn.Embedding)
    assert model.root_module._particle_kernel is None
    assert model_clone.root_module._particle_kernel is None
    # still particles: arithmetic works across the two
    mid = 0.5 * model + 0.5 * model_clone
    assert torch.allclose(mid.root_module.data_embed.weight, model.root_module.data_embed.weight)


def test_make_modules_ref_example():
    class Plain(nn.Module):
        pass

    def new_param(*args):
        return nn.Parameter(torch.randn(*args))

    net0, net1 = Plain(), Plain()
    param0, param1, param2 = new_param(1), new_param(2), new_param(3)
    modules = OrderedDict([(0, net0), (1, net1)])
    params = OrderedDict([(0, param0), (1, param1), (2, param2)])
    metas = OrderedDict(
        [
            (0, ModuleMeta(sub_modules=OrderedDict([("m1", 1)]), sub_params=OrderedDict([("p0", 0)]))),
            (1, ModuleMeta(sub_modules=OrderedDict(), sub_params=OrderedDict([("p1", 1), ("p2", 2)]))),
        ]
    )
    make_modules_ref(modules, params, metas)
    assert net0.m1 is net1
    assert net0.p0 is param0
    assert net1.p1 is param1
    assert net1.p2 is param2


def test_kernel_particle_product_round_trip():
    particle = Vec()
    product = particle.product()
    new_particle = product.particle()
    assert isinstance(new_particle, Vec)
    assert new_particle is not particle
    assert torch.equal(new_particle.my_param, particle.my_param)


# -- updaters called directly, as in their docstring examples -------------------


def test_add_module_version_updater_example():
    net0, net1 = MyNet(), MyNet()
    kernel: ParticleKernel = net0._particle_kernel
    kernel.version_update(AddModuleVersionUpdater(net0._module_id, "attar_net1", net1))
    assert net0.attar_net1 is net1
    assert net1._particle_kernel is net0._particle_kernel
    assert net1._module_id != 0


def test_add_param_version_updater_example():
    net = MyNet()
    add_param = nn.Parameter(torch.randn(3, 3))
    net._particle_kernel.version_update(AddParamVersionUpdater(net._module_id, "attar_add_param", add_param))
    assert net.attar_add_param is add_param


def test_register_buffer_version_updater_example():
    net = MyNet()
    add_tensor = torch.randn(3, 3)
    net._particle_kernel.version_update(RegisterBufferVersionUpdater(net._module_id, "attar_add_tensor", add_tensor))
    assert net.attar_add_tensor is add_tensor


def test_register_buffer_version_updater_with_persistent():
    net = MyNet()
    net._particle_kernel.version_update(RegisterBufferVersionUpdater(net._module_id, "b", torch.ones(2), False))
    assert "b" not in net.state_dict()


def test_del_buffer_version_updater_example():
    net = MyNet()
    net.register_buffer("attar_buffer", torch.randn(3, 3))
    net._particle_kernel.version_update(DelBufferVersionUpdater(net._module_id, "attar_buffer"))
    assert not hasattr(net, "attar_buffer")


def test_del_module_version_updater_example():
    net = MyNet()
    net.attar_moduel = MyNet()
    net._particle_kernel.version_update(DelModuleVersionUpdater(net._module_id, "attar_moduel"))
    assert not hasattr(net, "attar_moduel")


def test_del_param_version_updater_example():
    net = MyNet()
    net.attar_param = nn.Parameter(torch.randn(3, 3))
    net._particle_kernel.version_update(DelParamVersionUpdater(net._module_id, "attar_param"))
    assert not hasattr(net, "attar_param")


def test_del_param_version_updater_unknown_name():
    net = MyNet()
    with pytest.raises(KeyError, match="attar_moduel"):
        net._particle_kernel.version_update(DelParamVersionUpdater(net._module_id, "attar_moduel"))
    assert net._version_kernel.is_newest


def test_set_module_none_version_updater_example():
    net = MyNet()
    net.attar_module = MyNet()
    net._particle_kernel.version_update(SetModuleNoneVersionUpdater(net._module_id, "attar_module"))
    assert net.attar_module is None


def test_set_param_none_version_updater_example():
    net = MyNet()
    net.attar_param = nn.Parameter(torch.randn(3, 3))
    net._particle_kernel.version_update(SetParamNoneVersionUpdater(net._module_id, "attar_param"))
    assert net.attar_param is None
    assert list(net.parameters()) == []


def test_param_config_copy_and_defaults():
    conf = ParamConfig()
    assert (conf.operational, conf.clone) == (True, True)
    conf.is_weight = True
    copy = conf.copy()
    assert copy is not conf and copy.is_weight and copy.operational
    assert repr(copy) == "ParamConfig(operational=True, clone=True, is_weight=True)"


def test_module_meta_copy():
    meta = ModuleMeta(OrderedDict([("m", 1)]), OrderedDict([("p", 0)]))
    copy = meta.copy()
    copy.sub_params["q"] = 3
    assert "q" not in meta.sub_params
    assert copy.sub_modules == meta.sub_modules


def test_top_level_names():
    assert nyto.NytoModule is NytoModule
    assert nyto.ParticleModule is ParticleModule
    assert nyto.GetNytoModule is GetNytoModule
    assert issubclass(NytoModule, NytoModuleBase)
    assert Vec().is_root and not Net().my_module.__class__ is NytoModule


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()
