"""Particle: an immutable pytree of tensors, its arithmetic and custom operators."""

import operator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch_fn as nf
from nytorch_fn import Particle, ParamConfig, particle

from ..helpers import Snapshot, allclose, mlp, tensor_equal, tree_equal

SETTINGS = settings(max_examples=25, deadline=None)


def base(seed=0):
    return particle(mlp(seed))


def pair(seed=0):
    p = base(seed)
    g = torch.Generator().manual_seed(seed + 100)
    return p, p.randn(generator=g)


def expect(p, fn):
    """Plain torch: ``fn`` on every tensor of ``p``."""
    return [fn(t) for t in p.tensors]


def expect2(p, q, fn):
    return [fn(x, y) for x, y in zip(p.tensors, q.tensors)]


def close(particle_, tensors, **kw):
    return len(particle_.tensors) == len(tensors) and all(
        a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, equal_nan=True, **kw)
        for a, b in zip(particle_.tensors, tensors)
    )


# -- construction and reading ------------------------------------------------------


def test_params_is_read_only_mapping_in_names_order():
    net = mlp()
    p = particle(net)
    assert list(p.params) == [n for n, _ in net.named_parameters()]
    assert len(p.params) == 4
    for n, t in net.named_parameters():
        assert tensor_equal(p.params[n], t.detach())
    with pytest.raises(TypeError):
        p.params["0.weight"] = torch.zeros(8, 4)  # type: ignore[index]
    with pytest.raises(KeyError, match="nope"):
        p.params["nope"]


def test_particle_is_immutable():
    p = base()
    with pytest.raises(AttributeError):
        p.species = None
    with pytest.raises(AttributeError):
        del p.species


