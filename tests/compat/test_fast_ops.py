"""The inline operator path of NytoModule matches the generic product path exactly.

``net OP x`` for a Python int/float or a module of the same class runs the
product arithmetic inline (module.NytoModule._fast); everything else, and
subclasses that override ``product``/``touch``/``_operand``, take the
generic ``(net.product() OP x.product()).particle()`` path. Both must give
the same values, parameter objects, ``requires_grad``, structure and errors.
"""

import pytest
import torch
from torch import nn

import nytorch as nyto
from nytorch.kernel import Particle
from nytorch.module import NytoModule

from .compat_models import Mixed, Net


OPS = [
    ("add", lambda m, o: m + o, lambda p, o: p + o),
    ("radd", lambda m, o: o + m, lambda p, o: o + p),
    ("sub", lambda m, o: m - o, lambda p, o: p - o),
    ("rsub", lambda m, o: o - m, lambda p, o: o - p),
    ("mul", lambda m, o: m * o, lambda p, o: p * o),
    ("rmul", lambda m, o: o * m, lambda p, o: o * p),
    ("div", lambda m, o: m / o, lambda p, o: p / o),
    ("rdiv", lambda m, o: o / m, lambda p, o: o / p),
    ("pow", lambda m, o: m**o, lambda p, o: p**o),
    ("rpow", lambda m, o: o**m, lambda p, o: o**p),
]


def _same_result(fast, generic, source):
    assert type(fast) is type(generic)
    assert fast._version_kernel is generic._version_kernel is source._version_kernel
    assert fast._module_id == generic._module_id
    src = dict(source.named_parameters())
    gen = dict(generic.named_parameters())
    assert list(dict(fast.named_parameters())) == list(gen)
    for n, p in fast.named_parameters():
        q = gen[n]
        assert type(p) is type(q) is nn.Parameter
        assert p.requires_grad == q.requires_grad == src[n].requires_grad
        assert p.dtype == q.dtype and p.grad_fn is None
        torch.testing.assert_close(p.data, q.data, equal_nan=True)
        assert (p is src[n]) == (q is src[n]), n  # shared exactly where the generic path shares
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in generic.named_modules()]
    assert [n for n, _ in fast.named_buffers()] == [n for n, _ in generic.named_buffers()]


# reflected operators with a module on the left are the left module's own operator
CASES = [
    pytest.param(name, op, prod_op, operand, id=f"{name}-{label}")
    for name, op, prod_op in OPS
    for operand, label in ((2, "int"), (0.5, "float"), ("module", "module"))
    if not (operand == "module" and name.startswith("r"))
]


@pytest.mark.parametrize("name,op,prod_op,operand", CASES)
def test_inline_path_matches_the_product_path(name, op, prod_op, operand):
    torch.manual_seed(0)
    net = Mixed()
    other = net.randn()
    with torch.no_grad():
        for p in other.parameters():
            if p.is_floating_point():
                p.abs_().add_(0.5)
    if operand == "module":
        fast = op(net, other)
        generic = prod_op(net.product(), other.product()).module()
    else:
        fast = op(net, operand)
        generic = prod_op(net.product(), operand).module()
    _same_result(fast, generic, net)
    assert fast.shared is net.shared and fast.copied is not net.copied and fast.steps is net.steps


def test_inline_path_on_a_submodule_returns_the_submodule_of_a_new_particle():
    net = Mixed()
    out = net.inner * 3
    generic = (net.inner.product() * 3).module()
    _same_result(out, generic, net.inner)
    assert out._particle_kernel is not net._particle_kernel
    assert out._nyto_pin is not None and out._nyto_pin.inner is out


def test_inline_path_with_grad_enabled_records_nothing():
    net = Mixed()
    assert torch.is_grad_enabled()
    out = 2 * net + net
    assert all(p.grad_fn is None and p.is_leaf for p in out.parameters())
    assert torch.is_grad_enabled()


