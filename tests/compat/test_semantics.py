"""Legacy semantics (DESIGN.md): arithmetic, configs, ids, versions, warnings, cycles."""

import gc
import weakref

import pytest
import torch
from torch import nn

import nytorch as nyto
from nytorch.module import NytoModule, ParamProduct
from nytorch.particle_module import GetNytoModule, ParticleModule

from .compat_models import Net, Vec


class Deep(NytoModule):
    def __init__(self):
        super().__init__()
        self.inner = Net()
        self.scale = nn.Parameter(torch.rand(3) + 0.5)
        self.frozen = nn.Parameter(torch.rand(2) + 0.5, requires_grad=False)


def _values(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.fixture
def pair():
    torch.manual_seed(1)
    a = Deep()
    b = a.randn()
    with torch.no_grad():
        for p in b.parameters():
            p.abs_().add_(0.5)
    return a, b


SCALAR_CASES = [
    ("neg", lambda m: -m, lambda t: -t),
    ("pos", lambda m: +m, lambda t: t),
    ("pow", lambda m: m**2, lambda t: t**2),
    ("rpow", lambda m: 2**m, lambda t: 2**t),
    ("add", lambda m: m + 1.5, lambda t: t + 1.5),
    ("radd", lambda m: 1.5 + m, lambda t: 1.5 + t),
    ("sub", lambda m: m - 1.5, lambda t: t - 1.5),
    ("rsub", lambda m: 1.5 - m, lambda t: 1.5 - t),
    ("mul", lambda m: m * 3, lambda t: t * 3),
    ("rmul", lambda m: 3 * m, lambda t: 3 * t),
    ("div", lambda m: m / 4, lambda t: t / 4),
    ("rdiv", lambda m: 4 / m, lambda t: 4 / t),
    ("tensor", lambda m: m * torch.tensor(2.0), lambda t: t * 2.0),
]


@pytest.mark.parametrize("name,op,expected", SCALAR_CASES, ids=[c[0] for c in SCALAR_CASES])
def test_scalar_operations(pair, name, op, expected):
    a, _ = pair
    before = _values(a)
    out = op(a)
    assert type(out) is Deep and out is not a
    assert out._version_kernel is a._version_kernel
    for n, p in out.named_parameters():
        assert isinstance(p, nn.Parameter)
        assert torch.allclose(p.data, expected(before[n])), n
        assert p.grad_fn is None and p.is_leaf
        assert p.requires_grad == dict(a.named_parameters())[n].requires_grad
        assert p is not dict(a.named_parameters())[n]
    for n, p in a.named_parameters():  # the operand is unchanged
        assert torch.equal(p, before[n])


PARTICLE_CASES = [
    ("add", lambda x, y: x + y),
    ("sub", lambda x, y: x - y),
    ("mul", lambda x, y: x * y),
    ("div", lambda x, y: x / y),
    ("pow", lambda x, y: x**y),
]


@pytest.mark.parametrize("name,op", PARTICLE_CASES, ids=[c[0] for c in PARTICLE_CASES])
def test_particle_particle_operations(pair, name, op):
    a, b = pair
    va, vb = _values(a), _values(b)
    out = op(a, b)
    for n, p in out.named_parameters():
        assert torch.allclose(p.data, op(va[n], vb[n]), equal_nan=True), n
        assert p.requires_grad == dict(a.named_parameters())[n].requires_grad


@pytest.mark.parametrize("name,op", PARTICLE_CASES + [("scalar", lambda x, y: x * 2)], ids=lambda c: str(c))
def test_in_place_spellings_keep_module_and_parameter_objects(pair, name, op):
    a, b = pair
    va, vb = _values(a), _values(b)
    params = dict(a.named_parameters())
    target = a
    if name == "add":
        target += b
    elif name == "sub":
        target -= b
    elif name == "mul":
        target *= b
    elif name == "div":
        target /= b
    elif name == "pow":
        target **= b
    else:
        target *= 2
    assert target is a
    for n, p in a.named_parameters():
        assert p is params[n]
        assert torch.allclose(p.data, op(va[n], vb[n]), equal_nan=True)


def test_linear_combination_matches_torch(pair):
    a, b = pair
    va, vb = _values(a), _values(b)
    mid = 0.5 * a + 0.5 * b
    for n, p in mid.named_parameters():
        assert torch.allclose(p.data, 0.5 * va[n] + 0.5 * vb[n])


def test_no_gradient_through_particle_operations(pair):
    a, b = pair
    out = a * 2 + b
    loss = sum((p**2).sum() for p in out.parameters())
    loss.backward()
    assert all(p.grad is None for p in a.parameters())
    assert all(p.grad is not None for p in out.parameters() if p.requires_grad)


def test_other_species_raise_assertion_error():
    with pytest.raises(AssertionError):
        Vec() + Vec()
    with pytest.raises(AssertionError):
        Vec().product() * Vec().product()
    with pytest.raises(AssertionError):
        Vec().product() + Vec()  # a product and a module do not mix


def test_bad_operand_is_rejected():
    with pytest.raises(TypeError):
        Vec() + "text"


def test_random_particles(pair):
    a, _ = pair
    torch.manual_seed(3)
    r = a.randn()
    torch.manual_seed(3)
    r2 = a.randn()
    u = a.rand()
    for (n, p), p2, q in zip(r.named_parameters(), r2.parameters(), u.parameters()):
        assert torch.equal(p, p2)
        assert q.min() >= 0 and q.max() < 1
    assert not torch.equal(r.scale, a.scale)


def test_non_operational_clone_true_copies(pair):
    a, b = pair
    a.set_param_config(operational=False, name="scale")
    out = a * 5 + b
    assert torch.equal(out.scale, a.scale) and out.scale is not a.scale
    assert torch.allclose(out.frozen, a.frozen * 5 + b.frozen)


def test_non_operational_clone_false_shares(pair):
    a, b = pair
    a.set_param_config(operational=False, clone=False, name="inner")
    out = a.randn()
    assert out.inner.my_param is a.inner.my_param
    assert out.inner.my_module.weight is a.inner.my_module.weight
    assert out.scale is not a.scale


def test_config_is_per_species(pair):
    a, b = pair
    b.set_param_config(operational=False, name="scale")  # set through another particle
    out = a + 1
    assert torch.equal(out.scale, a.scale)
    assert not a._version_kernel.data.config[a.get_param_id(a.scale)].operational


def test_user_config_attributes_are_kept_and_shown(pair):
    a, _ = pair

    def mark(pid, conf):
        conf.is_weight = True

    a.apply_param_config(mark, "inner")
    a.extra = nn.Parameter(torch.zeros(1))  # a structural edit does not lose them
    config = a._version_kernel.data.config
    ids = [a.get_param_id(p) for p in a.inner.parameters()]
    assert all(config[i].is_weight for i in ids)
    assert "is_weight=True" in repr(config[ids[0]])
    assert not hasattr(config[a.get_param_id(a.scale)], "is_weight")
    seen = []
    a.product().unary_operator(lambda p, c: seen.append(getattr(c, "is_weight", False)) or p)
    assert sum(seen) == len(ids)


def test_apply_param_config_unknown_name(pair):
    a, _ = pair
    with pytest.raises(ValueError):
        a.apply_param_config(lambda pid, c: None, "nothing")


def test_parameter_ids_registration_order_and_gaps():
    n = Net()
    assert [n.get_param_id(p) for p in (n.my_module.weight, n.my_module.bias, n.my_param)] == [0, 1, 2]
    other = n.clone()
    assert [other.get_param_id(p) for p in (other.my_module.weight, other.my_module.bias, other.my_param)] == [0, 1, 2]
    n.extra = nn.Parameter(torch.zeros(1))
    del n.my_module
    n.more = nn.Parameter(torch.zeros(1))
    assert n.get_param_id(n.extra) == 3 and n.get_param_id(n.more) == 4
    assert list(n._version_kernel.data.config) == [2, 3, 4]
    with pytest.raises(ValueError):
        n.get_param_id(nn.Parameter(torch.zeros(1)))


def test_submodule_operation_returns_submodule_of_new_particle(pair):
    a, _ = pair
    sub = a.inner * 2
    assert type(sub) is Net and sub is not a.inner
    assert sub._module_id == a.inner._module_id
    assert sub._particle_kernel is not a._particle_kernel
    assert torch.equal(sub.my_param, a.inner.my_param * 2)
    sub2 = sub + 1  # still a particle: its root is kept alive
    assert torch.equal(sub2.my_param, a.inner.my_param * 2 + 1)
    with torch.no_grad():
        sub.my_param.add_(5)
    assert not torch.equal(sub2.my_param, sub.my_param)


def test_edit_initiator_holds_objects_recipients_get_copies(pair):
    a, b = pair
    param = nn.Parameter(torch.randn(4), requires_grad=False)
    b.added = param
    lin = nn.Linear(2, 2)
    b.sub = lin
    buf = torch.arange(3.0)
    b.register_buffer("buf", buf)
    assert b.added is param and b.sub is lin and b.buf is buf
    assert not hasattr(a, "added")
    a.touch()
    assert a.added is not param and torch.equal(a.added, param) and not a.added.requires_grad
    assert a.sub is not lin and a.sub.weight is not lin.weight and torch.equal(a.sub.weight, lin.weight)
    assert a.buf is buf
    assert a.get_param_id(a.added) == b.get_param_id(b.added)


def test_deletions_and_none_reach_every_particle(pair):
    a, b = pair
    c = a.clone()
    del b.scale
    b.inner = None
    b.frozen = None
    for m in (a, c):
        m.touch()
        assert not hasattr(m, "scale")
        assert m.inner is None and m.frozen is None
        assert [n for n, _ in m.named_parameters()] == []


def test_stale_particle_edits_catch_up_first(pair):
    a, b = pair
    b.added = nn.Parameter(torch.zeros(2))
    del a.added  # a had not seen it yet: it catches up, then deletes
    b.touch()
    assert not hasattr(a, "added") and not hasattr(b, "added")
    b.other = nn.Parameter(torch.zeros(2))
    a.other = None
    b.touch()
    assert b.other is None


def test_operation_between_versions_catches_up(pair):
    a, b = pair
    b.added = nn.Parameter(torch.ones(2))
    out = a + b
    assert torch.equal(out.added, torch.full((2,), 2.0))


def test_warnings_on_shared_modules():
    a, b = Deep(), Deep()
    with pytest.warns(UserWarning, match="modules from different particles refer to the same module"):
        a.borrowed = b.inner
    with pytest.warns(UserWarning, match="circular references to the root module"):
        a.me = a
    assert a.borrowed is b.inner and a.me is a


def test_detach_and_bare_module_are_independent(pair):
    a, _ = pair
    d = a.detach()
    d.added = nn.Parameter(torch.zeros(1))
    assert not hasattr(a, "added") and a._version_kernel.is_newest
    m = a.product().module()
    assert m.scale is a.scale  # shares the parameter objects, as in the legacy library
    m.more = nn.Parameter(torch.zeros(1))
    assert {n for n, _ in a.named_parameters()} == {n for n, _ in d.named_parameters()} - {"added"}
    a.touch()
    assert a.more is not m.more


def test_product_arithmetic_gives_a_product_of_the_same_version_now(pair):
    a, b = pair
    product = 0.5 * a.product() + 0.5 * b.product()
    assert isinstance(product, ParamProduct)
    assert product.kernel is a._particle_kernel and product.module_id == a._module_id
    assert list(product.params) == list(a._version_kernel.data.config)
    sources = list(a._particle_kernel.data.params.values())  # in id order
    theirs = list(b._particle_kernel.data.params.values())
    expected = [(0.5 * p.detach() + 0.5 * q.detach()) for p, q in zip(sources, theirs)]
    with torch.no_grad():
        for p in a.parameters():
            p.add_(100.0)  # after the operator: the product was computed already
    for got, want, source in zip(product.params.values(), expected, sources):
        assert type(got) is nn.Parameter and got.grad_fn is None and got.requires_grad == source.requires_grad
        assert torch.equal(got.data, want)
    out = product.module()
    assert out._version_kernel is a._version_kernel and out is not a


def test_version_data_is_readable_by_id(pair):
    a, _ = pair
    vdata = a._version_kernel.data
    pdata = a._particle_kernel.data
    assert list(vdata.meta) == sorted(vdata.meta)
    assert vdata.meta[0].sub_modules["inner"] == a.inner._module_id
    assert set(vdata.config) == set(pdata.params)
    assert pdata.modules[0] is a and pdata.modules[a.inner._module_id] is a.inner
    assert all(pdata.params[a.get_param_id(p)] is p for p in a.parameters())


def test_version_chain(pair):
    a, b = pair
    v0 = a._version_kernel
    b.added = nn.Parameter(torch.zeros(1))
    assert not v0.is_newest and v0.next_version is b._version_kernel
    assert v0.particle_updater is not None
    assert b._version_kernel.is_newest
    a.touch()
    assert a._version_kernel is b._version_kernel


def test_failed_edit_rolls_back():
    n = Net()
    with pytest.raises(KeyError):
        n.register_buffer("a.b", torch.zeros(1))
    with pytest.raises(TypeError):
        n.register_parameter("p", torch.zeros(1))
    assert n._version_kernel.is_newest
    assert n + 1 is not None


def test_particle_module_has_no_kernel_references():
    pm = ParticleModule(Deep())
    assert all(getattr(m, "_particle_kernel", None) is None for m in pm.root_module.modules())
    out = pm * 2 + pm
    assert isinstance(out, ParticleModule)
    assert torch.allclose(out.root_module.scale, pm.root_module.scale * 3)
    with pytest.raises(AssertionError):
        pm.root_module.new = nn.Parameter(torch.zeros(1))
    with GetNytoModule(pm) as root:
        root.new = nn.Parameter(torch.zeros(1))
    pm2 = pm.clone()
    pm2 += 1
    assert torch.equal(pm2.root_module.new, torch.ones(1))
    x = torch.randn(2, 3)
    assert torch.equal(pm.root_module.inner.my_module(x), pm.root_module.inner.my_module(x))


def test_particle_module_requires_root():
    with pytest.raises(AssertionError):
        ParticleModule(Deep().inner)


def test_particles_are_freed_without_gc():
    gc.collect()
    gc.disable()
    try:
        net = Deep()
        refs = []
        for _ in range(50):
            net = 0.5 * net + 1
            refs.append(weakref.ref(net))
        assert sum(r() is not None for r in refs) == 1
        first = weakref.ref(net.inner)
        del net
        assert first() is None
    finally:
        gc.enable()


def test_state_dict_and_forward_work():
    class Model(NytoModule):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 3)
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.bn(self.l1(x))

    m = Model()
    out = (m * 2)(torch.randn(5, 4))
    assert out.shape == (5, 3)
    copy = Model()
    copy.load_state_dict(m.state_dict())
    assert torch.equal(copy.l1.weight, m.l1.weight)


def test_whole_module_pickle_round_trip_keeps_a_working_particle():
    import io

    a = Deep()
    b = a.clone()
    a.added = nn.Parameter(torch.ones(2))  # b is one version behind
    buf = io.BytesIO()
    torch.save({"a": a, "b": b}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    a2, b2 = loaded["a"], loaded["b"]
    assert a2._version_kernel is not a._version_kernel
    b2.touch()
    assert torch.equal(b2.added, torch.ones(2)) and b2.added is not a2.added
    out = a2 * 2 + b2
    assert torch.allclose(out.scale, a.scale * 2 + b.scale)
    a2.more = nn.Parameter(torch.zeros(1))
    assert hasattr(b2.touch(), "more") and not hasattr(b, "more")
