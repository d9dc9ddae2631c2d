"""Operators whose result only our operators see stay unbuilt, and nothing observable changes.

``0.5 * a + 0.5 * b`` builds one module instead of three (nytorch/_fuse.py
proves from the caller's bytecode that the intermediates cannot be seen).
Every test here compares against the eager evaluation (fusion switched
off), which is the legacy library's: same values bit for bit, same
parameter objects where they are shared, same ``requires_grad``, same
structure, same errors, same type.
"""

import functools
import operator
import subprocess
import sys
import threading
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch as nyto
import nytorch.module as nmod
from nytorch import _fuse

from .compat_models import Mixed


@pytest.fixture
def spawns(monkeypatch):
    """How many modules the operators build; set ``spawns[0] = 0`` to start counting."""
    count = [0]
    original = nmod._spawn

    def counting(*args):
        count[0] += 1
        return original(*args)

    monkeypatch.setattr(nmod, "_spawn", counting)
    return count


@pytest.fixture
def eager(monkeypatch):
    """Call ``eager(fn)`` to run ``fn`` with fusion switched off."""

    def run(fn, *args):
        previous = _fuse.ENABLED
        monkeypatch.setattr(_fuse, "ENABLED", False)
        try:
            return fn(*args)
        finally:
            monkeypatch.setattr(_fuse, "ENABLED", previous)

    return run


# Where fusion is off (another Python version, NYTORCH_FUSE=0) the tests that
# count built modules have nothing to count; the equality tests still run.
requires_fusion = pytest.mark.skipif(not _fuse.ENABLED, reason="fusion is off here (Python version or NYTORCH_FUSE=0)")


def _blend(x, y):
    """``0.5 * x + 0.5 * y`` in a function that fuses: pytest rewrites test functions that
    assert, and the rewritten code names ``locals``, which switches fusion off there."""
    return 0.5 * x + 0.5 * y


def _particles(seed=0):
    torch.manual_seed(seed)
    a = Mixed()
    b, c = a.randn(), a.randn()
    return a, b, c


def _assert_same(fused, eager, sources):
    """Same type, species, structure, bits, requires_grad, and shared parameters shared with the same source."""
    assert type(fused) is type(eager)
    assert fused._version_kernel is eager._version_kernel
    assert fused._module_id == eager._module_id
    fp, ep = dict(fused.named_parameters()), dict(eager.named_parameters())
    assert list(fp) == list(ep)
    for name, p in fp.items():
        q = ep[name]
        assert type(p) is type(q) is nn.Parameter, name
        assert p.dtype == q.dtype and p.requires_grad == q.requires_grad and p.grad_fn is None, name
        torch.testing.assert_close(p.data, q.data, rtol=0, atol=0, equal_nan=True, msg=name)
        for src in sources:
            s = dict(src.named_parameters())[name]
            assert (p is s) == (q is s), name
    assert [n for n, _ in fused.named_modules()] == [n for n, _ in eager.named_modules()]


def test_fusion_is_on_where_tested():
    assert (3, 11) in _fuse._TESTED
    assert _fuse.ENABLED is (sys.version_info[:2] in _fuse._TESTED)


def test_the_environment_switches_fusion_off():
    code = "import nytorch._fuse as f; print(f.ENABLED)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"NYTORCH_FUSE": "0", "PATH": ""}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@requires_fusion
def test_a_blend_builds_one_module_and_equals_the_eager_one(spawns, eager):
    a, b, _ = _particles()
    spawns[0] = 0
    fused = _blend(a, b)
    assert spawns[0] == 1
    reference = eager(lambda: 0.5 * a + 0.5 * b)
    assert spawns[0] == 4
    _assert_same(fused, reference, (a, b))
    assert fused.shared is a.shared and fused.copied is not a.copied and fused.steps is a.steps


