"""Particles are values: eager, torch's arithmetic bit for bit, explicit fused primitives.

Every expected value here is plain torch applied to the tensors (never the
code under test), compared bit for bit (``torch.equal``, NaN equal to NaN).
"""

from __future__ import annotations

import operator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch_fn as nf
from nytorch_fn import optim
from tests.helpers import Snapshot, tensor_equal

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


class Net(nn.Module):
    """Tensors of several shapes, a 0-d parameter among them."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.tensor(0.75))
        self.row = nn.Parameter(torch.randn(17))


_BASE: dict[torch.dtype, nf.Particle] = {}


def make(dtype: torch.dtype, seed: int, *, scale: float = 1.0) -> nf.Particle:
    """A particle of the one species of ``Net`` in ``dtype``, with values drawn from ``seed``."""
    if dtype not in _BASE:
        torch.manual_seed(0)
        _BASE[dtype] = nf.particle(Net().to(dtype))
    p = _BASE[dtype]
    g = torch.Generator().manual_seed(seed + 1)
    return p.map(lambda t, cfg: (torch.randn(t.shape, generator=g, dtype=torch.float64) * scale).to(t.dtype))


def same(particle: nf.Particle, tensors: list[torch.Tensor]) -> bool:
    return len(particle.tensors) == len(tensors) and all(tensor_equal(a, b) for a, b in zip(particle.tensors, tensors))


# -- expression trees -------------------------------------------------------------

# an expression over particle leaves "p", "q" and coefficients; the same tree is
# evaluated on particles and, tensor by tensor, on plain torch tensors
BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
numbers = st.one_of(
    st.floats(-4, 4, allow_nan=False, width=32).filter(lambda v: v != 0),
    st.integers(-3, 3),
    st.sampled_from([0.1, 0.3, 0.7, 1e-3, 3e38, -3e38, 65504.0, 1e-40]),
)
coefficient = st.one_of(
    numbers.map(lambda v: ("num", v)),
    st.tuples(numbers, st.sampled_from(["float32", "float64", "float16", "bfloat16"])).map(lambda a: ("t0", a)),
)


def trees(leaves: list[str], ops: list[str], pow_ok: bool):
    leaf = st.sampled_from(leaves).map(lambda n: ("leaf", n))

    def extend(children):
        node = st.one_of(
            st.tuples(st.just("bin"), st.sampled_from(ops), children, children),
            st.tuples(st.just("coef_r"), st.sampled_from(ops), children, coefficient),  # e op c
            st.tuples(st.just("coef_l"), st.sampled_from(ops), coefficient, children),  # c op e
            st.tuples(st.just("neg"), children),
        )
        if pow_ok:
            node = st.one_of(
                node,
                st.tuples(st.just("pow"), children, st.sampled_from([2, 3, 0.5, -1, 1.5])),
                st.tuples(st.just("rpow"), st.sampled_from([2.0, 0.5, 1.5]), children),
            )
        return node

    return st.recursive(leaf, extend, max_leaves=6)


def coef_value(c):
    kind, v = c
    if kind == "num":
        return v
    value, dtype = v
    return torch.tensor(value, dtype=getattr(torch, dtype))


def evaluate(tree, env):
    kind = tree[0]
    if kind == "leaf":
        return env[tree[1]]
    if kind == "bin":
        return BINARY[tree[1]](evaluate(tree[2], env), evaluate(tree[3], env))
    if kind == "coef_r":
        return BINARY[tree[1]](evaluate(tree[2], env), coef_value(tree[3]))
    if kind == "coef_l":
        return BINARY[tree[1]](coef_value(tree[2]), evaluate(tree[3], env))
    if kind == "neg":
        return -evaluate(tree[1], env)
    if kind == "pow":
        return evaluate(tree[1], env) ** tree[2]
    if kind == "rpow":
        return tree[1] ** evaluate(tree[2], env)
    raise AssertionError(kind)


def torch_reference(tree, env: dict[str, torch.Tensor]) -> torch.Tensor:
    """The same expression in torch on one tensor of each leaf; a 0-d tensor is computed as
    a one-element one (DESIGN "Values": a 0-d parameter gets the bits a one-element one would)."""
    zero_d = next(iter(env.values())).dim() == 0
    if zero_d:
        env = {k: v.reshape(1) for k, v in env.items()}
    out = evaluate(tree, env)
    return out.reshape(()) if zero_d else out


@SETTINGS
@given(tree=trees(["p", "q"], ["+", "-", "*", "/"], pow_ok=True), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 50))
def test_every_expression_tree_equals_the_torch_expression_bit_for_bit(tree, dtype, seed):
    p, q = make(dtype, seed), make(dtype, seed + 7)
    snap = Snapshot(p, q)
    result = evaluate(tree, {"p": p, "q": q})
    expected = [torch_reference(tree, {"p": a, "q": b}) for a, b in zip(p.tensors, q.tensors)]
    assert all(e.dtype == dtype for e in expected)
    assert same(result, expected)
    assert snap.unchanged()


@SETTINGS
@given(tree=trees(["pop", "best"], ["+", "-", "*", "/"], pow_ok=False).filter(lambda t: "'pop'" in repr(t)), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 50))
def test_member_i_of_a_population_expression_is_the_expression_on_member_i(tree, dtype, seed):
    members = [make(dtype, seed + k) for k in range(3)]
    pop, best = nf.stack(members), make(dtype, seed + 99)
    result = evaluate(tree, {"pop": pop, "best": best})
    assert result.population_size == 3
    for i, m in enumerate(members):
        expected = [torch_reference(tree, {"pop": a, "best": b}) for a, b in zip(m.tensors, best.tensors)]
        assert same(result[i], expected)


@SETTINGS
@given(tree=trees(["m", "best"], ["+", "-", "*", "/"], pow_ok=True).filter(lambda t: "'m'" in repr(t)), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 50))
def test_inside_vmap_an_expression_equals_the_same_expression_on_the_stacked_population(tree, dtype, seed):
    pop, best = nf.stack([make(dtype, seed + k) for k in range(3)]), make(dtype, seed + 99)
    inside = torch.func.vmap(lambda m: evaluate(tree, {"m": m, "best": best}))(pop)
    outside = evaluate(tree, {"m": pop, "best": best})
    assert same(inside, list(outside.tensors))


def test_opposite_huge_halves_cancel_to_zero_as_in_torch():
    big = make(torch.float32, 0).map(lambda t, cfg: torch.full_like(t, 3e38))
    r = 0.5 * big + 0.5 * (-big)
    assert all(bool((t == 0).all()) for t in r.tensors)
    assert same(r, [0.5 * t + 0.5 * (-t) for t in big.tensors])


def test_reflected_operators_with_a_tensor_on_the_left_equal_torch():
    p = make(torch.float32, 3)
    c = torch.tensor(0.3)
    for fn in (lambda a: c * a, lambda a: c - a, lambda a: c / a, lambda a: c + a, lambda a: c ** a,
               lambda a: torch.mul(c, a), lambda a: torch.sub(c, a)):
        assert same(fn(p), [fn(t) for t in p.tensors])


def test_a_per_member_vector_scales_member_i_by_its_entry_in_the_parameter_dtype():
    for dtype in DTYPES:
        members = [make(dtype, k) for k in range(4)]
        pop = nf.stack(members)
        w = torch.tensor([0.1, -2.0, 0.3, 7.0], dtype=torch.float64)
        r = w * pop - pop / w
        for i, m in enumerate(members):
            wi = w[i].to(dtype)
            assert same(r[i], [wi * t - t / wi for t in m.tensors])


# -- values never change ----------------------------------------------------------


@pytest.mark.parametrize(
    "compute",
    [
        lambda p, q: 2 * p,
        lambda p, q: 0.3 * p + 0.7 * q,
        lambda p, q: p - 0.1 * q,
        lambda p, q: -p,
        lambda p, q: p * 1,
        lambda p, q: nf.lerp(p, q, 0.5),
        lambda p, q: nf.lincomb([0.5, 0.5], [p, q]),
        lambda p, q: p.map(lambda t, cfg: t * 2),
        lambda p, q: nf.stack([p, q]),
        lambda p, q: p.clone(),
    ],
    ids=["2p", "blend", "axpy", "neg", "times_one", "lerp", "lincomb", "map", "stack", "clone"],
)
def test_results_survive_later_in_place_changes_of_their_operands_storage(compute):
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    p = nf.particle(net, copy=False)  # shares the module's storage
    q = p.randn(generator=torch.Generator().manual_seed(0))
    r = compute(p, q)
    frozen = [t.clone() for t in r.tensors]
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(1000.0)
        for t in q.tensors:
            t.add_(1000.0)
    assert all(torch.equal(a, b) for a, b in zip(r.tensors, frozen))


def test_a_particle_holds_no_pending_work():
    p = make(torch.float32, 0)
    q = 2 * p
    assert set(type(q).__slots__) == {"species", "_t", "__weakref__"}
    assert all(isinstance(t, torch.Tensor) for t in q._t)


# -- lerp -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", [0.25, 0.5, 0.9, -0.5, 1.5, "tensor0d", "tensor0d_f64"])
def test_lerp_equals_torch_lerp_per_tensor(dtype, weight):
    p, q = make(dtype, 1), make(dtype, 2)
    snap = Snapshot(p, q)
    if weight == "tensor0d":
        w = torch.tensor(0.3, dtype=dtype)
    elif weight == "tensor0d_f64":
        w = torch.tensor(0.3, dtype=torch.float64)
    else:
        w = weight
    r = nf.lerp(p, q, w)
    expected = [torch.lerp(a, b, w.to(dtype) if isinstance(w, torch.Tensor) else w) for a, b in zip(p.tensors, q.tensors)]
    assert same(r, expected)
    assert snap.unchanged()


@pytest.mark.parametrize("dtype", DTYPES)
def test_lerp_with_a_per_member_weight_vector_and_a_single_end(dtype):
    members = [make(dtype, k) for k in range(3)]
    pop, best = nf.stack(members), make(dtype, 9)
    w = torch.tensor([0.1, 0.5, 0.8])
    r = nf.lerp(pop, best, w)
    for i, m in enumerate(members):
        assert same(r[i], [torch.lerp(a, b, w[i].to(dtype)) for a, b in zip(m.tensors, best.tensors)])
    inside = torch.func.vmap(lambda m, wi: nf.lerp(m, best, wi))(pop, w)
    assert same(inside, list(r.tensors))


def test_lerp_donated_writes_in_place_and_gives_the_same_bits():
    pop = nf.stack([make(torch.float32, k) for k in range(4)])
    best = make(torch.float32, 9)
    expected = nf.lerp(pop, best, 0.3)
    own = nf.stack(nf.unstack(pop))
    ptrs = [t.data_ptr() for t in own.tensors]
    r = nf.lerp(own, best, 0.3, donate=True)
    assert [t.data_ptr() for t in r.tensors] == ptrs
    assert same(r, list(expected.tensors))
    # a caller's other arguments are never written
    snap = Snapshot(best)
    nf.lerp(nf.stack(nf.unstack(pop)), best, torch.tensor([0.1, 0.2, 0.3, 0.4]), donate=True)
    assert snap.unchanged()


def test_lerp_keeps_non_operational_parameters_from_start():
    p, q = make(torch.float32, 1), make(torch.float32, 2)
    s = p.species.with_config("lin", operational=False)
    p2, q2 = nf.migrate(p, s), nf.migrate(q, s)
    r = nf.lerp(p2, q2, 0.5)
    assert torch.equal(r.params["lin.weight"], p.params["lin.weight"])
    assert r.params["lin.weight"].data_ptr() != p.params["lin.weight"].data_ptr()  # clone=True: a copy
    assert torch.equal(r.params["row"], torch.lerp(p.params["row"], q.params["row"], 0.5))


def test_lerp_is_differentiable():
    p, q = make(torch.float64, 1), make(torch.float64, 2)
    g = torch.func.grad(lambda a: sum(t.sum() for t in nf.lerp(a, q, 0.25).tensors))(p)
    assert all(torch.allclose(t, torch.full_like(t, 0.75)) for t in g.tensors)


# -- lincomb ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_lincomb_is_its_documented_kernels(dtype):
    p, q, r = make(dtype, 1), make(dtype, 2), make(dtype, 3)
    out = nf.lincomb([0.3, 0.7, -1.5], [p, q, r])
    expected = [torch.add(torch.add(a * 0.3, b, alpha=0.7), c, alpha=-1.5) for a, b, c in zip(p.tensors, q.tensors, r.tensors)]
    assert same(out, expected)
    natural = 0.3 * p + 0.7 * q + (-1.5) * r
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert all(torch.allclose(a.double(), b.double(), rtol=tol, atol=tol) for a, b in zip(out.tensors, natural.tensors))


def test_lincomb_with_tensor_and_per_member_weights_and_donation():
    members = [make(torch.float32, k) for k in range(3)]
    pop, best, noise = nf.stack(members), make(torch.float32, 8), nf.stack([make(torch.float32, 20 + k) for k in range(3)])
    a = torch.tensor([0.1, 0.2, 0.3])
    b = torch.tensor(0.4)
    out = nf.lincomb([1 - b, b, a], [pop, best, noise])
    for i in range(3):
        expected = [torch.addcmul(torch.addcmul(x * (1 - b), y, b), z, a[i]) for x, y, z in zip(members[i].tensors, best.tensors, noise[i].tensors)]
        assert same(out[i], expected)
    own = nf.stack(nf.unstack(pop))
    donated = nf.lincomb([1 - b, b, a], [own, best, noise], donate=True)
    assert donated.tensors[0].data_ptr() == own.tensors[0].data_ptr()
    assert same(donated, list(out.tensors))


# -- optimisers: torch.optim's numbers --------------------------------------------


# float64 over 300 steps: torch's Adam forms its bias corrections as Python floats
# (``bc2 ** 0.5``); a float64 tensor sqrt differs from that in the last bit at some steps
# (b2 = 0.999: first at step 135), which float64 parameters see
@pytest.mark.parametrize("dtype, steps, weight_decay, donate", [
    (torch.float32, 5, 1e-3, lambda step: step % 2 == 1),
    (torch.float64, 300, 0.0, lambda step: True),
], ids=["float32-weight-decay", "float64-300-steps"])
def test_adam_steps_equal_torch_optim_adam_bit_for_bit(dtype, steps, weight_decay, donate):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(dtype)
    ref = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=False)
    params = nf.particle(net)
    opt = optim.adam(1e-2, weight_decay=weight_decay)
    state = opt.init(params)
    x, y = torch.randn(32, 6, dtype=dtype), torch.randn(32, 3, dtype=dtype)
    for step in range(steps):
        grads = torch.func.grad(lambda w: (nf.apply(w, x) - y).pow(2).mean())(params)
        updates, state = opt.update(grads, state, params, donate=donate(step))
        params = optim.apply_updates(params, updates, donate=donate(step))
        ref.zero_grad()
        (net(x) - y).pow(2).mean().backward()
        ref.step()
        assert all(torch.equal(a, b.detach()) for a, b in zip(params.tensors, net.parameters())), step


def test_adam_with_a_tensor_rate_gives_the_bits_of_the_number_rate():
    # a 0-d tensor rate takes the general path (particle arithmetic), a number the per-tensor one
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    p = nf.particle(net)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    runs = []
    for lr, donate in ((3e-3, False), (3e-3, True), (torch.tensor(3e-3, dtype=torch.float64), False)):
        opt, params = optim.adam(lr), p.map(lambda t, cfg: t.clone())  # its own copy: a donated run writes it
        state = opt.init(params)
        for _ in range(40):
            grads = torch.func.grad(lambda w: (nf.apply(w, x) - y).pow(2).mean())(params)
            updates, state = opt.update(grads, state, params, donate=donate)
            params = optim.apply_updates(params, updates, donate=donate)
        runs.append((params, state))
    for params, state in runs[1:]:
        assert same(params, list(runs[0][0].tensors))
        assert same(state.nu, list(runs[0][1].nu.tensors)) and int(state.count) == 40


# -- torch.compile ----------------------------------------------------------------


def _graph_breaks(fn, *args) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args).graph_break_count


def test_particle_code_traces_under_torch_compile_without_graph_breaks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    bn_net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 4)).eval()
    bn = nf.particle(bn_net)
    p = nf.particle(net)
    q = p.randn(generator=torch.Generator().manual_seed(1))
    pop = nf.init_population(net, 4, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(10, 8), torch.randint(0, 4, (10,))
    t = torch.tensor(0.25)

    def loss(m, xb, yb):
        return nn.functional.cross_entropy(nf.apply(m, xb), yb)

    def per_member_grads(pop, xb, yb):
        return torch.func.vmap(torch.func.grad(loss), in_dims=(0, None, None))(pop, xb, yb)

    opt = optim.adam(torch.linspace(1e-3, 1e-2, 4))
    state = opt.init(pop)

    def train_step(pop, state, xb, yb):
        updates, state = opt.update(per_member_grads(pop, xb, yb), state, pop)
        return optim.apply_updates(pop, updates), state

    cases = {
        "arithmetic": (lambda a, b, c: (0.3 * a + 0.7 * b - a / 2 + 2 ** b) * c - c * a, (p, q, t)),
        "lerp and lincomb": (lambda a, b: (nf.lerp(a, b, 0.3), nf.lincomb([0.5, 0.5], [a, b])), (p, q)),
        "apply": (lambda a, xb: nf.apply(a, xb), (p, x)),
        "apply with buffers": (lambda a, xb: nf.apply(a, xb), (bn, x)),
        "vmap_apply": (lambda pp, xb: nf.vmap_apply(pp, xb), (pop, x)),
        "vmap(grad)": (per_member_grads, (pop, x, y)),
        "optimiser step": (train_step, (pop, state, x, y)),
    }
    breaks = {name: _graph_breaks(fn, *args) for name, (fn, args) in cases.items()}
    assert breaks == {name: 0 for name in cases}


def test_compiled_particle_code_equals_eager():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    pop = nf.init_population(net, 4, generator=torch.Generator().manual_seed(0))
    best = pop[2].clone()
    x, y = torch.randn(10, 8), torch.randint(0, 4, (10,))
    opt = optim.sgd(0.1, momentum=0.9)

    def step(pop, state):
        grads = torch.func.vmap(
            torch.func.grad(lambda m: nn.functional.cross_entropy(nf.apply(m, x), y))
        )(pop)
        updates, state = opt.update(grads, state, pop)
        pop = optim.apply_updates(pop, updates)
        return 0.9 * pop + 0.1 * best, state

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    eager_pop, eager_state = step(pop, opt.init(pop))
    comp_pop, comp_state = compiled(pop, opt.init(pop))
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(eager_pop.tensors, comp_pop.tensors))
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(eager_state.momentum.tensors, comp_state.momentum.tensors))
    # arithmetic alone compiles to the same bits (float32)
    blend = torch.compile(lambda a, b: 0.3 * a + 0.7 * b, backend="aot_eager", fullgraph=True)
    assert same(blend(pop, best), list((0.3 * pop + 0.7 * best).tensors))


def test_forward_passes_from_several_threads_equal_sequential_ones():
    import threading

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    particles = [nf.particle(net).randn(generator=torch.Generator().manual_seed(k)) for k in range(4)]
    x = torch.randn(64, 8)
    expected = [nf.apply(p, x) for p in particles]
    results: dict[int, list[torch.Tensor]] = {}

    def work(k: int) -> None:
        results[k] = [nf.apply(particles[k], x) for _ in range(30)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, expected[k]) for k in range(4) for r in results[k])
