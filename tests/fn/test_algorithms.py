"""The five ported algorithms (APSO, GA, Hybrid, OpenAI-ES, PBT), fitness shaping and search spaces:
each update against a hand computation in plain torch on a tiny case, convergence with fixed seeds,
bad hyperparameters. (The protocol itself, for every algorithm, is tests/fn/test_protocol.py.)"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nytorch_fn as nf
from nytorch_fn import optim
from nytorch_fn._algorithms._base import NOISE_BLOCK, LocalCollective, _quantized_weighted, stream_seed
from nytorch_fn.algorithms import (
    APSO,
    PBT,
    GeneticAlgorithm,
    Hybrid,
    OpenAIES,
    centered_ranks,
    compose,
    enforce_bounds,
    identity,
    normalized,
    ravel,
    ravel_size,
    uniform_population,
    unravel,
    z_score,
)
from tests.helpers import Snapshot, mlp, tensor_equal, tree_equal


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _template() -> nf.Particle:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nf.particle(nn.Linear(3, 2))


TEMPLATE = _template()  # 8 parameters, the same values in every process


def vector(d: int) -> nf.Particle:
    m = nn.Module()
    m.w = nn.Parameter(torch.zeros(d))
    return nf.particle(m)


def sq_dist(pop: nf.Particle, c: float = 1.5) -> torch.Tensor:
    """``sum (w - c)^2`` over every parameter, per member: ``[N]``, minimum 0."""
    return sum(((t - c) ** 2).flatten(1).sum(1) for t in pop.tensors)


def start_population(n: int, seed: int, template: nf.Particle = TEMPLATE) -> nf.Particle:
    return nf.random_population(template, n, generator=gen(seed))


def base_seed(g: torch.Generator) -> int:
    """The documented per-generation seed: ``randint(0, 2**63 - 1, (1,))`` from the generator."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=g)[0])


