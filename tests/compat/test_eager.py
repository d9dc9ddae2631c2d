"""Every operator computes its result when it runs and returns a real module (DESIGN, "The legacy
layer reads no frames").

``0.5 * a + 0.5 * b`` runs three operators and builds three modules, as
nytorch 1.1.0 does; each one holds, per parameter, exactly the plain torch
expression (``0.5 * p``, then ``x + y``). Nothing the operators do depends
on who calls them: a debugger, a profile hook, ``locals()`` or a foreign
operand sees ordinary modules and unchanged frames. The expected values
below are computed with plain torch on the tensors, never by the layer.
"""

import pathlib
import re
import sys
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch
import nytorch.module as nmod

from .compat_models import Mixed

OPERATIONAL = ("inner.my_module.weight", "inner.my_module.bias", "inner.my_param", "scale", "wide", "low", "frozen")
NON_OPERATIONAL = {"shared": False, "copied": True, "steps": False}  # name -> clone


def _particles(seed=0):
    torch.manual_seed(seed)
    a = Mixed()
    b, c = a.randn(), a.randn()
    with torch.no_grad():
        for m in (a, b, c):
            for name, p in m.named_parameters():
                if p.is_floating_point() and name not in NON_OPERATIONAL:
                    p.abs_().add_(0.5)  # positive: powers and quotients stay finite
    return a, b, c


def _tensors(*modules):
    return [{n: p.detach().clone() for n, p in m.named_parameters()} for m in modules]


@pytest.fixture
def built(monkeypatch):
    """How many modules the operators have built so far (``built[0]``)."""
    count = [0]
    original = nmod.spawn

    def counting(*args):
        count[0] += 1
        return original(*args)

    monkeypatch.setattr(nmod, "spawn", counting)
    return count


def test_every_operator_of_an_expression_builds_its_module(built):
    a, b, _ = _particles()
    built[0] = 0
    out = 0.5 * a + 0.5 * b
    assert built[0] == 3
    assert type(out) is Mixed and out._version_kernel is a._version_kernel
    (out.product() * 2).module()
    assert built[0] == 4


def test_a_blend_holds_the_plain_torch_expression_bit_for_bit():
    a, b, _ = _particles()
    ta, tb = _tensors(a, b)
    out = 0.5 * a + 0.5 * b
    for name, p in out.named_parameters():
        assert type(p) is nn.Parameter and p.grad_fn is None
        if name in NON_OPERATIONAL:
            continue
        want = 0.5 * ta[name] + 0.5 * tb[name]
        assert p.dtype == want.dtype and torch.equal(p.data, want), name
    assert out.shared is a.shared and out.steps is a.steps  # clone=False: the very objects
    assert out.copied is not a.copied and torch.equal(out.copied.data, ta["copied"])
    assert [p.requires_grad for p in out.parameters()] == [p.requires_grad for p in a.parameters()]


def test_overflow_and_subnormals_are_torchs_own():
    a, b, _ = _particles()
    with torch.no_grad():
        a.scale.copy_(torch.tensor([3e38, 1e-39, -3e38]))
        b.scale.copy_(torch.tensor([3e38, 3e-39, 3e38]))
        a.wide.fill_(1e308)
    out = a + 2 * b
    assert torch.equal(out.scale.data, a.scale.data + 2 * b.scale.data)
    assert float(out.scale.data[0]) == float("inf")  # 2 * 3e38 overflows in float32, as in torch
    mid = 0.5 * a + 0.5 * b
    assert torch.equal(mid.scale.data, 0.5 * a.scale.data + 0.5 * b.scale.data)
    assert float(mid.scale.data[2]) == 0.0  # 0.5 * -3e38 + 0.5 * 3e38: no overflow on the way
    assert torch.equal(mid.wide.data, 0.5 * a.wide.data + 0.5 * b.wide.data)


def test_results_never_change_after_the_operator_returned():
    a, b, _ = _particles()
    ta, tb = _tensors(a, b)
    half = 0.5 * a
    out = half + 0.5 * b
    with torch.no_grad():
        for p in list(a.parameters()) + list(b.parameters()):
            if p.is_floating_point():
                p.add_(100.0)
    assert torch.equal(half.scale.data, 0.5 * ta["scale"])
    assert torch.equal(out.scale.data, 0.5 * ta["scale"] + 0.5 * tb["scale"])


def test_an_operand_changed_between_two_operators_is_read_when_its_operator_runs():
    a, b, _ = _particles()
    ta = _tensors(a)[0]

    class Meddler:
        def __mul__(self, other):
            with torch.no_grad():
                a.scale.add_(100.0)  # after 0.5 * a ran, before + runs
            return 0

        __rmul__ = __mul__

    out = 0.5 * a + Meddler() * 1
    assert torch.equal(out.scale.data, 0.5 * ta["scale"])
    assert torch.equal(a.scale.data, ta["scale"] + 100.0)


def test_a_foreign_operand_only_ever_sees_modules():
    a, _, _ = _particles()
    seen = []

    class Probe:
        def __add__(self, other):
            seen.append(type(other))
            return "probe"

        __radd__ = __mul__ = __rmul__ = __sub__ = __rsub__ = __add__

    assert [Probe() + 0.5 * a, Probe() * (a + a), Probe() - 2 * a * 3] == ["probe"] * 3
    assert seen == [Mixed] * 3