@requires_fusion
@pytest.mark.parametrize(
    "source",
    [
        "0.3 * a + 0.6 * b",
        "a + 0.1 * (b - a)",
        "(a + b + c) / 3",
        "2 * a - b * 0.25 + c / 4",
        "0.5 * a * b + 1",
        "a ** 2 + b",
        "1 - 0.5 * a",
        "(1 - 0.3) * a + 0.3 * b",
        "a - b - c",
    ],
)
def test_expressions_equal_their_eager_evaluation(source, spawns, eager):
    a, b, c = _particles(1)
    f = eval(f"lambda a, b, c: {source}")  # noqa: S307 - test expressions
    spawns[0] = 0
    fused = f(a, b, c)
    built = spawns[0]
    reference = eager(f, a, b, c)
    assert built == 1 < spawns[0] - built
    _assert_same(fused, reference, (a, b, c))


@pytest.mark.parametrize(
    "source",
    [
        "(0.5 * a if a is not None else 0.5 * b) + 0.5 * c",  # a jump lands inside the run
        "[0.5 * x + 0.5 * b for x in (a, c)][1]",
        "sum((0.5 * x for x in (a, b)), 0.5 * c)",
        "(0.5 * a + 0.5 * b) + (lambda: 0.25 * c)()",
        "0.5 * a + 0.5 * b if a is b else 0.25 * a + 0.75 * c",
        "-(0.5 * a) + b",
        "+(0.5 * a + b) * 2",
    ],
)
def test_other_shapes_of_code_equal_their_eager_evaluation(source, eager):
    a, b, c = _particles(3)
    f = eval(f"lambda a, b, c: {source}")  # noqa: S307 - test expressions
    _assert_same(f(a, b, c), eager(f, a, b, c), (a, b, c))


@requires_fusion
def test_submodule_particles_fuse_into_the_submodule_of_a_new_particle(spawns, eager):
    a, b, _ = _particles(5)
    x, y = a.inner, b.inner
    spawns[0] = 0
    fused = _blend(x, y)
    assert spawns[0] == 1
    _assert_same(fused, eager(_blend, x, y), (x, y))
    assert fused._particle_kernel is not a._particle_kernel and fused._nyto_pin.inner is fused


def test_in_place_operators_equal_their_eager_evaluation(eager):
    a, b, c = _particles(4)

    def run():
        x = a.clone()
        objects = list(x.parameters())
        x += 0.5 * b
        x -= c * 0.25 - b
        x *= 2
        x /= 0.5 * 4
        x **= 1
        return x, objects

    (fused, kept), (reference, _) = run(), eager(run)
    _assert_same(fused, reference, ())
    assert all(p is q for p, q in zip(fused.parameters(), kept))  # the same parameter objects, as ever


@requires_fusion
def test_a_right_side_consumed_in_place_is_never_built(spawns):
    a, b, _ = _particles(4)
    x = a.clone()

    def run():
        nonlocal x
        x += 0.5 * b
        x -= 0.25 * b + 0.25 * a

    expected = [(p + 0.5 * q - (0.25 * q + 0.25 * r)).detach() for p, q, r in zip(x.parameters(), b.parameters(), a.parameters())]
    spawns[0] = 0
    run()
    assert spawns[0] == 0
    for p, e, name in zip(x.parameters(), expected, [n for n, _ in x.named_parameters()]):
        if name not in ("shared", "copied", "steps"):
            assert torch.equal(p.data, e), name


@requires_fusion
def test_module_level_code_fuses_too(spawns, eager):
    a, b, _ = _particles()
    namespace = {"a": a, "b": b}
    spawns[0] = 0
    exec(compile("r = 0.5 * a + 0.5 * b", "<module>", "exec"), namespace)  # noqa: S102
    assert spawns[0] == 1
    _assert_same(namespace["r"], eager(lambda: 0.5 * a + 0.5 * b), (a, b))


def test_an_intermediate_that_is_kept_is_a_module():
    a, b, _ = _particles()

    def run():
        x = 0.5 * a
        y = x + 0.5 * b
        w = (z := 0.5 * a) + 1
        kept = []
        v = (kept.append(0.5 * a) or 0) + 1  # the product goes to a call: built
        return x, y, z, w, kept[0], v

    x, y, z, w, k, v = run()
    assert all(type(m) is Mixed for m in (x, y, z, w, k)) and v == 1