def test_inline_path_errors_are_the_generic_ones():
    a, b = Mixed(), Mixed()
    with pytest.raises(AssertionError, match="different species"):
        a + b
    with pytest.raises(AssertionError, match="different species"):
        (a.product() + b.product())
    stale = a.clone()
    a.added = nn.Parameter(torch.ones(2))
    out = stale + a  # catches up first, as product() does
    assert torch.equal(out.added, 2 * a.added)
    with pytest.raises(AssertionError, match="a particle cannot be combined with a product"):
        a + a.product()


def test_other_operands_take_the_generic_path(monkeypatch):
    calls = []
    original = Particle.__mul__

    def spy(self, other):
        calls.append(type(other).__name__)
        return original(self, other)

    monkeypatch.setattr(Particle, "__mul__", spy)
    net = Mixed()
    for operand in (torch.tensor(2.0), True, net.clone()):
        net * operand
    net * 2.0
    assert calls == ["Tensor", "bool"]


def test_subclass_overriding_product_keeps_its_override():
    seen = []

    class Custom(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def product(self):
            seen.append(self)
            return super().product()

    net = Custom()
    out = 2 * net + net
    assert len(seen) == 3 and torch.equal(out.w, torch.full((2,), 3.0))


INPLACE = [
    ("iadd", lambda m, o: m.__iadd__(o), lambda p, o: p + o),
    ("isub", lambda m, o: m.__isub__(o), lambda p, o: p - o),
    ("imul", lambda m, o: m.__imul__(o), lambda p, o: p * o),
    ("idiv", lambda m, o: m.__itruediv__(o), lambda p, o: p / o),
    ("ipow", lambda m, o: m.__ipow__(o), lambda p, o: p**o),
]


@pytest.mark.parametrize(
    "op,prod_op,operand",
    [
        pytest.param(op, prod_op, operand, id=f"{name}-{label}")
        for name, op, prod_op in INPLACE
        for operand, label in ((2, "int"), (0.5, "float"), ("module", "module"))
    ],
)
def test_inline_in_place_operators_match_the_product_path(op, prod_op, operand):
    torch.manual_seed(1)
    net = Mixed()
    other = net.randn()
    with torch.no_grad():
        for p in list(net.parameters()) + list(other.parameters()):
            if p.is_floating_point():
                p.abs_().add_(0.5)
    fast, generic = net.clone(), net.clone()
    objects = list(fast.parameters())
    old_data = [p.data for p in objects]
    snapshot = [t.clone() for t in old_data]
    fast_ptrs, generic_ptrs = [p.data_ptr() for p in objects], [p.data_ptr() for p in generic.parameters()]
    theirs = other if operand == "module" else operand
    out = op(fast, theirs)
    generic.product_(prod_op(generic.product(), other.product() if operand == "module" else operand))
    assert out is fast
    assert list(fast.parameters()) == objects and all(a is b for a, b in zip(fast.parameters(), objects))
    for p, q in zip(fast.parameters(), generic.parameters()):
        assert p.dtype == q.dtype and p.requires_grad == q.requires_grad and p.grad_fn is None
        torch.testing.assert_close(p.data, q.data, rtol=0, atol=0)
    # as product_: the parameters' data is replaced, tensors taken before keep their values
    assert all(torch.equal(d, s) for d, s in zip(old_data, snapshot))
    # storage replaced exactly where the product path replaces it (not for shared non-operational parameters)
    fast_moved = [p.data_ptr() != q for p, q in zip(fast.parameters(), fast_ptrs)]
    generic_moved = [p.data_ptr() != q for p, q in zip(generic.parameters(), generic_ptrs)]
    assert fast_moved == generic_moved
    names = [n for n, _ in fast.named_parameters()]
    assert not fast_moved[names.index("steps")] and not fast_moved[names.index("shared")]
    assert fast_moved[names.index("scale")]
