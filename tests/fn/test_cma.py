"""CMAES, SepCMAES, LMMAES (and the IPOP/BIPOP restarts): the updates against hand computations,
convergence on standard functions with fixed seeds, checkpoints, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError, checkpoint
from nytorch_fn._algorithms._base import draw_seed
from nytorch_fn._algorithms._cma import cma_rates, lm_inverse, lm_rates, lm_transform
from nytorch_fn.algorithms import (
    BIPOP,
    CMAES,
    IPOP,
    LMMAES,
    LocalCollective,
    SepCMAES,
    cma_population_size,
    ravel,
)
from tests.helpers import Snapshot


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def flat(values, dtype=torch.float64) -> nf.Particle:
    """A one-tensor species holding ``values``."""
    v = torch.as_tensor(values, dtype=dtype)
    p = nf.particle(nn.Linear(v.numel(), 1, bias=False).to(dtype))
    return p.map(lambda t, cfg: v.reshape(t.shape).clone())


def mixed() -> nf.Particle:
    """A float32 Linear(3, 2), a float64 parameter and a non-operational one (6 + 2 + 2 = 10 searched values)."""
    torch.manual_seed(0)
    p = nf.particle(nn.Linear(3, 2))
    sp = p.species.add_param("scale", torch.full((2,), 0.25, dtype=torch.float64))
    sp = sp.add_param("frozen", torch.arange(3.0)).with_config("frozen", operational=False)
    return nf.migrate(p, sp)


def X(pop: nf.Particle) -> torch.Tensor:
    return ravel(pop).double()


def sphere(pop):
    return (X(pop) ** 2).sum(1)


def ellipsoid(pop):
    x = X(pop)
    n = x.shape[1]
    return ((1e6 ** (torch.arange(n, dtype=torch.float64) / (n - 1))) * x**2).sum(1)


def rosenbrock(pop):
    x = X(pop)
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)


def rastrigin(pop):
    x = X(pop)
    return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)


def evaluations_to(algo, x0, f, target, budget, seed):
    """Function evaluations until the best loss is below ``target`` (None if the budget runs out)."""
    g = gen(seed)
    state = algo.init(x0, generator=g)
    used = 0
    while used < budget:
        state, loss = algo.step(state, f, generator=g)
        used += loss.shape[0]
        if float(loss.min()) < target:
            return used, state
    return None, state


# -- strategy parameters --------------------------------------------------------------------


def test_rates_by_hand_n2_lambda4():
    r = cma_rates(2, 4)
    w1, w2 = math.log(2.5), math.log(2.5) - math.log(2)  # ln((lam + 1) / 2) - ln i
    w3, w4 = math.log(2.5) - math.log(3), math.log(2.5) - math.log(4)
    mueff = (w1 + w2) ** 2 / (w1**2 + w2**2)
    assert r.mu == 2 and r.mueff == pytest.approx(mueff, rel=1e-15)
    c_sigma = (mueff + 2) / (2 + mueff + 5)
    assert r.c_sigma == pytest.approx(c_sigma, rel=1e-15)
    assert r.d_sigma == pytest.approx(1 + c_sigma, rel=1e-15)  # sqrt((mueff - 1) / 3) < 1
    assert r.c_c == pytest.approx((4 + mueff / 2) / (2 + 4 + 2 * mueff / 2), rel=1e-15)
    c1 = 2 / (3.3**2 + mueff)
    cmu = min(1 - c1, 2 * (0.25 + mueff - 2 + 1 / mueff) / (16 + mueff))
    assert r.c_1 == pytest.approx(c1, rel=1e-15) and r.c_mu == pytest.approx(cmu, rel=1e-15)
    mueff_neg = (w3 + w4) ** 2 / (w3**2 + w4**2)
    scale = min(1 + c1 / cmu, 1 + 2 * mueff_neg / (mueff + 2), (1 - c1 - cmu) / (2 * cmu))
    expected = [w1 / (w1 + w2), w2 / (w1 + w2), scale * w3 / -(w3 + w4), scale * w4 / -(w3 + w4)]
    assert r.weights.tolist() == pytest.approx(expected, rel=1e-14)
    assert r.chi_n == pytest.approx(math.sqrt(2) * (1 - 1 / 8 + 1 / 84), rel=1e-15)
    # passive: the negative weights are zero
    assert cma_rates(2, 4, active=False).weights[2:].tolist() == [0.0, 0.0]


def test_rates_match_pycma_for_n20_lambda12():
    # the values pycma 4.x prints in its CMAParameters docstring for N=20, popsize=12
    r = cma_rates(20, 12)
    assert r.c_1 == pytest.approx(0.00437235, rel=1e-5)
    assert r.c_mu == pytest.approx(0.00921656, rel=1e-5)
    assert r.c_c == pytest.approx(0.171767, rel=1e-5)
    pycma = [0.4024029428, 0.2533890840, 0.1662215645, 0.1043752252, 0.05640347757, 0.01720770576,
             -0.05018713636, -0.1406167894, -0.2203813963, -0.2917332686, -0.3562788884, -0.4152044225]
    assert r.weights.tolist() == pytest.approx(pycma, abs=1e-9)


def test_separable_rates_are_ros_and_hansen():
    full, sep = cma_rates(50, 15), cma_rates(50, 15, separable=True)
    assert sep.c_1 == pytest.approx(full.c_1 * 52 / 3, rel=1e-15)
    assert sep.c_mu == pytest.approx(min(1 - sep.c_1, full.c_mu * 52 / 3), rel=1e-15)


def test_population_size_default():
    assert cma_population_size(10) == 4 + math.floor(3 * math.log(10)) == 10
    assert cma_population_size(flat([0.0] * 40)) == 15
    assert cma_population_size(mixed()) == 4 + math.floor(3 * math.log(10))
    with pytest.raises(TypeError, match="cma_population_size"):
        cma_population_size(0)


# -- one generation of CMA-ES by hand (D = 2, N = 4) -------------------------------------------


def test_cmaes_one_generation_by_hand():
    m0, sigma0 = [1.0, -2.0], 0.5
    algo = CMAES(population_size=4, sigma=sigma0, maximize=False)
    g = gen(7)
    state = algo.init(flat(m0), generator=g)
    seed = draw_seed(gen(7))  # the first draw ask makes
    pop, asked = algo.ask(state, generator=g)
    x = X(pop)
    # the samples: m + sigma * z_i with member i's noise stream (C = I at first)
    z = LocalCollective(4).noise(torch.zeros(2, dtype=torch.float64), seed)
    assert torch.allclose(x, torch.tensor(m0, dtype=torch.float64) + sigma0 * z, rtol=0, atol=1e-15)
    loss = (x**2).sum(1)
    new = algo.tell(asked, pop, loss, generator=g)

    # by hand, in plain Python floats
    n, lam = 2, 4
    order = sorted(range(lam), key=lambda i: float(loss[i]))
    raw = [math.log(2.5) - math.log(k) for k in (1, 2, 3, 4)]
    mueff = (raw[0] + raw[1]) ** 2 / (raw[0] ** 2 + raw[1] ** 2)
    cs = (mueff + 2) / (n + mueff + 5)
    ds = 1 + cs
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (0.25 + mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    neg = raw[2] + raw[3]
    mueffn = neg**2 / (raw[2] ** 2 + raw[3] ** 2)
    a = min(1 + c1 / cmu, 1 + 2 * mueffn / (mueff + 2), (1 - c1 - cmu) / (n * cmu))
    w = [raw[0] / (raw[0] + raw[1]), raw[1] / (raw[0] + raw[1]), a * raw[2] / -neg, a * raw[3] / -neg]
    ys = [[(float(x[i, j]) - m0[j]) / sigma0 for j in range(n)] for i in order]  # sorted, best first
    yw = [w[0] * ys[0][j] + w[1] * ys[1][j] for j in range(n)]
    m1 = [m0[j] + sigma0 * yw[j] for j in range(n)]
    ps = [math.sqrt(cs * (2 - cs) * mueff) * yw[j] for j in range(n)]  # C^{-1/2} = I
    nps = math.hypot(*ps)
    chi = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    sigma1 = sigma0 * math.exp(min(1.0, cs / ds * (nps / chi - 1)))
    h = 1.0 if nps / math.sqrt(1 - (1 - cs) ** 2) < (1.4 + 2 / (n + 1)) * chi else 0.0
    pc = [h * math.sqrt(cc * (2 - cc) * mueff) * yw[j] for j in range(n)]
    wo = [w[k] if w[k] >= 0 else w[k] * n / sum(v * v for v in ys[k]) for k in range(lam)]
    decay = 1 + c1 * (1 - h) * cc * (2 - cc) - c1 - cmu * sum(w)
    C = [[decay * (i == j) + c1 * pc[i] * pc[j] + cmu * sum(wo[k] * ys[k][i] * ys[k][j] for k in range(lam))
          for j in range(n)] for i in range(n)]

    t = lambda v: torch.tensor(v, dtype=torch.float64)
    assert torch.allclose(new.m, t(m1), rtol=1e-13, atol=1e-15)
    assert torch.allclose(ravel(new.mean), t(m1), rtol=1e-13, atol=1e-15)
    assert float(new.sigma) == pytest.approx(sigma1, rel=1e-13)
    assert torch.allclose(new.p_sigma, t(ps), rtol=1e-12, atol=1e-15)
    assert torch.allclose(new.p_c, t(pc), rtol=1e-12, atol=1e-15)
    assert torch.allclose(new.C, t(C), rtol=1e-12, atol=1e-15)
    # the eigendecomposition (every generation at n = 2) reproduces C
    assert new.eigen_generation == 1
    assert torch.allclose(new.B @ torch.diag(new.D**2) @ new.B.T, new.C, rtol=1e-12, atol=1e-15)
    # the best so far is the best member, with its loss
    i = order[0]
    assert float(new.best_fitness) == float(loss[i])
    assert torch.equal(ravel(new.best), x[i])
    assert new.generation == 1
    # the second generation samples from that distribution: y = B diag(D) z
    seed2 = draw_seed(_copy(g))
    pop2, _ = algo.ask(new, generator=g)
    z2 = LocalCollective(4).noise(torch.zeros(2, dtype=torch.float64), seed2)
    y2 = (X(pop2) - new.m) / new.sigma
    assert torch.allclose(y2, (z2 * new.D) @ new.B.T, rtol=1e-12, atol=1e-14)


def _copy(g: torch.Generator) -> torch.Generator:
    h = torch.Generator()
    h.set_state(g.get_state())
    return h


def test_sepcmaes_one_generation_by_hand():
    m0, sigma0 = [0.5, 2.0, -1.0], 0.3
    algo = SepCMAES(population_size=5, sigma=sigma0, maximize=False)
    g = gen(11)
    state = algo.init(flat(m0), generator=g)
    pop, asked = algo.ask(state, generator=g)
    x = X(pop)
    loss = (torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64) * x**2).sum(1)
    new = algo.tell(asked, pop, loss, generator=g)
    n, lam = 3, 5
    r = cma_rates(n, lam, separable=True)  # checked against the formulas above
    w = r.weights.tolist()
    order = sorted(range(lam), key=lambda i: float(loss[i]))
    ys = [[(float(x[i, j]) - m0[j]) / sigma0 for j in range(n)] for i in order]
    yw = [sum(max(w[k], 0) * ys[k][j] for k in range(lam)) for j in range(n)]
    ps = [math.sqrt(r.c_sigma * (2 - r.c_sigma) * r.mueff) * v for v in yw]  # c = 1 at first
    nps = math.sqrt(sum(v * v for v in ps))
    h = 1.0 if nps / math.sqrt(1 - (1 - r.c_sigma) ** 2) < (1.4 + 2 / (n + 1)) * r.chi_n else 0.0
    pc = [h * math.sqrt(r.c_c * (2 - r.c_c) * r.mueff) * v for v in yw]
    wo = [w[k] if w[k] >= 0 else w[k] * n / sum(v * v for v in ys[k]) for k in range(lam)]
    decay = 1 + r.c_1 * (1 - h) * r.c_c * (2 - r.c_c) - r.c_1 - r.c_mu * sum(w)
    c = [decay + r.c_1 * pc[j] ** 2 + r.c_mu * sum(wo[k] * ys[k][j] ** 2 for k in range(lam)) for j in range(n)]
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    assert torch.allclose(new.m, t([m0[j] + sigma0 * yw[j] for j in range(n)]), rtol=1e-13, atol=1e-15)
    assert torch.allclose(new.c, t(c), rtol=1e-12, atol=1e-15)
    assert torch.allclose(new.p_c, t(pc), rtol=1e-12, atol=1e-15)
    sigma1 = sigma0 * math.exp(min(1.0, r.c_sigma / r.d_sigma * (nps / r.chi_n - 1)))
    assert float(new.sigma) == pytest.approx(sigma1, rel=1e-13)


# -- LM-MA-ES ------------------------------------------------------------------------------------


def test_lm_transform_is_the_sequence_of_rank_one_steps():
    g = gen(0)
    P, k, N = 7, 4, 5
    M = torch.randn(k, P, generator=g, dtype=torch.float64)
    c_d = torch.tensor([0.3, 0.2, 0.1, 0.05], dtype=torch.float64)
    z = torch.randn(N, P, generator=g, dtype=torch.float64)
    d = z.clone()
    for j in range(k):  # the paper's loop, member by member
        for i in range(N):
            d[i] = (1 - c_d[j]) * d[i] + c_d[j] * torch.dot(M[j], d[i]) * M[j]
    assert torch.allclose(lm_transform(M, c_d, k, z), d, rtol=1e-12, atol=1e-12)
    assert torch.equal(lm_transform(M, c_d, 0, z), z)
    # and lm_inverse undoes it (one vector at a time)
    for i in range(N):
        assert torch.allclose(lm_inverse(M, c_d, k, d[i]), z[i], rtol=1e-10, atol=1e-12)


def test_lm_rates_are_the_papers():
    r = lm_rates(1000, 24)
    assert r.memory == 4 + math.floor(3 * math.log(1000))
    assert r.c_sigma == pytest.approx(2 * 24 / 1000)
    assert r.c_d.tolist() == pytest.approx([1 / (1000 * 1.5**j) for j in range(r.memory)])
    assert r.c_c.tolist() == pytest.approx([24 / (1000 * 4.0**j) for j in range(r.memory)])
    raw = [math.log(12.5) - math.log(i) for i in range(1, 13)]
    assert r.weights[:12].tolist() == pytest.approx([v / sum(raw) for v in raw])
    assert r.weights[12:].tolist() == [0.0] * 12
    # small n: the learning rates capped at 1
    assert lm_rates(10, 10).c_sigma == 1.0 and float(lm_rates(10, 10).c_c[0]) == 1.0


def test_lmmaes_one_generation_by_hand():
    m0, sigma0 = [1.0, 2.0, 3.0, 4.0], 0.2
    algo = LMMAES(population_size=6, sigma=sigma0, maximize=False)
    g = gen(5)
    state = algo.init(flat(m0), generator=g)
    pop, asked = algo.ask(state, generator=g)
    x = X(pop)
    loss = (x**2).sum(1)
    new = algo.tell(asked, pop, loss, generator=g)
    n = 4
    r = lm_rates(n, 6)
    order = sorted(range(6), key=lambda i: float(loss[i]))
    w = r.weights.tolist()
    # generation 0: M = 0 so d = z; z_w = d_w
    dw = [sum(w[k] * (float(x[order[k], j]) - m0[j]) / sigma0 for k in range(6)) for j in range(n)]
    cs = min(1.0, 2 * 6 / n)
    ps = [math.sqrt(r.mueff * cs * (2 - cs)) * v for v in dw]
    sig = sigma0 * math.exp(min(1.0, cs / 2 * (sum(v * v for v in ps) / n - 1)))
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    assert torch.allclose(new.m, t([m0[j] + sigma0 * dw[j] for j in range(n)]), rtol=1e-13, atol=1e-15)
    assert float(new.sigma) == pytest.approx(sig, rel=1e-13)
    for j in range(r.memory):
        cc = float(r.c_c[j])
        expect = [math.sqrt(r.mueff * cc * (2 - cc)) * v for v in dw]
        assert torch.allclose(new.M[j], t(expect), rtol=1e-12, atol=1e-15)


# -- convergence (fixed seeds, small D) ----------------------------------------------------------


@pytest.mark.parametrize(
    "f, d, budget",
    [(sphere, 5, 2_000), (ellipsoid, 5, 6_000), (rosenbrock, 4, 8_000)],
    ids=["sphere", "ellipsoid", "rosenbrock"],
)
def test_cmaes_converges(f, d, budget):
    algo = CMAES(population_size=cma_population_size(d), sigma=0.5, maximize=False)
    x0 = flat([0.0] * d) if f is rosenbrock else flat([1.0] * d)
    used, state = evaluations_to(algo, x0, f, 1e-8, budget, seed=0)
    assert used is not None, float(state.best_fitness)
    assert float(state.best_fitness) < 1e-8


def test_sepcmaes_converges_on_a_separable_ellipsoid():
    algo = SepCMAES(population_size=8, sigma=0.5, maximize=False)
    used, state = evaluations_to(algo, flat([1.0] * 6), ellipsoid, 1e-8, 8_000, seed=1)
    assert used is not None, float(state.best_fitness)


def test_lmmaes_converges_on_the_sphere():
    algo = LMMAES(population_size=10, sigma=0.5, maximize=False)
    used, state = evaluations_to(algo, flat([1.0] * 10), sphere, 1e-8, 6_000, seed=2)
    assert used is not None, float(state.best_fitness)


def test_cmaes_on_a_float32_mixed_species():
    # 10 searched values in two dtypes; the non-operational parameter never moves
    x0 = mixed()
    target = 0.3
    algo = CMAES(population_size=10, sigma=0.5)

    def fitness(pop):
        return -((X(pop) - target) ** 2).sum(1)

    state = algo.init(x0, generator=gen(0))
    state, hist = algo.run(state, fitness, 150, generator=gen(0))
    assert float(state.best_fitness) > -1e-6
    assert hist.best_fitness.shape == (150,) and hist.sigma.shape == (150,)
    assert state.mean.params["weight"].dtype == torch.float32
    assert state.mean.params["scale"].dtype == torch.float64
    assert torch.equal(state.mean.params["frozen"], x0.params["frozen"])
    assert state.m.dtype == state.C.dtype == torch.float64
    pop, _ = algo.ask(state, generator=gen(1))
    assert torch.equal(pop.params["frozen"], x0.params["frozen"].expand(10, 3))


# -- NaN and bad input ----------------------------------------------------------------------------


def test_nan_and_inf_fitness_are_the_worst():
    algo = CMAES(population_size=6, sigma=0.5, maximize=False)
    state = algo.init(flat([1.0, 1.0, 1.0]), generator=gen(0))
    pop, asked = algo.ask(state, generator=gen(1))
    loss = sphere(pop)
    bad = loss.clone()
    i = int(torch.argmin(loss))
    bad[i] = float("nan")
    bad[(i + 1) % 6] = float("inf")
    new = algo.tell(asked, pop, bad, generator=gen(2))
    # the NaN member (the true best) is never the best nor a parent: the result equals giving
    # it, and the inf member, the same loss above every other (ties ranked by position)
    worse = loss.clone()
    worse[i] = 1e300
    worse[(i + 1) % 6] = 1e300
    ref = algo.tell(asked, pop, worse, generator=gen(2))
    assert not torch.equal(ravel(new.best), X(pop)[i])
    assert torch.equal(new.m, ref.m) and torch.equal(new.C, ref.C) and torch.equal(new.sigma, ref.sigma)
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, pop, torch.full((6,), float("nan")), generator=gen(2))


@pytest.mark.parametrize("cls", [CMAES, SepCMAES, LMMAES])
def test_bad_hyperparameters(cls):
    with pytest.raises(ValueError, match="population_size"):
        cls(population_size=1, sigma=0.5)
    for bad in (0.0, -1.0, float("nan"), float("inf") * 0):
        with pytest.raises(ValueError, match="sigma"):
            cls(population_size=4, sigma=bad)
    with pytest.raises(TypeError, match="sigma"):
        cls(population_size=4, sigma="0.5")
    with pytest.raises(ValueError, match="mu"):
        cls(population_size=4, sigma=0.5, mu=5)
    with pytest.raises(TypeError):
        cls(4, 0.5)  # keyword-only


@pytest.mark.parametrize("cls", [CMAES, SepCMAES, LMMAES])
def test_bad_input_leaves_everything_untouched(cls):
    algo = cls(population_size=4, sigma=0.5)
    # a species with a non-float operational parameter is refused by name
    p = flat([1.0, 2.0])
    sp = p.species.add_param("count", torch.tensor([3], dtype=torch.int64))
    q = nf.migrate(p, sp)
    snap = Snapshot(q)
    with pytest.raises(TypeError, match="count"):
        algo.init(q)
    assert snap.unchanged()
    # nothing to search
    empty = p.species.with_config(p.species.names[0], operational=False)
    with pytest.raises(ValueError, match="operational"):
        algo.init(nf.migrate(p, empty))
    # wrong fitness shapes
    state = algo.init(p, generator=gen(0))
    pop, asked = algo.ask(state, generator=gen(0))
    snap = Snapshot(asked, pop)
    for bad in (torch.zeros(3), torch.zeros(4, 1), torch.zeros(5)):
        with pytest.raises(PopulationSizeError, match="shape"):
            algo.tell(asked, pop, bad)
    other = SepCMAES if cls is not SepCMAES else CMAES
    with pytest.raises(TypeError, match=f"expected a {other.__name__}State"):
        other(population_size=4, sigma=0.5).tell(asked, pop, torch.zeros(4))
    assert snap.unchanged()


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CMAES, SepCMAES, LMMAES])
def test_checkpoint_and_resume_bit_for_bit(cls, tmp_path):
    algo = cls(population_size=6, sigma=0.4, maximize=False)
    g = gen(3)
    state = algo.init(flat([1.0, -1.0, 0.5, 2.0]), generator=g)
    state, _ = algo.run(state, rosenbrock, 7, generator=g)
    checkpoint.save(tmp_path / "cma.safetensors", {"state": state, "rng": g.get_state()})
    like = {"state": algo.init(flat([0.0] * 4)), "rng": g.get_state()}
    loaded = checkpoint.load(tmp_path / "cma.safetensors", like=like)
    g2 = torch.Generator()
    g2.set_state(loaded["rng"])
    a, _ = algo.run(state, rosenbrock, 9, generator=g)
    b, _ = algo.run(loaded["state"], rosenbrock, 9, generator=g2)
    for field in ("m", "sigma", "p_sigma"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(a.best_fitness, b.best_fitness) and a.generation == b.generation == 16


# -- restarts ------------------------------------------------------------------------------------


def test_ipop_solves_rastrigin_d5():
    algo = IPOP(algorithm=CMAES(population_size=cma_population_size(5), sigma=2.0), maximize=False)
    used, state = evaluations_to(algo, flat([3.0] * 5), rastrigin, 1e-8, 30_000, seed=3)
    assert used is not None, (float(state.best_fitness), state.restarts)
    assert state.restarts >= 1 and state.population_size == 8 * 2**state.restarts
    assert state.evaluations == used and state.generation > state.inner.generation


def test_ipop_restart_by_hand():
    # a flat fitness stops a run by tolfun after 10 generations; the next run starts at the
    # centre with twice the members and sigma_0
    centre = flat([1.0, 2.0, 3.0])
    algo = IPOP(algorithm=CMAES(population_size=4, sigma=0.3), maximize=False)
    state = algo.init(centre, generator=gen(0))
    g = gen(1)
    for k in range(10):
        assert state.population_size == 4 and state.restarts == 0
        state, _ = algo.step(state, lambda pop: torch.ones(pop.population_size), generator=g)
    assert state.restarts == 1 and state.reason == "tolfun"
    assert state.population_size == 8 and state.evaluations == 40 and state.run_evaluations == 0
    assert state.inner.generation == 0 and state.generation == 10
    assert torch.equal(state.inner.m, ravel(centre)) and float(state.inner.sigma) == 0.3
    pop, asked = algo.ask(state, generator=g)
    assert pop.population_size == 8
    new = algo.tell(asked, pop, sphere(pop), generator=g)
    assert new.evaluations == 48 and new.inner.generation == 1
    # restart_centre
    moved = IPOP(algorithm=CMAES(population_size=4, sigma=0.3), maximize=False,
                 restart_centre=lambda c, gen_: c * 0.0)
    state = moved.init(centre, generator=gen(0))
    for _ in range(10):
        state, _ = moved.step(state, lambda pop: torch.ones(pop.population_size), generator=g)
    assert torch.equal(state.inner.m, torch.zeros(3, dtype=torch.float64))
    bad = IPOP(algorithm=CMAES(population_size=4, sigma=0.3), restart_centre=lambda c, gen_: 1.0)
    state = bad.init(centre)
    with pytest.raises(TypeError, match="restart_centre"):
        for _ in range(10):
            state, _ = bad.step(state, lambda pop: torch.ones(pop.population_size), generator=g)


def test_bipop_regimes_share_the_evaluations():
    algo = BIPOP(algorithm=CMAES(population_size=6, sigma=2.0), maximize=False)
    state = algo.init(flat([3.0] * 3), generator=gen(0))
    g = gen(4)
    seen = []
    while state.restarts < 6:
        before = (state.restarts, state.regime, state.population_size, float(state.sigma0))
        state, _ = algo.step(state, rastrigin, generator=g)
        if state.restarts != before[0]:
            seen.append((state.regime, state.population_size, state.sigma0, state.run_limit))
            # the regime that used fewer evaluations runs next
            assert (state.regime == "small") == (state.small_evaluations < state.large_evaluations)
    assert state.large_evaluations + state.small_evaluations + state.run_evaluations == state.evaluations
    for regime, n, sigma0, limit in seen:
        if regime == "large":
            assert n in (12, 24, 48, 96) and sigma0 == 2.0 and limit == 0
        else:
            assert 6 <= n <= 48 and 2.0 * 1e-2 <= sigma0 <= 2.0 and limit > 0
    assert {r for r, *_ in seen} == {"small", "large"}


@pytest.mark.parametrize("cls", [IPOP, BIPOP])
def test_restart_checkpoint_and_resume_bit_for_bit(cls, tmp_path):
    x0 = flat([1.0, 2.0, 3.0])
    algo = cls(algorithm=CMAES(population_size=4, sigma=0.3), maximize=False)
    g = gen(2)
    state = algo.init(x0, generator=g)
    for _ in range(12):  # across one restart (flat fitness: tolfun after 10)
        state, _ = algo.step(state, lambda pop: torch.ones(pop.population_size), generator=g)
    assert state.restarts == 1
    checkpoint.save(tmp_path / "r.safetensors", {"state": state, "rng": g.get_state()})
    like = {"state": algo.template(x0, population_size=state.population_size), "rng": g.get_state()}
    loaded = checkpoint.load(tmp_path / "r.safetensors", like=like)
    g2 = torch.Generator()
    g2.set_state(loaded["rng"])
    a, ha = algo.run(state, rastrigin, 5, generator=g)
    b, hb = algo.run(loaded["state"], rastrigin, 5, generator=g2)
    assert torch.equal(a.inner.m, b.inner.m) and torch.equal(a.inner.C, b.inner.C)
    assert torch.equal(ha.best_fitness, hb.best_fitness) and torch.equal(ha.sigma, hb.sigma)


def test_restart_bad_input():
    with pytest.raises(TypeError, match="algorithm"):
        IPOP(algorithm=object())
    with pytest.raises(ValueError, match="increase"):
        IPOP(algorithm=CMAES(population_size=4, sigma=1.0), increase=1.0)
    with pytest.raises(ValueError, match="max_restarts"):
        BIPOP(algorithm=CMAES(population_size=4, sigma=1.0), max_restarts=-1)
    algo = IPOP(algorithm=SepCMAES(population_size=4, sigma=1.0))
    assert algo.maximize is True and IPOP(algorithm=LMMAES(population_size=4, sigma=1.0, maximize=False)).maximize is False
    state = algo.init(flat([1.0, 2.0]))
    pop, asked = algo.ask(state, generator=gen(0))
    snap = Snapshot(asked, pop)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, pop, torch.zeros(3))
    with pytest.raises(TypeError, match="expected a IPOPState|expected an IPOPState"):
        algo.tell(BIPOP(algorithm=SepCMAES(population_size=4, sigma=1.0)).init(flat([1.0, 2.0])), pop, torch.zeros(4))
    assert snap.unchanged()


@pytest.mark.parametrize("cls", [CMAES, SepCMAES, LMMAES])
@pytest.mark.parametrize("d", [1, 2])
def test_tiny_dimensions(cls, d):
    # a merge of two or three models searches one or two coefficients
    algo = cls(population_size=cma_population_size(d), sigma=0.3, maximize=False)
    used, state = evaluations_to(algo, flat([1.0] * d), sphere, 1e-8, 3_000, seed=0)
    assert used is not None, float(state.best_fitness)


def test_cmaes_float32_option_keeps_its_state_in_float32_and_converges():
    from torch import nn

    import nytorch_fn as nf
    from nytorch_fn.algorithms import CMAES

    p = nf.particle(nn.Linear(5, 2))

    def loss(pop):
        return sum(((t.double() - 0.3) ** 2).flatten(1).sum(1) for t in pop.tensors)

    a = CMAES(population_size=12, sigma=0.5, dtype=torch.float32, maximize=False)
    s = a.init(p, generator=torch.Generator().manual_seed(0))
    s, _ = a.run(s, loss, 150, generator=torch.Generator().manual_seed(0))
    assert {s.m.dtype, s.C.dtype, s.B.dtype, s.D.dtype, s.p_sigma.dtype, s.p_c.dtype} == {torch.float32}
    assert s.sigma.dtype == torch.float64
    assert float(s.best_fitness) < 1e-6
    with pytest.raises((TypeError, ValueError), match="dtype"):
        CMAES(population_size=12, sigma=0.5, dtype=torch.int64)