@pytest.mark.parametrize("fused", [pytest.param(True, marks=requires_fusion), False])
def test_sources_changed_by_foreign_code_inside_the_expression_are_read_before(fused, monkeypatch):
    monkeypatch.setattr(_fuse, "ENABLED", fused)
    a, b, _ = _particles()
    before = a.inner.my_module.weight.detach().clone()

    class Meddler:
        def __mul__(self, other):
            a.inner.my_module.weight.data.add_(100.0)  # in place, through .data: no version counter sees it
            return 0

    def run(m):
        return 0.5 * a + m * 1

    out = run(Meddler())
    assert torch.equal(out.inner.my_module.weight.data, 0.5 * before)
    assert torch.equal(a.inner.my_module.weight.data, before + 100.0)


def test_a_foreign_operand_only_ever_sees_modules():
    a, _, _ = _particles()
    seen = []

    class Probe:
        def __add__(self, other):
            seen.append(type(other))
            return "probe"

        __radd__ = __mul__ = __rmul__ = __sub__ = __rsub__ = __add__

    def run(p):
        return [p + 0.5 * a, p * (a + a), p - 2 * a * 3, p + (a - 1) * 2]

    assert run(Probe()) == ["probe"] * 4
    assert seen and all(t is Mixed for t in seen), seen


def test_explicit_calls_and_c_callers_build_modules(spawns, eager):
    a, b, c = _particles()

    def run():
        return [
            a.__mul__(0.5) + b,
            sum([a, b, c], 0.0),
            functools.reduce(operator.add, [a, b, c]),
            operator.mul(0.5, a) + 0.5 * b,
        ]

    results = run()
    references = eager(run)
    for r, e in zip(results, references):
        _assert_same(r, e, (a, b, c))


def test_species_errors_are_the_eager_ones():
    a, b, _ = _particles()
    stranger = Mixed()
    with pytest.raises(AssertionError, match="different species"):
        _blend(a, stranger)
    with pytest.raises(AssertionError, match="different species"):
        (lambda: 0.5 * stranger + (a - b))()
    with pytest.raises(ZeroDivisionError):
        (lambda: 0.5 * a + 1 / 0 * b)()
    assert type(_blend(a, b)) is Mixed  # nothing left behind by the failures


def test_stale_operands_catch_up_as_eagerly(eager):
    a, b, _ = _particles()
    stale_b, stale_a = b.clone(), a.clone()
    a.extra = nn.Parameter(torch.ones(2))
    fused = _blend(stale_a, stale_b)
    assert torch.equal(fused.extra.data, torch.ones(2))
    reference = eager(lambda: 0.5 * stale_a + 0.5 * stale_b)
    _assert_same(fused, reference, (stale_a, stale_b))


@requires_fusion
def test_a_tracer_switches_fusion_off(spawns):
    a, b, _ = _particles()
    previous = sys.gettrace()
    spawns[0] = 0
    _blend(a, b)
    assert spawns[0] == 1
    sys.settrace(lambda *args: None)
    try:
        _blend(a, b)
    finally:
        sys.settrace(previous)
    assert spawns[0] == 1 + 3


def test_gradients_are_neither_recorded_nor_switched_off():
    a, b, _ = _particles()
    assert torch.is_grad_enabled()
    out = _blend(a, b)
    assert torch.is_grad_enabled()
    assert all(p.grad_fn is None and p.is_leaf for p in out.parameters())
    assert [p.requires_grad for p in out.parameters()] == [p.requires_grad for p in a.parameters()]
    with torch.no_grad():
        _blend(a, b)
        assert not torch.is_grad_enabled()


def test_locals_are_intact_and_not_kept_alive():
    a, b, _ = _particles()

    def body():
        x = a.clone()
        ref = weakref.ref(x)
        x = 0.5 * x + 0.5 * b
        alive = ref() is not None  # the old x: held by nothing (3.11's f_locals snapshot is emptied)
        return alive, x, y

    y = "untouched"
    alive, x, same = body()
    assert not alive
    assert type(x) is Mixed and same == "untouched"