def test_constructor_checks_names_shapes_dtypes():
    p = base()
    sp = p.species
    params = dict(p.params)
    q = Particle(sp, params)
    assert q.species is sp and all(a is b for a, b in zip(q.tensors, p.tensors))
    with pytest.raises(ValueError, match="species"):
        Particle(sp, {k: v for k, v in params.items() if k != "0.bias"})
    with pytest.raises(ValueError, match="0.bias"):
        Particle(sp, {**params, "0.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="dtype"):
        Particle(sp, {**params, "0.bias": torch.zeros(8, dtype=torch.float64)})
    with pytest.raises(TypeError, match="Species"):
        Particle("species", params)


# -- arithmetic ------------------------------------------------------------------

SCALAR_OPS = [
    ("p + s", lambda p, s: p + s, lambda t, s: t + s),
    ("s + p", lambda p, s: s + p, lambda t, s: s + t),
    ("p - s", lambda p, s: p - s, lambda t, s: t - s),
    ("s - p", lambda p, s: s - p, lambda t, s: s - t),
    ("p * s", lambda p, s: p * s, lambda t, s: t * s),
    ("s * p", lambda p, s: s * p, lambda t, s: s * t),
    ("p / s", lambda p, s: p / s, lambda t, s: t / s),
    ("s / p", lambda p, s: s / p, lambda t, s: s / t),
    ("p ** s", lambda p, s: p ** s, lambda t, s: t ** s),
    ("s ** p", lambda p, s: s ** p, lambda t, s: s ** t),
]


@pytest.mark.parametrize("label,op,ref", SCALAR_OPS, ids=[o[0] for o in SCALAR_OPS])
@pytest.mark.parametrize("scalar", [2, 0.5, -1.5, True, torch.tensor(0.25), torch.tensor(3)], ids=str)
def test_scalar_ops_match_plain_torch(label, op, ref, scalar):
    p = base().map(lambda t, cfg: t.abs() + 0.1)  # positive: ** stays real
    snap = Snapshot(p, scalar)
    out = op(p, scalar)
    assert isinstance(out, Particle) and out.species is p.species
    s = int(scalar) if isinstance(scalar, bool) else scalar
    assert close(out, expect(p, lambda t: ref(t, s).to(t.dtype)), rtol=1e-5, atol=1e-6)
    assert snap.unchanged()


PARTICLE_OPS = [
    ("p + q", operator.add),
    ("p - q", operator.sub),
    ("p * q", operator.mul),
    ("p / q", operator.truediv),
    ("p ** q", operator.pow),
]


@pytest.mark.parametrize("label,op", PARTICLE_OPS, ids=[o[0] for o in PARTICLE_OPS])
def test_particle_ops_match_plain_torch(label, op):
    p, q = pair()
    p = p.map(lambda t, cfg: t.abs() + 0.1)
    snap = Snapshot(p, q)
    out = op(p, q)
    assert out.species is p.species
    assert close(out, expect2(p, q, op), rtol=1e-5, atol=1e-6)
    assert snap.unchanged()


def test_unary_ops():
    p = base()
    snap = Snapshot(p)
    neg, pos = -p, +p
    assert close(neg, expect(p, lambda t: -t))
    assert close(pos, expect(p, lambda t: t))
    assert all(a is not b for a, b in zip(pos.tensors, p.tensors))
    assert snap.unchanged()


def exact(particle_, tensors):
    """Bit for bit the given tensors (same shape and dtype, NaN equals NaN)."""
    return len(particle_.tensors) == len(tensors) and all(
        tensor_equal(a, b) for a, b in zip(particle_.tensors, tensors)
    )


def test_scaled_sums_hold_exactly_the_torch_expressions():
    p, q = pair()
    assert exact(0.5 * p, expect(p, lambda t: 0.5 * t))
    assert exact((0.5 * p) * 2, expect(p, lambda t: (0.5 * t) * 2))
    assert exact(2 * (3 * p), expect(p, lambda t: 2 * (3 * t)))
    assert exact(-(2 * p), expect(p, lambda t: -(2 * t)))
    assert exact(2 * p - 2 * p, expect(p, lambda t: 2 * t - 2 * t))
    assert exact(0.3 * p + 0.7 * q, expect2(p, q, lambda x, y: 0.3 * x + 0.7 * y))
    assert exact(p - 0.1 * q, expect2(p, q, lambda x, y: x - 0.1 * y))
    assert exact(2 * p + 3 * q, expect2(p, q, lambda x, y: 2 * x + 3 * y))
    assert exact(-1 * p - 2 * q, expect2(p, q, lambda x, y: -1 * x - 2 * y))
    assert exact(p / 4 + q * 0.25, expect2(p, q, lambda x, y: x / 4 + y * 0.25))
    assert exact(0.3 / p, expect(p, lambda t: 0.3 / t))
    assert exact(0.3 - p, expect(p, lambda t: 0.3 - t))
    assert exact(1.7 ** p, expect(p, lambda t: 1.7 ** t))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_results_keep_dtype_and_shape(dtype):
    p = particle(mlp().to(dtype))
    q = p.randn(generator=torch.Generator().manual_seed(1))
    results = [p + 1, 2 * p, p * torch.tensor(0.5), torch.tensor(2.0, dtype=torch.float64) * p,
               0.5 * p + 0.5 * q, p - q, p * q, p / 3, -p, p ** 2, 2 ** p, p.clone(), p.randn(), p.rand()]
    for r in results:
        for n, t in zip(r.species.names, r.tensors):
            assert t.dtype == dtype, n
            assert t.shape == p.species.shapes[n]


def test_integer_parameter_keeps_dtype():
    m = nn.Module()
    m.w = nn.Parameter(torch.arange(4, dtype=torch.int64), requires_grad=False)
    m.f = nn.Parameter(torch.ones(2))
    p = particle(m)
    for r in (p + 1, p * 2, p * 0.5, p + p, 0.5 * p + 0.5 * p, p - torch.tensor(1.0)):
        assert r.params["w"].dtype == torch.int64
        assert r.params["f"].dtype == torch.float32
    assert torch.equal((p * 2).params["w"], torch.arange(4) * 2)


# -- non-operational parameters --------------------------------------------------


def with_frozen(clone):
    p, q = pair()
    sp = p.species.with_config("0.bias", operational=False, clone=clone)
    return nf.migrate(p, sp), nf.migrate(q, sp)


@pytest.mark.parametrize(
    "make",
    [
        lambda p, q: p + q, lambda p, q: p - q, lambda p, q: p * q, lambda p, q: p / q, lambda p, q: p ** q,
        lambda p, q: p + 1, lambda p, q: 1 + p, lambda p, q: 2 - p, lambda p, q: p * 3, lambda p, q: 3 * p,
        lambda p, q: p / 2, lambda p, q: 2 / p, lambda p, q: p ** 2, lambda p, q: 2 ** p,
        lambda p, q: p * torch.tensor(2.0), lambda p, q: 0.5 * p + 0.5 * q, lambda p, q: p - 0.1 * q,
        lambda p, q: -p, lambda p, q: +p, lambda p, q: p.clone(), lambda p, q: p.randn(), lambda p, q: p.rand(),
    ],
)
@pytest.mark.parametrize("clone", [True, False])
def test_non_operational_taken_from_left_operand(make, clone):
    p, q = with_frozen(clone)
    frozen = p.params["0.bias"]
    out = make(p, q)
    got = out.params["0.bias"]
    assert tensor_equal(got, frozen)
    if clone:
        assert got is not frozen and got.data_ptr() != frozen.data_ptr()
    else:
        assert got is frozen
    # the operational ones did change (all but +p and clone change 0.weight)
    assert not tensor_equal(out.params["0.weight"], p.params["0.weight"]) or tensor_equal(
        out.params["0.weight"], +p.params["0.weight"]
    )


def test_non_operational_from_left_even_when_right_is_a_particle():
    p, q = with_frozen(True)
    assert tensor_equal((q + p).params["0.bias"], q.params["0.bias"])
    assert tensor_equal((q - 0.5 * p).params["0.bias"], q.params["0.bias"])


def test_config_is_per_species():
    p, q = pair()
    sp = p.species.with_config(operational=False, clone=False)
    r = nf.migrate(p, sp) * 5
    assert all(a is b for a, b in zip(r.tensors, p.tensors))


# -- map, zip_with -------------------------------------------------------------------


def test_map_sees_every_parameter_and_its_config():
    p, _ = with_frozen(True)
    seen = []

    def fn(t, cfg):
        seen.append((t, cfg))
        return t * 2 if cfg.operational else t

    snap = Snapshot(p)
    out = p.map(fn)
    assert [t for t, _ in seen] == list(p.tensors) or all(a is b for (a, _), b in zip(seen, p.tensors))
    assert [c for _, c in seen] == [p.species.config[n] for n in p.species.names]
    assert out.params["0.bias"] is p.params["0.bias"]
    assert tensor_equal(out.params["0.weight"], p.params["0.weight"] * 2)
    assert snap.unchanged()


def test_zip_with():
    p, q = pair()
    configs = []
    out = p.zip_with(q, lambda x, y, cfg: configs.append(cfg) or torch.maximum(x, y))
    assert close(out, expect2(p, q, torch.maximum))
    assert len(configs) == len(p.species.names)


@pytest.mark.parametrize(
    "fn", [lambda t, cfg: t.sum(), lambda t, cfg: t.reshape(-1), lambda t, cfg: t[:1]]
)
def test_map_wrong_shape_is_valueerror_naming_parameter(fn):
    p = base()
    snap = Snapshot(p)
    with pytest.raises(ValueError) as info:
        p.map(fn)
    msg = str(info.value)
    assert "0.weight" in msg and "expected" in msg and "(8, 4)" in msg
    assert snap.unchanged()


def test_map_non_tensor_and_wrong_dtype():
    p = base()
    with pytest.raises(ValueError, match="0.weight"):
        p.map(lambda t, cfg: 1.0)
    with pytest.raises(ValueError, match="dtype"):
        p.map(lambda t, cfg: t.double())


def test_zip_with_wrong_shape_and_bad_other():
    p, q = pair()
    with pytest.raises(ValueError, match="0.weight"):
        p.zip_with(q, lambda x, y, cfg: torch.cat([x, y]))
    with pytest.raises(TypeError, match="Particle"):
        p.zip_with(3.0, lambda x, y, cfg: x)
    with pytest.raises(ValueError, match="species"):
        p.zip_with(base(1), lambda x, y, cfg: x)


# -- clone and randomness ----------------------------------------------------------


def test_clone_is_a_copy():
    p = base()
    c = p.clone()
    assert c.species is p.species
    assert all(tensor_equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(c.tensors, p.tensors))


@pytest.mark.parametrize("method,draw", [("randn", torch.randn), ("rand", torch.rand)])
def test_draws_reproducible_from_a_generator(method, draw):
    p = base()
    snap = Snapshot(p)
    a = getattr(p, method)(generator=torch.Generator().manual_seed(7))
    b = getattr(p, method)(generator=torch.Generator().manual_seed(7))
    c = getattr(p, method)(generator=torch.Generator().manual_seed(8))
    assert tree_equal(a, b)
    assert not tree_equal(a, c)
    g = torch.Generator().manual_seed(7)
    assert close(a, [draw(p.species.shapes[n], generator=g) for n in p.species.names])
    assert snap.unchanged()


@pytest.mark.parametrize("method", ["randn", "rand"])
def test_draws_use_global_rng_without_generator(method):
    p = base()
    torch.manual_seed(3)
    a = getattr(p, method)()
    b = getattr(p, method)()
    torch.manual_seed(3)
    c = getattr(p, method)()
    assert tree_equal(a, c)
    assert not tree_equal(a, b)


def test_rand_in_unit_interval_and_randn_spread():
    p = particle(nn.Linear(100, 100))
    r = p.rand(generator=torch.Generator().manual_seed(0))
    assert all(bool(((t >= 0) & (t < 1)).all()) for t in r.tensors)
    w = p.randn(generator=torch.Generator().manual_seed(0)).params["weight"]
    assert abs(float(w.mean())) < 0.05 and abs(float(w.std()) - 1) < 0.05


def test_bad_generator():
    with pytest.raises(TypeError, match="Generator"):
        base().randn(generator=3)


# -- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("other", ["x", None, [1.0], nn.Linear(4, 8), 1 + 2j, {"a": 1}], ids=repr)
@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow])
def test_non_operand_is_typeerror(op, other):
    p = base()
    snap = Snapshot(p)
    with pytest.raises(TypeError) as info:
        op(p, other)
    with pytest.raises(TypeError):
        op(other, p)
    assert snap.unchanged()
    msg = str(info.value)
    if "unsupported operand" not in msg:  # Python's own message when both sides decline
        assert "expected" in msg and type(other).__name__ in msg