def test_a_profile_hook_sees_modules_and_changes_nothing():
    a, b, _ = _particles()
    reference = 0.5 * a + 0.5 * b
    returned = []

    def hook(frame, event, arg):
        code = frame.f_code
        if event == "return" and frame.f_globals.get("__name__") == "nytorch.module" and code.co_name.startswith("__"):
            returned.append(type(arg))

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        out = 0.5 * a + 0.5 * b
    finally:
        sys.setprofile(previous)
    assert returned == [Mixed] * 3  # 0.5 * a, 0.5 * b, then their sum: each a module
    for p, q in zip(out.parameters(), reference.parameters()):
        assert torch.equal(p.data, q.data)


def test_frames_and_their_locals_are_left_alone():
    a, b, _ = _particles()

    def caller_locals():
        return sys._getframe(1).f_locals

    def body(x, y):
        seen = caller_locals()
        snapshot = dict(seen)
        ref = weakref.ref(x)
        x = 0.5 * x + 0.5 * y
        return seen, snapshot, ref, x

    seen, snapshot, ref, out = body(a, b)
    assert seen == snapshot and seen["x"] is a and seen["y"] is b
    assert ref() is a and type(out) is Mixed


def test_every_intermediate_is_freed_without_gc():
    a, b, _ = _particles()
    refs = []

    class Keep:
        def __mul__(self, other):
            refs.append(weakref.ref(other))
            return other

    out = Keep() * (0.5 * a) + 0.5 * b
    assert refs and refs[0]() is None  # the intermediate 0.5 * a: a real module, freed by refcount
    assert type(out) is Mixed


def test_gradients_are_neither_recorded_nor_switched_off():
    a, b, _ = _particles()
    out = 0.5 * a + 0.5 * b
    assert torch.is_grad_enabled()
    assert all(p.grad_fn is None and p.is_leaf for p in out.parameters())
    with torch.no_grad():
        0.5 * a + 0.5 * b
        assert not torch.is_grad_enabled()


def test_integer_parameters_keep_their_dtype():
    a, _, _ = _particles()
    a.set_param_config(operational=True, name="steps")
    out = a * 0.5 + 1
    assert out.steps.dtype == torch.int64
    assert torch.equal(out.steps.data, (a.steps.data * 0.5).to(torch.int64) + 1)


def test_no_frame_or_bytecode_reading_in_the_legacy_layer():
    source = pathlib.Path(nytorch.__file__).parent
    pattern = re.compile(r"_getframe|f_locals|f_back|settrace|setprofile|import dis\b|currentframe")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(source.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
    assert not (source / "_fuse.py").exists()


# -- random expressions -------------------------------------------------------------

_NUMBERS = ["0.5", "2", "0.3", "-1", "0.25", "3", "1.5", "-0.7"]


def _combine(children):
    def make(x, op, y):
        return f"({x} {op} {y})"

    return (
        st.builds(make, children, st.sampled_from(["+", "-", "*", "/"]), children)
        | st.builds(make, children, st.sampled_from(["*", "/", "+", "-"]), st.sampled_from(_NUMBERS))
        | st.builds(make, st.sampled_from(_NUMBERS), st.sampled_from(["*", "+", "-"]), children)
    )


_expression = st.recursive(st.sampled_from(["a", "b", "c"]), _combine, max_leaves=6).filter(lambda s: "(" in s)


class _Left:
    """Evaluates an expression to the particle whose non-operational parameters the result takes."""

    def __init__(self, name):
        self.name = name

    def _left(self, other):
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _left
    __truediv__ = __rtruediv__ = __pow__ = __rpow__ = _left


@settings(max_examples=60, deadline=None)
@given(source=_expression, products=st.booleans())
def test_random_expressions_hold_the_plain_torch_expression(source, products):
    a, b, c = _particles(2)
    tensors = dict(zip("abc", _tensors(a, b, c)))
    f = eval(f"lambda a, b, c: {source}")  # noqa: S307 - generated from the grammar above
    if products:
        out = f(a.product(), b.product(), c.product())
        out = out if isinstance(out, (int, float)) else out.module()
    else:
        out = f(a, b, c)
    if isinstance(out, (int, float)):
        return
    assert type(out) is Mixed and out._version_kernel is a._version_kernel
    left = f(*(_Left(n) for n in "abc")).name
    sources = dict(zip("abc", (a, b, c)))
    for name, p in out.named_parameters():
        assert type(p) is nn.Parameter and p.grad_fn is None
        if name in NON_OPERATIONAL:
            source_param = dict(sources[left].named_parameters())[name]
            assert (p is source_param) == (not NON_OPERATIONAL[name])
            assert torch.equal(p.data, tensors[left][name])
            continue
        want = f(*(tensors[n][name] for n in "abc"))
        assert p.dtype == want.dtype, name
        torch.testing.assert_close(p.data, want, rtol=0, atol=0, equal_nan=True, msg=name)