def stream_noise(base: int, members, p: int, *, n: int, antithetic: bool = False, draw=torch.randn) -> torch.Tensor:
    """The documented noise blocks in plain torch: ``[len(members), p]`` float32. Block ``j`` (members
    ``[32 j, 32 j + 32)`` of ``n``) is one ``draw(h, p)`` from a generator seeded ``stream_seed(base, j)``;
    antithetic: ``h = ceil(r / 2)`` rows, member ``32 j + q`` is row ``q`` and member ``32 j + h + q`` its negation."""
    assert NOISE_BLOCK == 32
    rows = {}
    for j in range((n + 31) // 32):
        b0, b1 = 32 * j, min(32 * j + 32, n)
        h = (b1 - b0 + 1) // 2 if antithetic else b1 - b0
        z = draw(h, p, generator=torch.Generator().manual_seed(stream_seed(base, j)))
        for q in range(b1 - b0):
            rows[b0 + q] = (z[q] if q < h else -z[q - h]) if antithetic else z[q]
    return torch.stack([rows[i] for i in members])


def flat(pop: nf.Particle) -> torch.Tensor:
    return torch.cat([t.flatten(1) for t in pop.tensors], 1)


# -- shaping ----------------------------------------------------------------------------------------


def test_centered_ranks_against_hand_computation():
    f = torch.tensor([3.0, float("nan"), 1.0, 2.0, 1.0])
    # ranks (NaN worst, ties by position): nan 0, 1.0@2 -> 1, 1.0@4 -> 2, 2.0 -> 3, 3.0 -> 4
    assert torch.equal(centered_ranks(f), torch.tensor([0.5, -0.5, -0.25, 0.25, 0.0], dtype=torch.float64))
    # as losses: the lowest is best; the tied 1.0s by position (the later one ranks higher)
    assert torch.equal(centered_ranks(f, maximize=False)[[2, 4, 0]], torch.tensor([0.25, 0.5, -0.25], dtype=torch.float64))


def test_z_score_normalized_identity_and_compose_by_hand():
    s = torch.tensor([1.0, 2.0, 6.0, float("-inf")], dtype=torch.float64)
    clipped = torch.tensor([1.0, 2.0, 6.0, 1.0], dtype=torch.float64)  # -inf -> the lowest finite
    mean = clipped.mean()
    std = ((clipped - mean) ** 2).mean().sqrt()
    assert torch.allclose(z_score(s), (clipped - mean) / std)
    assert torch.equal(normalized(s), torch.tensor([0.0, 0.2, 1.0, 0.0], dtype=torch.float64))
    assert torch.equal(identity(s), s)
    assert torch.equal(z_score(torch.ones(3)), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(normalized(torch.ones(2)), torch.full((2,), 0.5, dtype=torch.float64))
    shape = compose(centered_ranks, lambda x: 2 * x)
    assert torch.equal(shape(torch.tensor([3.0, 1.0, 2.0])), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        compose()
    with pytest.raises(TypeError):
        compose("ranks")
    with pytest.raises(TypeError):
        z_score(torch.ones(2, 2))


# -- search spaces ----------------------------------------------------------------------------------


def test_ravel_unravel_round_trip_views_and_gradients():
    p = TEMPLATE
    flat1 = ravel(p)
    assert flat1.shape == (ravel_size(p.species),) == (8,)
    assert torch.equal(flat1, torch.cat([t.reshape(-1) for t in p.tensors]))
    assert tree_equal(unravel(flat1, p), p)
    pop = start_population(5, 0)
    assert ravel(pop).shape == (5, 8) and tree_equal(unravel(ravel(pop), pop), pop)
    # one tensor: views both ways
    v = vector(6)
    x = ravel(v)
    assert x.data_ptr() == v.tensors[0].data_ptr()
    y = torch.randn(4, 6)
    assert unravel(y, v).tensors[0].data_ptr() == y.data_ptr()
    # differentiable
    w = torch.randn(8, requires_grad=True)
    loss = (unravel(w, p).params["weight"] ** 2).sum()
    loss.backward()
    assert torch.equal(w.grad[:6], 2 * w.detach()[:6]) and torch.equal(w.grad[6:], torch.zeros(2))


def test_ravel_promotes_mixed_dtypes_and_skips_non_operational_parameters():
    sp = TEMPLATE.species.add_param("scale", torch.ones(2, dtype=torch.float64)).with_config("bias", operational=False)
    p = nf.migrate(TEMPLATE, sp)
    x = ravel(p)
    assert x.dtype == torch.float64 and x.shape == (8,)  # 6 weights + 2 scale values, no bias
    q = unravel(x * 2, p)
    assert q.params["weight"].dtype == torch.float32 and torch.equal(q.params["bias"], p.params["bias"])
    assert torch.equal(q.params["scale"], 2 * p.params["scale"])
    bad = nf.migrate(TEMPLATE, TEMPLATE.species.add_param("count", torch.zeros(2, dtype=torch.int64)))
    with pytest.raises(TypeError, match="'count'"):
        ravel(bad)
    with pytest.raises(nf.OperandShapeError, match=r"\(8,\)"):
        unravel(torch.zeros(7), TEMPLATE)


def test_uniform_population_and_bound_handling_by_hand():
    pop = uniform_population(TEMPLATE, 50, -2.0, 3.0, generator=gen(0))
    g = gen(0)
    for t, name in zip(pop.tensors, TEMPLATE.species.names):
        u = torch.rand((50, *TEMPLATE.params[name].shape), generator=g)
        assert torch.equal(t, -2.0 + u * 5.0)
    low = TEMPLATE * 0 - 1
    high = TEMPLATE * 0 + torch.tensor(1.0)
    pop2 = uniform_population(TEMPLATE, 20, low, high, generator=gen(1))
    assert all(bool(((t >= -1) & (t < 1)).all()) for t in pop2.tensors)
    x = torch.tensor([[-3.5, -1.0, 0.3, 1.0, 2.5, 7.0]])
    v = unravel(x, vector(6))
    clipped = enforce_bounds(v, (-1.0, 1.0), "clip").tensors[0]
    assert torch.equal(clipped, x.clamp(-1, 1))
    reflected = enforce_bounds(v, (-1.0, 1.0), "reflect").tensors[0]
    # -3.5 -> 0.5 (two reflections), 2.5 -> -0.5, 7.0 -> -1.0; values inside stay bit for bit
    assert torch.allclose(reflected, torch.tensor([[0.5, -1.0, 0.3, 1.0, -0.5, -1.0]]))
    assert torch.equal(reflected[0, 2], x[0, 2])
    with pytest.raises(ValueError, match="finite"):
        enforce_bounds(v, (0.0, math.inf), "reflect")
    with pytest.raises(ValueError, match="low <= high"):
        uniform_population(TEMPLATE, 3, 1.0, 0.0)


# -- APSO ---------------------------------------------------------------------------------------------


def test_apso_minimises_a_quadratic():
    apso = APSO(alpha=0.3, beta=0.3, alpha_decay=0.95, maximize=False)
    pop = start_population(40, 0)
    assert float(sq_dist(pop).min()) > 5.0
    state, history = apso.run(apso.init(pop), sq_dist, 120, generator=gen(1))
    assert state.generation == 120
    assert float(state.best_fitness) < 1e-2  # target: within 1e-2 of the optimum 0
    assert math.isclose(float(sq_dist(nf.stack([state.best]))[0]), float(state.best_fitness), rel_tol=1e-5)
    assert bool((history.best_fitness[1:] <= history.best_fitness[:-1]).all())  # the best never gets worse


def test_apso_move_matches_the_formula_in_plain_torch():
    alpha, beta, decay = 0.3, 0.25, 0.5
    apso = APSO(alpha=alpha, beta=beta, alpha_decay=decay)  # maximize
    pop = start_population(5, 2)
    fitness = torch.tensor([0.1, 3.0, -1.0, float("nan"), 2.0])
    p1, s1 = apso.ask(apso.init(pop), generator=gen(4))
    s2 = apso.tell(s1, p1, fitness, generator=gen(4))
    assert tree_equal(s2.best, pop[1])  # member 1 is the best; the NaN one never is
    g = gen(4)
    noise = stream_noise(base_seed(g), range(5), 8, n=5)  # W_r: member i is row i of block 0
    for k, (name, new) in enumerate(s2.population.params.items()):
        old = pop.params[name]
        off = sum(TEMPLATE.params[m].numel() for m in TEMPLATE.species.names[:k])
        r = noise[:, off:off + old[0].numel()].reshape(old.shape)
        want = (old * (1 - beta)).add_(pop.params[name][1], alpha=beta).add_(r, alpha=alpha)  # nf.lincomb's numerics
        assert torch.equal(new, want)
    # generation 1: alpha_t = alpha * decay
    p2, s3 = apso.ask(s2)
    s4 = apso.tell(s3, p2, torch.zeros(5), generator=gen(5))
    noise = stream_noise(base_seed(gen(5)), range(5), 8, n=5)
    w = s4.population.params["weight"]
    want = (p2.params["weight"] * (1 - beta)).add_(s3.best.params["weight"], alpha=beta).add_(
        noise[:, :6].reshape(5, 2, 3), alpha=alpha * decay)
    assert torch.equal(w, want)


def test_apso_bounds_keep_every_member_inside():
    for handling in ("clip", "reflect"):
        apso = APSO(alpha=2.0, beta=0.1, bounds=(-0.5, 0.5), bound_handling=handling)
        state, _ = apso.run(apso.init(start_population(16, 0)), lambda p: -sq_dist(p), 5, generator=gen(0))
        assert all(bool(((t >= -0.5) & (t <= 0.5)).all()) for t in state.population.tensors), handling


@pytest.mark.parametrize("kwargs, error, message", [
    ({"alpha": -0.1}, ValueError, r"APSO: alpha: expected a value in \[0.0, inf\], got -0.1"),
    ({"beta": 1.5}, ValueError, r"APSO: beta"),
    ({"alpha_decay": 0.0}, ValueError, r"APSO: alpha_decay"),
    ({"maximize": 1}, TypeError, r"APSO: maximize: expected a bool"),
    ({"bounds": (1.0, 0.0)}, ValueError, r"low <= high"),
    ({"bounds": 3.0}, TypeError, r"bounds expects \(low, high\)"),
    ({"bound_handling": "wrap"}, ValueError, r"'clip', 'reflect'"),
])
def test_apso_hyperparameters_out_of_range(kwargs, error, message):
    with pytest.raises(error, match=message):
        APSO(**kwargs)


# -- genetic algorithm ----------------------------------------------------------------------------


def test_ga_improves_mean_fitness():
    ga = GeneticAlgorithm(tournament_size=3, crossover="blend", mutation_std=0.05, elitism=2)
    pop = start_population(30, 0)
    state, history = ga.run(ga.init(pop), lambda p: -sq_dist(p), 60, generator=gen(1))
    assert float(history.mean_fitness[-1]) > 0.01 * float(history.mean_fitness[0])  # mean loss 100x smaller
    assert float(state.best_fitness) > -0.02  # target: the best within 0.02 of the optimum 0


def _parents(ga: GeneticAlgorithm, score: torch.Tensor, g: torch.Generator) -> tuple:
    """The documented draws of a tell, in plain torch: (elites, A, B, crossed)."""
    n = score.shape[0]
    m = n - ga.elitism
    elites = torch.argsort(score, descending=True, stable=True)[: ga.elitism]
    contestants = torch.randint(0, n, (2, m, ga.tournament_size), generator=g)
    wins = score[contestants].argmax(-1, keepdim=True)
    parents = contestants.gather(-1, wins).squeeze(-1)
    crossed = torch.rand(m, generator=g) < ga.crossover_rate
    return elites, parents[0], parents[1], crossed


def test_ga_elites_selection_and_element_crossover_by_hand():
    ga = GeneticAlgorithm(tournament_size=2, crossover="uniform", crossover_rate=0.7, mutation_std=0.0, elitism=2)
    pop = start_population(8, 1, vector(5))  # one tensor: element granularity (the default) still mixes
    fitness = torch.tensor([0.5, 3.0, -1.0, 2.0, float("nan"), 0.0, 1.0, 4.0])
    p, s = ga.ask(ga.init(pop))
    new = ga.tell(s, p, fitness, generator=gen(3))
    g = gen(3)
    score = torch.where(fitness.isnan(), torch.tensor(-math.inf), fitness).double()
    elites, a, b, crossed = _parents(ga, score, g)
    z = stream_noise(base_seed(g), range(8), 5, n=8)  # the crossover noise of each row
    x = pop.tensors[0]
    got = new.population.tensors[0]
    assert torch.equal(got[:2], x[elites]) and elites.tolist() == [7, 1]
    for c in range(6):
        want = torch.where((z[2 + c] < 0) & crossed[c], x[b[c]], x[a[c]])
        assert torch.equal(got[2 + c], want), c
    assert 4 not in a.tolist() or True  # NaN is the worst: it only wins a tournament against itself
    mixed = [c for c in range(6) if crossed[c] and not (torch.equal(got[2 + c], x[a[c]]) or torch.equal(got[2 + c], x[b[c]]))]
    assert mixed  # element crossover mixes the two parents of a one-tensor species


def test_ga_tensor_granularity_takes_whole_tensors_and_blend_lies_between_parents():
    ga = GeneticAlgorithm(crossover="uniform", granularity="tensor", crossover_rate=1.0, mutation_std=0.0, elitism=0)
    pop = start_population(10, 2)
    p, s = ga.ask(ga.init(pop))
    new = ga.tell(s, p, torch.arange(10.0), generator=gen(0))
    for t_new, t_old in zip(new.population.tensors, pop.tensors):
        for i in range(10):
            assert any(torch.equal(t_new[i], t_old[j]) for j in range(10))
    blend = GeneticAlgorithm(crossover="blend", blend_alpha=0.0, crossover_rate=1.0, mutation_std=0.0, elitism=0)
    p, s = blend.ask(blend.init(pop))
    out = blend.tell(s, p, torch.arange(10.0), generator=gen(1))
    g = gen(1)
    _, a, b, _ = _parents(blend, torch.arange(10.0, dtype=torch.float64), g)
    for t_new, t_old in zip(out.population.tensors, pop.tensors):
        lo = torch.minimum(t_old[a], t_old[b]) - 1e-6
        hi = torch.maximum(t_old[a], t_old[b]) + 1e-6
        assert bool(((t_new >= lo) & (t_new <= hi)).all())


def test_ga_mutation_and_bounds():
    ga = GeneticAlgorithm(crossover="none", mutation_std=0.5, mutation_rate=1.0, elitism=0, bounds=(-1.0, 1.0))
    pop = start_population(12, 0) * 0.1
    state, _ = ga.run(ga.init(pop), lambda p: -sq_dist(p), 4, generator=gen(0))
    assert all(bool(((t >= -1) & (t <= 1)).all()) for t in state.population.tensors)
    ga0 = GeneticAlgorithm(crossover="none", mutation_std=0.3, elitism=0)
    p, s = ga0.ask(ga0.init(pop))
    new = ga0.tell(s, p, torch.zeros(12), generator=gen(2))
    g = gen(2)
    _, a, _, _ = _parents(ga0, torch.zeros(12, dtype=torch.float64), g)
    z = stream_noise(base_seed(g), range(12), 8, n=12)  # mutation noise (no crossover stream: "none")
    assert torch.allclose(flat(new.population), flat(pop)[a] + 0.3 * z, atol=1e-6)


def test_ga_bad_hyperparameters():
    with pytest.raises(ValueError, match="tournament_size"):
        GeneticAlgorithm(tournament_size=0)
    with pytest.raises(ValueError, match=r"crossover expects one of \['uniform', 'blend', 'none'\]"):
        GeneticAlgorithm(crossover="one-point")
    with pytest.raises(ValueError, match="granularity"):
        GeneticAlgorithm(granularity="layer")
    with pytest.raises(ValueError, match="elitism expects at most the population size 4, got 5"):
        GeneticAlgorithm(elitism=5).init(start_population(4, 0))
    assert GeneticAlgorithm().granularity == "element"


# -- hybrid -------------------------------------------------------------------------------------------


def _regression(seed: int = 0):
    g = gen(seed)
    x = torch.randn(64, 4, generator=g)
    y = torch.sin(x @ torch.tensor([1.0, -2.0, 0.5, 1.0])).unsqueeze(1)
    return x, y


def _mse(member: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(nf.apply(member, x), y)


def test_hybrid_reduces_the_loss_of_a_tiny_regression():
    x, y = _regression()
    pop = nf.init_population(mlp(0, (4, 16, 1)), 8, generator=gen(0))
    snap = Snapshot(pop, x, y)
    hybrid = Hybrid(loss=_mse, optimizer=optim.adam(0.03), batches=lambda g: (x, y), every=5, subset=3, alpha=0.5)
    first = torch.func.vmap(_mse, in_dims=(0, None, None))(pop, x, y)
    state, history = hybrid.run(hybrid.init(pop), lambda p: -torch.func.vmap(_mse, in_dims=(0, None, None))(p, x, y),
                                8, generator=gen(1))
    assert snap.unchanged()
    assert state.steps == 40 and state.losses.shape == (8,)
    final = torch.func.vmap(_mse, in_dims=(0, None, None))(state.population, x, y)
    # target: every member below half the initial mean loss, and the best below 15% of it
    assert float(final.max()) < 0.5 * float(first.mean())
    assert float(final.min()) < 0.15 * float(first.mean())


def test_hybrid_ask_is_sgd_on_each_member_in_plain_torch():
    x, y = _regression(1)
    pop = nf.init_population(mlp(0, (4, 8, 1)), 3, generator=gen(0))
    hybrid = Hybrid(loss=_mse, optimizer=optim.sgd(0.1), batches=lambda g: (x, y), every=1, subset=3)
    trained, state = hybrid.ask(hybrid.init(pop))
    for i, module in enumerate(nf.to_modules(pop)):
        loss = F.mse_loss(module(x), y)
        loss.backward()
        assert torch.allclose(state.losses[i], loss.detach().double(), atol=1e-6)
        for name, param in module.named_parameters():
            assert torch.allclose(trained.params[name][i], param.detach() - 0.1 * param.grad, atol=1e-6)


def test_hybrid_per_member_batches_drawn_from_the_generator():
    x, y = _regression(2)

    def batches(g):
        idx = torch.randint(0, 64, (4, 8), generator=g)
        return x[idx], y[idx]

    pop = nf.init_population(mlp(0, (4, 8, 1)), 4, generator=gen(0))
    hybrid = Hybrid(loss=_mse, optimizer=optim.sgd(0.1), batches=batches, in_dims=(0, 0), every=1)
    trained, state = hybrid.ask(hybrid.init(pop), generator=gen(7))
    idx = torch.randint(0, 64, (4, 8), generator=gen(7))
    for i, module in enumerate(nf.to_modules(pop)):
        loss = F.mse_loss(module(x[idx[i]]), y[idx[i]])
        assert torch.allclose(state.losses[i], loss.detach().double(), atol=1e-6)


def test_hybrid_tell_blends_exactly_the_drawn_subset_toward_the_best():
    pop = start_population(6, 3)
    fitness = torch.tensor([0.0, 1.0, 9.0, 2.0, float("nan"), 3.0])  # best: member 2
    alpha = 0.4
    hybrid = Hybrid(loss=lambda p: sum((t ** 2).sum() for t in p.tensors), subset=3, alpha=alpha, every=1)
    state = hybrid.init(pop)
    asked = state._replace(asked=hybrid.ask(state)[1].asked)
    trained, asked = hybrid.ask(state)
    snap = Snapshot(trained, fitness)
    new = hybrid.tell(asked, trained, fitness, generator=gen(5))
    assert snap.unchanged()
    chosen = set(torch.randperm(6, generator=gen(5))[:3].tolist())
    for name, got in new.population.params.items():
        old = trained.params[name]
        for i in range(6):
            want = alpha * old[2] + (1 - alpha) * old[i] if i in chosen else old[i]
            assert torch.equal(got[i], want)


def test_hybrid_bad_input():
    pop = start_population(4, 0)
    loss = lambda p: sum((t ** 2).sum() for t in p.tensors)  # noqa: E731
    with pytest.raises(ValueError, match=r"population size 4, got subset=5"):
        Hybrid(loss=loss, subset=5).init(pop)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0.0, 1.0\], got 1.2"):
        Hybrid(loss=loss, alpha=1.2)
    with pytest.raises(ValueError, match="every"):
        Hybrid(loss=loss, every=0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        Hybrid(loss=loss, optimizer="sgd")
    with pytest.raises(TypeError, match="loss"):
        Hybrid(loss="mse")
    with pytest.raises(TypeError, match="in_dims"):
        Hybrid(loss=loss, in_dims=(1,))
    bad = Hybrid(loss=loss, batches=lambda g: [1], every=1)
    with pytest.raises(TypeError, match="tuple"):
        bad.ask(bad.init(pop))


# -- OpenAI-ES ---------------------------------------------------------------------------------------


def test_es_minimises_a_quadratic_with_a_sigma_schedule():
    es = OpenAIES(population_size=32, sigma=0.3, sigma_decay=0.98, sigma_limit=0.01,
                  optimizer=optim.adam(0.05), maximize=False)
    state, history = es.run(es.init(TEMPLATE), sq_dist, 150, generator=gen(0))
    assert float(sq_dist(nf.stack([state.mean]))[0]) < 1e-2  # target: the mean within 1e-2 of the optimum
    want = [max(0.3 * 0.98 ** (t + 1), 0.01) for t in range(150)]
    assert torch.allclose(history.sigma, torch.tensor(want, dtype=torch.float64))
    sched = OpenAIES(population_size=4, sigma=0.5, sigma_schedule=lambda t: 1 / (1 + t))
    _, h = sched.run(sched.init(TEMPLATE), sq_dist, 3, generator=gen(0))
    assert torch.allclose(h.sigma, torch.tensor([0.25, 0.5 / 3, 0.125], dtype=torch.float64))


@pytest.mark.parametrize("antithetic", [True, False])
def test_es_noise_follows_the_documented_member_streams(antithetic):
    es = OpenAIES(population_size=6, sigma=0.1, antithetic=antithetic)
    pop, state = es.ask(es.init(TEMPLATE), generator=gen(3))
    eps = stream_noise(base_seed(gen(3)), range(6), 8, n=6, antithetic=antithetic)
    assert torch.equal(flat(state.noise), eps)
    mean = torch.cat([t.reshape(-1) for t in TEMPLATE.tensors])
    assert torch.equal(flat(pop), torch.add(mean, eps, alpha=0.1))
    assert state.seed == base_seed(gen(3))
    # any block of members alone draws the same rows
    coll = LocalCollective(6)
    coll.rows = range(3, 5)
    assert torch.equal(flat(coll.noise(TEMPLATE, state.seed, antithetic=antithetic)), eps[3:5])


@pytest.mark.parametrize("exact", [False, True])
def test_es_update_matches_the_estimator_in_plain_torch(exact):
    lr, sigma, n = 0.05, 0.1, 8
    es = OpenAIES(population_size=n, sigma=sigma, optimizer=optim.sgd(lr), exact=exact, shaping=z_score)
    pop, state = es.ask(es.init(TEMPLATE), generator=gen(0))
    fitness = -sq_dist(pop)
    new = es.tell(state, pop, fitness)
    w = z_score(fitness.double())
    g = (w.float() @ flat(state.noise)) / (n * sigma)  # the ascent direction of the shaped fitness
    want = torch.cat([t.reshape(-1) for t in TEMPLATE.tensors]) + lr * g
    got = torch.cat([t.reshape(-1) for t in new.mean.tensors])
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("rows", [(0, 70), (5, 37), (31, 33), (32, 64), (33, 34), (64, 70), (1, 69)])
def test_noise_blocks_give_any_split_of_the_members_the_same_rows(antithetic, rows):
    # 70 members: blocks [0, 32), [32, 64), [64, 70); a rank's rows cut blocks anywhere
    n, base = 70, 2**64 - 1
    want = stream_noise(base, range(n), 8, n=n, antithetic=antithetic)
    coll = LocalCollective(n)
    coll.rows = range(*rows)
    got = flat(coll.noise(TEMPLATE, base, antithetic=antithetic))
    assert torch.equal(got, want[rows[0]:rows[1]])
    # inside run (the loop's scratch block buffer) the same bits
    from nytorch_fn._algorithms import _base
    token = _base._WORKSPACE.set({})
    try:
        again = flat(coll.noise(TEMPLATE, base, antithetic=antithetic))
    finally:
        _base._WORKSPACE.reset(token)
    assert torch.equal(again, want[rows[0]:rows[1]])


class _TwoDtypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(3))
        self.b = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("antithetic", [False, True])
def test_noise_blocks_draw_each_dtype_buffer_in_turn_from_the_block_stream(antithetic):
    # two dtype groups: per block, one draw of [h, 3] float32 then one of [h, 4] float64 from the
    # same generator; a split that cuts blocks gets the same rows of both
    n, base = 40, 77
    template = nf.particle(_TwoDtypes())
    rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for j in range(2):
        b0, b1 = 32 * j, min(32 * j + 32, n)
        h = (b1 - b0 + 1) // 2 if antithetic else b1 - b0
        g = torch.Generator().manual_seed(stream_seed(base, j))
        za, zb = torch.randn(h, 3, generator=g), torch.randn(h, 4, generator=g, dtype=torch.float64)
        for q in range(b1 - b0):
            if antithetic:
                rows[b0 + q] = (za[q], zb[q]) if q < h else (-za[q - h], -zb[q - h])
            else:
                rows[b0 + q] = (za[q], zb[q])
    for lo, hi in [(0, 40), (7, 35), (33, 40)]:
        coll = LocalCollective(n)
        coll.rows = range(lo, hi)
        z = coll.noise(template, base, antithetic=antithetic)
        assert z.params["a"].dtype == torch.float32 and z.params["b"].dtype == torch.float64
        assert torch.equal(z.params["a"], torch.stack([rows[i][0] for i in range(lo, hi)]))
        assert torch.equal(z.params["b"].reshape(hi - lo, 4), torch.stack([rows[i][1] for i in range(lo, hi)]))


def test_noise_refuses_members_outside_the_population():
    coll = LocalCollective(6)
    coll.rows = range(4, 8)
    with pytest.raises(ValueError, match=r"within \[0, 6\)"):
        coll.noise(TEMPLATE, 1)


@pytest.mark.parametrize("uniform", [False, True])
def test_collective_noise_streams_uniform_option_and_out_buffers(uniform):
    coll = LocalCollective(6)
    base = 987654321
    draw = torch.rand if uniform else torch.randn
    want = stream_noise(base, range(6), 8, n=6, draw=draw)
    z = coll.noise(TEMPLATE, base, uniform=uniform)
    assert torch.equal(flat(z), want)
    if uniform:
        assert bool(((flat(z) >= 0) & (flat(z) < 1)).all())
    # drawn into the buffers of an earlier draw: the same bits, the same storage
    ptrs = [t.data_ptr() for t in z.tensors]
    again = coll.noise(TEMPLATE, base + 1, uniform=uniform, out=z)
    assert [t.data_ptr() for t in again.tensors] == ptrs
    assert torch.equal(flat(again), flat(coll.noise(TEMPLATE, base + 1, uniform=uniform)))
    # a tensor template and its out buffer
    t = coll.noise(torch.zeros(3, 2, dtype=torch.float64), base, uniform=uniform)
    t2 = coll.noise(torch.zeros(3, 2, dtype=torch.float64), base, uniform=uniform, out=torch.empty(6, 3, 2, dtype=torch.float64))
    assert t.shape == (6, 3, 2) and torch.equal(t, t2)
    # a buffer that does not fit is not written: a fresh draw instead
    small = torch.zeros(5, 3, 2, dtype=torch.float64)
    assert torch.equal(coll.noise(torch.zeros(3, 2, dtype=torch.float64), base, uniform=uniform, out=small), t)
    assert torch.equal(small, torch.zeros(5, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="antithetic"):
        coll.noise(TEMPLATE, base, uniform=True, antithetic=True)


def test_local_take_copies_members_and_writes_into_out():
    pop = start_population(5, 0)
    coll = LocalCollective(5)
    idx = torch.tensor([4, 0, 0, 2])
    taken = coll.take(pop, idx)
    assert tree_equal(taken, pop[idx])
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(taken.tensors, pop.tensors))
    buf = start_population(4, 1)
    ptrs = [t.data_ptr() for t in buf.tensors]
    into = coll.take(pop, idx, out=buf)
    assert tree_equal(into, pop[idx]) and [t.data_ptr() for t in into.tensors] == ptrs
    # out sharing storage with the source, or of another size: a fresh copy, the source untouched
    snap = Snapshot(pop)
    assert tree_equal(coll.take(pop, idx[:2], out=pop[:2]), pop[idx[:2]])
    assert tree_equal(coll.take(pop, idx, out=start_population(3, 1)), pop[idx])
    assert snap.unchanged()


def test_exact_weighted_sum_is_an_integer_sum_of_the_documented_roundings_for_any_split():
    x = torch.randn(200, 37, generator=gen(0)) * 3
    w = torch.randn(200, dtype=torch.float64, generator=gen(1))
    pop = unravel(x, vector(37))
    got = LocalCollective(200).weighted_sum(pop, w, exact=True).tensors[0]
    # by hand: weights to 2**-22 of max|w|, values to 2**-24 of max|x| (both powers of two), an exact sum
    ew = math.frexp(float(w.abs().max()))[1]
    ex = math.frexp(float(x.abs().max()))[1]
    qw = torch.round(w * 2.0 ** (22 - ew)).long()
    qx = torch.round(x.double() * 2.0 ** (24 - ex)).long()
    total = (qw[:, None] * qx).sum(0)  # int64: exact
    assert torch.equal(got, (total.double() * 2.0 ** (ex + ew - 46)).float())
    assert torch.allclose(got, (w.float() @ x), atol=1e-4)
    # partial sums over any split of the members add up to the same integers
    parts = sum(_quantized_weighted(x[a:b], qw[a:b].double(), 2.0 ** (24 - ex)) for a, b in ((0, 7), (7, 130), (130, 200)))
    assert torch.equal(parts, total)


def test_es_bad_input():
    with pytest.raises(ValueError, match="even"):
        OpenAIES(population_size=5)
    with pytest.raises(ValueError, match="sigma"):
        OpenAIES(sigma=0.0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        OpenAIES(optimizer="adam")
    with pytest.raises(TypeError, match="shaping"):
        OpenAIES(shaping="ranks")
    with pytest.raises(ValueError, match="either sigma_schedule or sigma_decay"):
        OpenAIES(sigma_decay=0.9, sigma_schedule=lambda t: 1.0)
    with pytest.raises(ValueError, match="sigma_decay"):
        OpenAIES(sigma_decay=1.5)
    with pytest.raises(nf.NotAPopulationError, match="single"):
        OpenAIES(population_size=2).init(start_population(2, 0))


# -- population-based training ----------------------------------------------------------------------


def _quadratic_loss(p: nf.Particle) -> torch.Tensor:
    return sum(((t - 1.5) ** 2).sum() for t in p.tensors)


def _sgd_round(pop, hp, g):
    """Ten SGD steps per member with its own learning rate."""
    for _ in range(10):
        grads = torch.func.vmap(torch.func.grad(_quadratic_loss))(pop)
        pop = pop - grads * hp["lr"]
    return pop


def test_pbt_draws_hyperparameters_into_the_state_and_copies_the_best_to_the_worst():
    pbt = PBT(hyperparams={"lr": (1e-3, 1.0, "log"), "wd": (0.0, 0.1)}, fraction=0.25, perturb_factors=(0.5, 2.0))
    pop = start_population(8, 0)
    state = pbt.init(pop, generator=gen(0))
    g = gen(0)
    u_lr = torch.rand(8, generator=g, dtype=torch.float64)  # sorted names: lr, then wd
    u_wd = torch.rand(8, generator=g, dtype=torch.float64)
    assert torch.allclose(state.hyperparams["lr"], torch.exp(math.log(1e-3) + u_lr * (math.log(1.0) - math.log(1e-3))))
    assert torch.equal(state.hyperparams["wd"], 0.1 * u_wd)
    assert list(state.hyperparams) == ["lr", "wd"] and torch.equal(state.source, torch.arange(8))
    pop1, asked = pbt.ask(state)  # no train: the population as it is
    fitness = torch.tensor([5.0, 1.0, 7.0, float("nan"), 6.0, 4.0, 3.0, 2.0])  # best 2, 4; worst 3 (NaN), 1
    new = pbt.tell(asked, pop1, fitness, generator=gen(1))
    g = gen(1)
    order = torch.argsort(torch.tensor([5.0, 1.0, 7.0, -math.inf, 6.0, 4.0, 3.0, 2.0], dtype=torch.float64),
                          descending=True, stable=True)
    top, bottom = order[:2], order[6:]
    donors = top[torch.randint(0, 2, (2,), generator=g)]
    source = torch.arange(8)
    source[bottom] = donors
    assert torch.equal(new.source, source) and set(bottom.tolist()) == {1, 3}
    assert tree_equal(new.population, pop[source])
    factors = torch.tensor([0.5, 2.0], dtype=torch.float64)
    for k, (lo, hi) in (("lr", (1e-3, 1.0)), ("wd", (0.0, 0.1))):
        v = state.hyperparams[k][source].clone()
        v[bottom] = v[bottom] * factors[torch.randint(0, 2, (2,), generator=g)]
        assert torch.equal(new.hyperparams[k], v.clamp(lo, hi))


def test_pbt_replaces_bad_learning_rates_and_beats_fixed_ones():
    pop0 = start_population(8, 0)
    pbt = PBT(hyperparams={"lr": (1e-4, 0.4, "log")}, train=_sgd_round, fraction=0.25)
    state = pbt.init(pop0, generator=gen(0))
    lr0 = state.hyperparams["lr"].clone()
    state, history = pbt.run(state, lambda p: -torch.func.vmap(_quadratic_loss)(p), 8, generator=gen(1))
    fixed = pop0
    for _ in range(8):
        fixed = _sgd_round(fixed, {"lr": lr0}, None)
    # target: the small rates are gone, and the population's mean loss beats the same rates held fixed
    assert float(state.hyperparams["lr"].min()) > float(lr0.min())
    ours = torch.func.vmap(_quadratic_loss)(state.population)
    theirs = torch.func.vmap(_quadratic_loss)(fixed)
    assert float(ours.mean()) < 0.5 * float(theirs.mean())


def test_pbt_bad_input():
    with pytest.raises(ValueError, match=r"fraction: expected a value in \(0.0, 0.5\], got 0.75"):
        PBT(hyperparams={"lr": (0.1, 1.0)}, fraction=0.75)
    with pytest.raises(ValueError, match="perturb_factors"):
        PBT(hyperparams={"lr": (0.1, 1.0)}, perturb_factors=(0.8, -1.0))
    with pytest.raises(TypeError, match="non-empty mapping"):
        PBT(hyperparams={})
    with pytest.raises(ValueError, match="low <= high"):
        PBT(hyperparams={"lr": (1.0, 0.1)})
    with pytest.raises(ValueError, match="log scale expects low > 0"):
        PBT(hyperparams={"lr": (0.0, 1.0, "log")})
    with pytest.raises(ValueError, match="at least 2"):
        PBT(hyperparams={"lr": (0.1, 1.0)}).init(start_population(1, 0))
    bad = PBT(hyperparams={"lr": (0.1, 1.0)}, train=lambda p, hp, g: p[:1])
    with pytest.raises(TypeError, match="train expects to return a population of 4"):
        bad.ask(bad.init(start_population(4, 0)))


def test_hyperparameters_are_immutable_records():
    apso = APSO(alpha=0.1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        apso.alpha = 0.5
    assert attrs.evolve(apso, alpha=0.5).alpha == 0.5 and apso.alpha == 0.1
    with pytest.raises(ValueError):
        attrs.evolve(apso, beta=2.0)
    assert tensor_equal(torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("values", [[3.0, -math.inf, 1.0, 2.0, 1.0, math.inf], [0.5], [2.0, 2.0, 2.0]])
def test_the_protocols_shaping_of_a_score_is_centered_ranks_of_it(values):
    # tell passes the protocol's score (float64, NaN already -inf) to the shaping: the default
    # shaping of it is the very ranks centered_ranks gives
    from nytorch_fn._fitness import shape_scores

    score = torch.tensor(values, dtype=torch.float64)
    got = shape_scores(centered_ranks, score, "test")
    assert torch.equal(got, centered_ranks(score)) and got.dtype == torch.float64
    if len(values) == 6:  # -inf lowest, ties by position, +inf highest
        ranks = torch.tensor([4.0, 0.0, 1.0, 3.0, 2.0, 5.0], dtype=torch.float64)  # by hand
        assert torch.equal(got, ranks / 5 - 0.5)