@pytest.mark.parametrize("other", [torch.ones(1), torch.ones(3), torch.ones(2, 2), torch.ones(8, 4)], ids=str)
@pytest.mark.parametrize("op", [operator.add, operator.mul, operator.pow])
def test_tensor_of_other_shape_refused(op, other):
    p = base()
    snap = Snapshot(p, other)
    with pytest.raises((TypeError, ValueError)) as info:
        op(p, other)
    assert "0-d tensor" in str(info.value) and str(tuple(other.shape)) in str(info.value)
    assert snap.unchanged()


@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow])
def test_op_across_species_refused(op):
    p, q = base(0), base(1)  # same architecture, two captures: two species
    snap = Snapshot(p, q)
    with pytest.raises(ValueError, match="species") as info:
        op(p, q)
    assert isinstance(info.value, TypeError)
    assert snap.unchanged()


# -- hypothesis: algebra laws and inputs never modified ----------------------------------

seeds = st.integers(0, 2**16)
coefs = st.floats(-4, 4, allow_nan=False).filter(lambda c: abs(c) > 1e-3)


_SHARED = base()  # one species for every drawn particle


def drawn(seed):
    return _SHARED.randn(generator=torch.Generator().manual_seed(seed))


@SETTINGS
@given(seeds, seeds)
def test_law_add_then_sub(s1, s2):
    p, q = drawn(s1), drawn(s2)
    assert allclose((p + q) - q, p, atol=1e-5)