def test_a_function_that_holds_its_locals_dict_keeps_it_as_it_was(spawns):
    a, b, _ = _particles()

    def body(x, y):
        seen = locals()  # the frame's own dict: a peek at the locals would refresh it
        snapshot = dict(seen)
        spawns[0] = 0
        r = 0.5 * x + 0.5 * y
        return seen, snapshot, r

    seen, snapshot, r = body(a, b)
    assert seen == snapshot and seen["x"] is a
    assert spawns[0] == 3  # built eagerly there
    assert type(r) is Mixed


def test_threads_fuse_independently():
    a, b, c = _particles()
    expected = [(k * a + (1 - k) * b + c).inner.my_module.weight.detach().clone() for k in (0.1, 0.2, 0.3, 0.4)]
    out: dict = {}

    def work(i, k):
        for _ in range(30):
            r = k * a + (1 - k) * b + c
        out[i] = r.inner.my_module.weight.detach().clone()

    threads = [threading.Thread(target=work, args=(i, k)) for i, k in enumerate((0.1, 0.2, 0.3, 0.4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert torch.equal(out[i], expected[i])


def test_products_round_as_the_legacy_library():
    a, b, _ = _particles()
    prod = (0.3 * a.product() + 0.6 * b.product()).module()
    by_hand = 0.3 * a.inner.my_module.weight.data + 0.6 * b.inner.my_module.weight.data
    assert torch.equal(prod.inner.my_module.weight.data, by_hand)


# -- random expressions ---------------------------------------------------------------

_NUMBERS = ["0.5", "2", "0.3", "-1", "0.25", "3", "1.5", "-0.7"]
_leaf = st.sampled_from(["a", "b", "c"])
_number = st.sampled_from(_NUMBERS)


def _combine(children):
    def make(x, op, y):
        return f"({x} {op} {y})"

    return st.builds(make, children, st.sampled_from(["+", "-", "*", "/"]), children) | st.builds(
        make, children, st.sampled_from(["*", "/", "+", "-"]), _number
    ) | st.builds(make, _number, st.sampled_from(["*", "+", "-"]), children)


_expression = st.recursive(_leaf, _combine, max_leaves=6)


@settings(max_examples=100, deadline=None)
@given(source=_expression, form=st.sampled_from(["return", "assign", "closure", "products", "in place"]))
def test_random_expressions_equal_their_eager_evaluation(source, form):
    """Fused modules, and products (which fold factors the same way), equal the eager modules bit for bit."""
    a, b, c = _particles(2)
    if form == "products":
        code = (
            "def f(a, b, c):\n    a, b, c = a.product(), b.product(), c.product()\n"
            f"    r = {source}\n    return r if isinstance(r, (int, float)) else r.module()\n"
        )
    elif form == "in place":
        code = f"def f(a, b, c):\n    x = a.clone()\n    x -= {source}\n    return x\n"
    elif form == "return":
        code = f"def f(a, b, c):\n    return {source}\n"
    elif form == "assign":
        code = f"def f(a, b, c):\n    out = {source}\n    keep = [out]\n    return keep[0]\n"
    else:
        code = f"def f(a, b, c):\n    g = lambda: {source}\n    return g()\n"
    namespace: dict = {}
    exec(compile(code, "<expr>", "exec"), namespace)  # noqa: S102
    f = namespace["f"]
    fused = f(a, b, c)
    namespace = {}
    reference_code = code if form == "in place" else f"def f(a, b, c):\n    return {source}\n"
    exec(compile(reference_code, "<expr>", "exec"), namespace)  # noqa: S102
    previous, _fuse.ENABLED = _fuse.ENABLED, False
    try:
        reference = namespace["f"](a, b, c)
    finally:
        _fuse.ENABLED = previous
    if not isinstance(reference, nn.Module):
        assert fused == reference
        return
    _assert_same(fused, reference, (a, b, c))
