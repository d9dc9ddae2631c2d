"""The legacy layer's arithmetic (nytorch/_arith.py) is the plain torch expression per parameter, bit for bit.

nytorch 1.1.0 computes ``p * 0.5``, ``lp + rp``, ``2 ** p``... parameter by
parameter under ``no_grad``; the expected values here are those plain
expressions, for every operator, dtype and kind of operand.
"""

import operator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nytorch import _arith as ar
from nytorch import _bridge as br

from .compat_models import Mixed

PLAIN = {
    ar.ADD: operator.add,
    ar.SUB: operator.sub,
    ar.RSUB: lambda x, y: y - x,
    ar.MUL: operator.mul,
    ar.DIV: operator.truediv,
    ar.RDIV: lambda x, y: y / x,
    ar.POW: operator.pow,
    ar.RPOW: lambda x, y: y**x,
}
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _plan_and_tensors(seed):
    torch.manual_seed(seed)
    net = Mixed()
    plan = net._version_kernel.data._arith_plan()
    return plan, list(net._particle_kernel.data.params.values())


def _expected(plan, kind, mine, theirs):
    out = []
    with torch.no_grad():
        for i, x in enumerate(mine):
            if i in plan.op:
                y = theirs[i] if isinstance(theirs, list) else theirs
                r = -x if kind == ar.NEG else PLAIN[kind](x, y)
                out.append(r.to(x.dtype))
            else:
                out.append(x)
    return out


def _check(plan, kind, mine, theirs):
    try:
        want = _expected(plan, kind, mine, theirs)
    except RuntimeError as error:  # torch refuses it (``p - True``): so does the layer
        with pytest.raises(type(error)):
            ar.apply(plan, kind, mine, theirs)
        return
    got = ar.apply(plan, kind, mine, theirs)
    assert len(got) == len(mine)
    for i, (g, w, x) in enumerate(zip(got, want, mine)):
        assert g.dtype == x.dtype and g.shape == x.shape and g.grad_fn is None
        if i in plan.op:
            assert g is not x and type(g) is torch.Tensor
            torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
    for i, clone in plan.nonop:
        assert (got[i] is mine[i]) == (not clone) and torch.equal(got[i], mine[i])


KINDS = [ar.ADD, ar.SUB, ar.RSUB, ar.MUL, ar.DIV, ar.RDIV, ar.POW, ar.RPOW, ar.NEG]
REFLECTED = (ar.RSUB, ar.RDIV, ar.RPOW)  # a number on the left: never a particle


@pytest.mark.parametrize(
    "kind,operand",
    [(k, o) for k in KINDS for o in (0.3, 2, -1.5, True, "0-d", "particle") if not (o == "particle" and k in REFLECTED)],
)
def test_every_operator_is_the_plain_expression(kind, operand):
    plan, mine = _plan_and_tensors(0)
    if kind == ar.NEG:
        theirs = None
    elif operand == "particle":
        theirs = [x.detach().abs() + 0.5 if x.is_floating_point() else x for x in _plan_and_tensors(1)[1]]
    elif operand == "0-d":
        theirs = torch.tensor(0.7, dtype=torch.float64)
    else:
        theirs = operand
    _check(plan, kind, mine, theirs)


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from([ar.ADD, ar.SUB, ar.RSUB, ar.MUL, ar.DIV, ar.RDIV, ar.POW]),
    scalar=st.floats(-4, 4, allow_nan=False, width=32) | st.integers(-3, 3),
    seed=st.integers(0, 2**16),
)
def test_any_dtype_and_number_give_torchs_bits(dtype, kind, scalar, seed):
    g = torch.Generator().manual_seed(seed)
    a = nn.Parameter((torch.rand(7, generator=g) + 0.25).to(dtype))
    b = nn.Parameter((torch.randn(3, 2, generator=g) * 1e-38).to(dtype))  # subnormal where the dtype has them
    plan = ar.plan_of(br.species_from([(0, a.shape, dtype, True), (1, b.shape, dtype, True)], {}))
    mine = [a, b]
    _check(plan, kind, mine, scalar)
    _check(plan, ar.ADD, mine, [m * 0.5 for m in mine])


def test_gradient_mode_is_restored_and_nothing_is_recorded():
    plan, mine = _plan_and_tensors(0)
    out = ar.apply(plan, ar.MUL, mine, 0.5)
    assert torch.is_grad_enabled() and all(t.grad_fn is None for t in out)
    with torch.no_grad():
        ar.apply(plan, ar.MUL, mine, 0.5)
        assert not torch.is_grad_enabled()


def test_each_draws_in_id_order_from_the_global_generator():
    plan, mine = _plan_and_tensors(0)
    torch.manual_seed(5)
    got = ar.apply_each(plan, mine, torch.randn_like)
    torch.manual_seed(5)
    want = [torch.randn_like(mine[i]) for i in plan.op]
    assert all(torch.equal(got[i], w) for i, w in zip(plan.op, want))
    for i, clone in plan.nonop:
        assert (got[i] is mine[i]) == (not clone)