@SETTINGS
@given(seeds)
def test_law_two_p_is_p_plus_p(s1):
    p = drawn(s1)
    assert tree_equal(2 * p, p + p)
    assert tree_equal(p * 2, p + p)


@SETTINGS
@given(seeds, seeds, coefs, coefs)
def test_law_fused_matches_unfused(s1, s2, a, b):
    p, q = drawn(s1), drawn(s2)
    snap = Snapshot(p, q)
    fused = a * p + b * q
    unfused = [a * x + b * y for x, y in zip(p.tensors, q.tensors)]
    assert close(fused, unfused, rtol=1e-5, atol=1e-5)
    assert close(a * p - b * q, [a * x - b * y for x, y in zip(p.tensors, q.tensors)], rtol=1e-5, atol=1e-5)
    assert snap.unchanged()


@SETTINGS
@given(seeds, coefs)
def test_law_scalar_distributes(s1, a):
    p = drawn(s1)
    assert allclose(a * p + a * p, 2 * a * p, atol=1e-5)
    assert allclose(p / a * a, p, atol=1e-4)
    assert allclose(-(-p), p)


OPS = [
    lambda p, q, c: p + q, lambda p, q, c: p - q, lambda p, q, c: p * q, lambda p, q, c: p / q,
    lambda p, q, c: p ** q, lambda p, q, c: c * p, lambda p, q, c: p + c, lambda p, q, c: c - p,
    lambda p, q, c: p / c, lambda p, q, c: c / p, lambda p, q, c: p ** c, lambda p, q, c: c ** p,
    lambda p, q, c: -p, lambda p, q, c: +p, lambda p, q, c: c * p + q, lambda p, q, c: p - c * q,
    lambda p, q, c: p * torch.tensor(c), lambda p, q, c: torch.tensor(c) - p,
    lambda p, q, c: p.map(lambda t, cfg: t + c), lambda p, q, c: p.zip_with(q, lambda x, y, cfg: x * y + c),
    lambda p, q, c: p.clone(), lambda p, q, c: p.randn(), lambda p, q, c: p.rand(),
]


@SETTINGS
@given(seeds, seeds, coefs, st.sampled_from(range(len(OPS))), st.booleans())
def test_inputs_never_modified(s1, s2, c, which, frozen):
    p, q = drawn(s1), drawn(s2)
    if frozen:
        sp = p.species.with_config("2", operational=False, clone=False)
        p, q = nf.migrate(p, sp), nf.migrate(q, sp)
    snap = Snapshot(p, q)
    out = OPS[which](p, q, c)
    out.tensors  # materialise a pending result
    assert snap.unchanged()
    assert all(t is not u for t in out.tensors for u in q.tensors)
