"""Population algorithms: a deterministic run of each reaching a stated target, the update
formulas against plain torch, config-awareness, bad input, inputs never modified."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError, optim
from nytorch_fn.algorithms import (
    APSO,
    PBT,
    GeneticAlgorithm,
    Hybrid,
    OpenAIES,
    centered_ranks,
)
from tests.helpers import Snapshot, mlp, tensor_equal, tree_equal


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


TEMPLATE = nf.particle(nn.Linear(3, 2))  # 8 parameters
TARGET = [torch.full_like(t, 1.5) for t in TEMPLATE.tensors]


def sq_dist(pop: nf.Particle) -> torch.Tensor:
    """The quadratic ``sum (w - 1.5)^2`` over every parameter, per member: ``[N]``, minimum 0."""
    return sum(((t - c) ** 2).flatten(1).sum(1) for t, c in zip(pop.tensors, TARGET))


def start_population(n: int, seed: int, template: nf.Particle = TEMPLATE) -> nf.Particle:
    return nf.random_population(template, n, generator=gen(seed))


# -- APSO --------------------------------------------------------------------------------


def test_apso_minimises_a_quadratic():
    apso = APSO(alpha=0.3, beta=0.3, alpha_decay=0.93, maximize=False)
    pop = start_population(20, 0)
    assert float(sq_dist(pop).min()) > 5.0
    snap = Snapshot(pop)
    state = apso.init(pop)
    g = gen(1)
    for _ in range(80):
        state, loss = apso.step(state, sq_dist, generator=g)
    assert snap.unchanged()
    assert state.generation == 80
    assert float(state.best_fitness) < 1e-3  # target: within 1e-3 of the optimum
    assert math.isclose(float(sq_dist(nf.stack([state.best]))[0]), float(state.best_fitness), rel_tol=1e-5)


def test_apso_is_reproducible_from_the_generator():
    apso = APSO(alpha=0.2, beta=0.5)
    runs = []
    for _ in range(2):
        state, g = apso.init(start_population(6, 0)), gen(7)
        for _ in range(3):
            state, _ = apso.step(state, lambda p: -sq_dist(p), generator=g)
        runs.append(state.population)
    assert all(tensor_equal(x, y) for x, y in zip(runs[0].tensors, runs[1].tensors))


def test_apso_move_matches_the_formula_in_plain_torch():
    alpha, beta = 0.3, 0.25
    apso = APSO(alpha=alpha, beta=beta)  # maximize
    pop = start_population(5, 2)
    fitness = torch.tensor([0.1, 3.0, -1.0, float("nan"), 2.0])
    state = apso.tell(apso.init(pop), fitness, generator=gen(4))
    g = gen(4)  # W_r: one randn([N, *shape]) per parameter, in species.names order
    for name, new in state.population.params.items():
        old = pop.params[name]
        noise = torch.randn(old.shape, generator=g)
        expected = (1 - beta) * old + beta * old[1] + alpha * noise
        assert torch.allclose(new, expected, atol=1e-6)
    assert tensor_equal(state.best.params["weight"], pop.params["weight"][1])
    assert float(state.best_fitness) == 3.0


def test_apso_best_is_kept_across_generations_and_nan_is_the_worst():
    apso = APSO(alpha=0.0, beta=0.5)
    state = apso.tell(apso.init(start_population(3, 0)), torch.tensor([1.0, 5.0, 2.0]), generator=gen(0))
    remembered = state.best
    state = apso.tell(state, torch.tensor([float("nan"), 4.0, float("nan")]), generator=gen(0))
    assert state.best is remembered and float(state.best_fitness) == 5.0
    with pytest.raises(ValueError, match="NaN"):
        apso.tell(state, torch.full((3,), float("nan")), generator=gen(0))


def test_apso_leaves_non_operational_parameters_alone():
    sp = TEMPLATE.species.with_config("bias", operational=False)
    template = nf.migrate(TEMPLATE, sp)
    pop = start_population(4, 0, template)
    apso = APSO(alpha=0.5, beta=0.5)
    state = apso.init(pop)
    for _ in range(3):
        state, _ = apso.step(state, lambda p: -sq_dist(p), generator=gen(1))
    assert torch.equal(state.population.params["bias"], pop.params["bias"])
    assert not torch.equal(state.population.params["weight"], pop.params["weight"])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"beta": 1.5}, ValueError, r"beta: expected a value in \[0.0, 1.0\], got 1.5"),
        ({"alpha": -0.1}, ValueError, r"alpha: expected a value in \[0.0, inf\], got -0.1"),
        ({"alpha_decay": 0.0}, ValueError, r"alpha_decay.*\(0.0, 1.0\]"),
        ({"beta": "half"}, TypeError, "beta: expected a real number"),
        ({"maximize": 1}, TypeError, "maximize: expected a bool"),
    ],
)
def test_apso_hyperparameters_out_of_range(kwargs, error, message):
    with pytest.raises(error, match=message):
        APSO(**kwargs)


def test_fitness_of_the_wrong_length_or_type_is_refused():
    apso = APSO()
    state = apso.init(start_population(4, 0))
    with pytest.raises(PopulationSizeError, match=r"expects shape \(4,\).*got shape \(3,\)"):
        apso.tell(state, torch.zeros(3), generator=gen(0))
    with pytest.raises(TypeError, match="fitness"):
        apso.tell(state, "good", generator=gen(0))
    with pytest.raises(TypeError, match="Generator"):
        apso.tell(state, torch.zeros(4), generator=0)
    with pytest.raises(TypeError, match="single particle"):
        apso.init(TEMPLATE)


# -- hybrid gradient + swarm -------------------------------------------------------------


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
    hybrid = Hybrid(optim.adam(0.03), every=5, subset=3, alpha=0.5)
    state = hybrid.init(pop)
    g = gen(1)
    state, first = hybrid.step(state, _mse, x, y, generator=g)
    for _ in range(39):
        state, losses = hybrid.step(state, _mse, x, y, generator=g)
    assert snap.unchanged()
    assert state.count == 40
    final = torch.func.vmap(_mse, in_dims=(0, None, None))(state.population, x, y)
    # target: every member below half the initial mean loss, and the best below 15% of it
    assert float(final.max()) < 0.5 * float(first.mean())
    assert float(final.min()) < 0.15 * float(first.mean())


def test_hybrid_gradient_step_equals_sgd_on_each_member_in_plain_torch():
    x, y = _regression(1)
    pop = nf.init_population(mlp(0, (4, 8, 1)), 3, generator=gen(0))
    hybrid = Hybrid(optim.sgd(0.1), every=2, subset=3)
    state, losses = hybrid.step(hybrid.init(pop), _mse, x, y, generator=gen(0))  # step 1: no blend
    for i, module in enumerate(nf.to_modules(pop)):
        loss = F.mse_loss(module(x), y)
        loss.backward()
        assert torch.allclose(losses[i], loss.detach(), atol=1e-6)
        for name, param in module.named_parameters():
            expected = param.detach() - 0.1 * param.grad
            assert torch.allclose(state.population.params[name][i], expected, atol=1e-6)


def test_hybrid_blend_moves_exactly_the_drawn_subset_toward_the_best():
    pop = start_population(6, 3)
    fitness = torch.tensor([0.0, 1.0, 9.0, 2.0, float("nan"), 3.0])  # best: member 2
    alpha = 0.4
    hybrid = Hybrid(optim.sgd(0.1), subset=3, alpha=alpha)
    snap = Snapshot(pop, fitness)
    blended = hybrid.blend(pop, fitness, generator=gen(5))
    assert snap.unchanged()
    chosen = set(torch.randperm(6, generator=gen(5))[:3].tolist())
    for name, new in blended.params.items():
        old = pop.params[name]
        for i in range(6):
            if i in chosen:
                assert torch.allclose(new[i], alpha * old[2] + (1 - alpha) * old[i], atol=1e-6)
            else:
                assert torch.equal(new[i], old[i])


def test_hybrid_blends_on_every_kth_step_only():
    x, y = _regression(2)
    pop = nf.init_population(mlp(0, (4, 8, 1)), 4, generator=gen(0))
    plain = Hybrid(optim.sgd(0.05), every=1000, subset=4, alpha=1.0)
    blending = Hybrid(optim.sgd(0.05), every=2, subset=4, alpha=1.0)  # alpha=1: every member becomes the best
    s_plain, s_blend = plain.init(pop), blending.init(pop)
    s_plain, _ = plain.step(s_plain, _mse, x, y, generator=gen(0))
    s_blend, _ = blending.step(s_blend, _mse, x, y, generator=gen(0))
    assert all(tensor_equal(a, b) for a, b in zip(s_plain.population.tensors, s_blend.population.tensors))
    s_blend, losses = blending.step(s_blend, _mse, x, y, generator=gen(0))
    w = s_blend.population.params["0.weight"]
    assert all(torch.equal(w[i], w[0]) for i in range(4))  # all members now equal the best


def test_hybrid_bad_input():
    pop = start_population(4, 0)
    with pytest.raises(ValueError, match=r"population size 4, got subset=5"):
        Hybrid(optim.sgd(0.1), subset=5).init(pop)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0.0, 1.0\], got 1.2"):
        Hybrid(optim.sgd(0.1), alpha=1.2)
    with pytest.raises(ValueError, match="every"):
        Hybrid(optim.sgd(0.1), every=0)
    with pytest.raises(TypeError, match="GradientTransformation"):
        Hybrid("sgd")
    with pytest.raises(PopulationSizeError, match=r"\(4,\).*\(5,\)"):
        Hybrid(optim.sgd(0.1), subset=2).blend(pop, torch.zeros(5), generator=gen(0))


# -- genetic algorithm ----------------------------------------------------------------------


def test_ga_improves_mean_fitness():
    ga = GeneticAlgorithm(tournament_size=3, crossover="blend", mutation_std=0.05, elitism=2)
    pop = start_population(30, 0)
    snap = Snapshot(pop)
    state = ga.init(pop)
    g = gen(1)
    best_so_far = []
    for i in range(40):
        state, fitness = ga.step(state, lambda p: -sq_dist(p), generator=g)
        if i == 0:
            initial_mean = float(fitness.mean())
        best_so_far.append(float(state.best_fitness))
    final_mean = float((-sq_dist(state.population)).mean())
    assert snap.unchanged()
    # target: mean fitness (-distance^2) at least 20 times closer to the optimum 0
    assert initial_mean < -10.0 and final_mean > initial_mean / 20
    assert best_so_far == sorted(best_so_far)  # the best never gets worse


def test_ga_elites_survive_and_uniform_tensor_crossover_takes_whole_tensors_from_parents():
    ga = GeneticAlgorithm(tournament_size=2, crossover="uniform", granularity="tensor",
                          crossover_rate=1.0, mutation_std=0.0, elitism=2)
    pop = start_population(10, 0)
    fitness = torch.arange(10.0)
    state = ga.tell(ga.init(pop), fitness, generator=gen(0))
    new = state.population
    for name in pop.species.names:
        old, t = pop.params[name], new.params[name]
        assert torch.equal(t[0], old[9]) and torch.equal(t[1], old[8])  # elites, best first
        for child in t[2:]:
            assert any(torch.equal(child, parent) for parent in old)


def test_ga_blend_children_lie_between_their_parents():
    ga = GeneticAlgorithm(crossover="blend", granularity="element", crossover_rate=1.0,
                          mutation_std=0.0, elitism=0)
    pop = start_population(8, 1)
    state = ga.tell(ga.init(pop), torch.randn(8, generator=gen(2)), generator=gen(3))
    for name in pop.species.names:
        old, new = pop.params[name], state.population.params[name]
        assert bool((new >= old.min(0).values - 1e-6).all()) and bool((new <= old.max(0).values + 1e-6).all())


def test_ga_nan_members_never_become_parents():
    ga = GeneticAlgorithm(tournament_size=8, crossover="none", mutation_std=0.0, elitism=0)
    pop = start_population(8, 0)
    fitness = torch.tensor([float("nan")] * 7 + [1.0])
    state = ga.tell(ga.init(pop), fitness, generator=gen(0))
    # with tournaments of 8 draws among 8 members, almost every tournament sees member 7
    w = state.population.params["weight"]
    nan_parent = [i for i in range(8) if not torch.equal(w[i], pop.params["weight"][7])]
    for i in nan_parent:  # a tournament without member 7: the NaN members tie, never preferred to a number
        assert any(torch.equal(w[i], pop.params["weight"][j]) for j in range(7))
    assert len(nan_parent) < 4


def test_ga_leaves_non_operational_parameters_alone():
    sp = TEMPLATE.species.with_config("bias", operational=False)
    pop = start_population(6, 0, nf.migrate(TEMPLATE, sp))
    ga = GeneticAlgorithm()
    state = ga.tell(ga.init(pop), torch.arange(6.0), generator=gen(0))
    assert torch.equal(state.population.params["bias"], pop.params["bias"])


def test_ga_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"crossover expects one of \['uniform', 'blend', 'none'\], got 'single'"):
        GeneticAlgorithm(crossover="single")
    with pytest.raises(ValueError, match="tournament_size"):
        GeneticAlgorithm(tournament_size=0)
    with pytest.raises(ValueError, match=r"mutation_rate: expected a value in \[0.0, 1.0\], got 2"):
        GeneticAlgorithm(mutation_rate=2)
    with pytest.raises(ValueError, match=r"elitism expects at most the population size 4, got 5"):
        GeneticAlgorithm(elitism=5).init(start_population(4, 0))


# -- evolution strategy -------------------------------------------------------------------------


def test_centered_ranks_against_hand_computation():
    f = torch.tensor([3.0, 1.0, 2.0, 10.0, -4.0])
    assert torch.allclose(centered_ranks(f), torch.tensor([0.25, -0.25, 0.0, 0.5, -0.5], dtype=torch.float64))
    assert torch.allclose(centered_ranks(f, maximize=False),
                          torch.tensor([-0.25, 0.25, 0.0, -0.5, 0.5], dtype=torch.float64))
    with_nan = centered_ranks(torch.tensor([1.0, float("nan"), 0.0]))
    assert torch.allclose(with_nan, torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64))


def test_es_minimises_a_quadratic():
    es = OpenAIES(population_size=20, sigma=0.1, optimizer=optim.adam(0.1), maximize=False)
    snap = Snapshot(TEMPLATE)
    state = es.init(TEMPLATE)
    initial = float(sq_dist(nf.stack([TEMPLATE]))[0])
    g = gen(0)
    for _ in range(150):
        state, loss = es.step(state, sq_dist, generator=g)
    final = float(sq_dist(nf.stack([state.mean]))[0])
    assert snap.unchanged()
    assert initial > 5.0 and final < 0.01  # target: the mean within 0.1 of the optimum
    assert state.generation == 150 and float(state.best_fitness) < 0.05


def _splitmix64(x: int) -> int:
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _documented_noise(base: int, member: int, antithetic: bool) -> dict:
    """Member ``member``'s noise by the documented stream rule, in plain torch (one float32 dtype)."""
    k, sign = (member // 2, -1.0 if member % 2 else 1.0) if antithetic else (member, 1.0)
    g = torch.Generator().manual_seed(_splitmix64((base ^ (0x9E3779B97F4A7C15 * k)) & ((1 << 64) - 1)))
    z = torch.randn(sum(t.numel() for t in TEMPLATE.tensors), generator=g)
    out, off = {}, 0
    for name in TEMPLATE.species.names:
        t = TEMPLATE.params[name]
        out[name] = sign * z[off:off + t.numel()].view(t.shape)
        off += t.numel()
    return out


@pytest.mark.parametrize("antithetic", [True, False])
def test_es_noise_follows_the_documented_member_streams(antithetic):
    n = 6
    es = OpenAIES(population_size=n, antithetic=antithetic)
    _, asked = es.ask(es.init(TEMPLATE), generator=gen(3))
    base = int(torch.randint(0, 2**63 - 1, (1,), generator=gen(3))[0])  # one base seed per ask
    assert asked.seed == base
    for i in range(n):
        want = _documented_noise(base, i, antithetic)
        for name in TEMPLATE.species.names:
            assert torch.equal(asked.noise.params[name][i], want[name])
    # any subset of members is drawn alone with the same bits (what a rank of ShardedES does)
    part, _ = es._ask_rows(es.init(TEMPLATE), [5, 2, 3], generator=gen(3))
    full, _ = es.ask(es.init(TEMPLATE), generator=gen(3))
    assert tree_equal(part, full[torch.tensor([5, 2, 3])])


def test_es_fixed_point_sum_is_exact_under_any_split():
    es = OpenAIES(population_size=10)
    _, asked = es.ask(es.init(TEMPLATE), generator=gen(1))
    from nytorch_fn._algorithms._es import quantized_sum

    shaped = centered_ranks(torch.randn(10, generator=gen(2)))
    whole = quantized_sum(asked.noise, shaped, 10)
    for cut in (1, 3, 7):
        a = quantized_sum(asked.noise[:cut], shaped[:cut], 10)
        b = quantized_sum(asked.noise[cut:], shaped[cut:], 10)
        assert all(torch.equal(x + y, w) for x, y, w in zip(a, b, whole))


def test_es_update_matches_the_estimator_in_plain_torch():
    sigma, lr, n = 0.5, 0.1, 6
    es = OpenAIES(population_size=n, sigma=sigma, optimizer=optim.sgd(lr))  # maximize
    state = es.init(TEMPLATE)
    pop, asked = es.ask(state, generator=gen(3))
    eps = asked.noise
    for name in TEMPLATE.species.names:  # antithetic pairs: member 2k + 1 = -member 2k
        assert torch.equal(eps.params[name][1::2], -eps.params[name][0::2])
        assert torch.allclose(pop.params[name], TEMPLATE.params[name] + sigma * eps.params[name])
    fitness = torch.tensor([5.0, -1.0, 2.0, 0.0, 7.0, 1.0])
    told = es.tell(asked, fitness, population=pop)
    ranks = torch.tensor([0.8, 0.0, 0.6, 0.2, 1.0, 0.4]) - 0.5  # rank / (n - 1) - 1/2
    for name in TEMPLATE.species.names:
        e = eps.params[name]
        grad = (ranks.view(n, *([1] * (e.dim() - 1))) * e).sum(0) / (n * sigma)
        assert torch.allclose(told.mean.params[name], TEMPLATE.params[name] + lr * grad, atol=1e-6)
    assert told.noise is None and float(told.best_fitness) == 7.0
    assert tree_equal(told.best, pop[4])
    # without the population, the best member is recomputed from the noise: the same bits
    again = es.tell(asked, fitness)
    assert tree_equal(again.best, told.best) and tree_equal(again.mean, told.mean)


def test_es_bad_input():
    with pytest.raises(ValueError, match="even number with antithetic=True, got 5"):
        OpenAIES(population_size=5)
    with pytest.raises(ValueError, match=r"sigma: expected a value in \(0.0, inf\], got 0"):
        OpenAIES(sigma=0)
    es = OpenAIES(population_size=4)
    state = es.init(TEMPLATE)
    with pytest.raises(ValueError, match="ask"):
        es.tell(state, torch.zeros(4))
    _, asked = es.ask(state, generator=gen(0))
    with pytest.raises(PopulationSizeError, match=r"\(4,\).*\(2,\)"):
        es.tell(asked, torch.zeros(2))
    with pytest.raises(TypeError, match="single"):
        es.init(start_population(2, 0))


# -- population-based training ---------------------------------------------------------------------


def test_pbt_copies_the_best_members_params_and_hyperparameters_to_the_worst():
    pop = start_population(8, 0)
    lr = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    pbt = PBT(fraction=0.25, perturb_factors=(0.5, 2.0))
    state = pbt.init(pop, {"lr": lr})
    snap = Snapshot(pop, lr)
    fitness = torch.tensor([5.0, 1.0, 7.0, float("nan"), 6.0, 4.0, 3.0, 2.0])  # best 2, 4; worst 3 (NaN), 1
    new = pbt.exploit_explore(state, fitness, generator=gen(0))
    assert snap.unchanged()
    source = new.source.tolist()
    assert source[3] in (2, 4) and source[1] in (2, 4)
    assert [source[i] for i in (0, 2, 4, 5, 6, 7)] == [0, 2, 4, 5, 6, 7]
    for name in pop.species.names:
        assert torch.equal(new.population.params[name], pop.params[name][new.source])
    for i in range(8):
        if i in (1, 3):
            assert any(math.isclose(float(new.hyperparams["lr"][i]), float(lr[source[i]]) * f, rel_tol=1e-6)
                       for f in (0.5, 2.0))
        else:
            assert float(new.hyperparams["lr"][i]) == float(lr[i])
    assert new.generation == 1


def test_pbt_replaces_bad_learning_rates_and_beats_fixed_ones():
    x, y = _regression(3)
    pop0 = nf.init_population(mlp(0, (4, 16, 1)), 8, generator=gen(0))
    lr0 = torch.tensor([1e-4, 2e-4, 5e-4, 1e-3, 0.05, 0.1, 0.2, 0.3])
    per_member = torch.func.vmap(torch.func.grad_and_value(_mse), in_dims=(0, None, None))

    def train(pop, lr, steps=10):
        opt = optim.sgd(lr)
        s = opt.init(pop)
        for _ in range(steps):
            grads, losses = per_member(pop, x, y)
            updates, s = opt.update(grads, s, pop)
            pop = optim.apply_updates(pop, updates)
        return pop, per_member(pop, x, y)[1]

    pbt = PBT(fraction=0.25, bounds={"lr": (1e-5, 0.5)})
    state, g = pbt.init(pop0, {"lr": lr0}), gen(1)
    fixed = pop0
    for _ in range(6):
        trained, losses = train(state.population, state.hyperparams["lr"])
        state = pbt.exploit_explore(state._replace(population=trained), -losses, generator=g)
        fixed, fixed_losses = train(fixed, lr0)
    _, final = train(state.population, state.hyperparams["lr"], steps=0)
    # target: no tiny learning rate survives, and the population's mean loss beats fixed rates
    assert float(state.hyperparams["lr"].min()) > 1e-3
    assert float(state.hyperparams["lr"].max()) <= 0.5
    assert float(final.mean()) < 0.7 * float(fixed_losses.mean())


def test_pbt_leaves_non_operational_parameters_alone():
    sp = TEMPLATE.species.with_config("bias", operational=False)
    pop = start_population(4, 0, nf.migrate(TEMPLATE, sp))
    pbt = PBT(fraction=0.5)
    new = pbt.exploit_explore(pbt.init(pop, {"lr": torch.ones(4)}), torch.arange(4.0), generator=gen(0))
    assert torch.equal(new.population.params["bias"], pop.params["bias"])
    assert not torch.equal(new.population.params["weight"], pop.params["weight"])


def test_pbt_bad_input():
    pop = start_population(4, 0)
    with pytest.raises(ValueError, match=r"fraction: expected a value in \(0.0, 0.5\], got 0.75"):
        PBT(fraction=0.75)
    with pytest.raises(ValueError, match="perturb_factors"):
        PBT(perturb_factors=(0.8, -1.0))
    with pytest.raises(PopulationSizeError, match=r"hyperparams\['lr'\] expects shape \(4,\).*got \(3,\)"):
        PBT().init(pop, {"lr": torch.ones(3)})
    with pytest.raises(TypeError, match="floating"):
        PBT().init(pop, {"batch": torch.ones(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="at least 2"):
        PBT().init(pop[:1], {"lr": torch.ones(1)})
    state = PBT().init(pop, {"lr": torch.ones(4)})
    with pytest.raises(PopulationSizeError, match=r"\(4,\).*\(2,\)"):
        PBT().exploit_explore(state, torch.zeros(2), generator=gen(0))
    with pytest.raises(ValueError, match="NaN"):
        PBT().exploit_explore(state, torch.full((4,), float("nan")), generator=gen(0))


def test_hyperparameters_are_immutable_records():
    apso = APSO(alpha=0.1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        apso.alpha = 0.5
    assert attrs.evolve(apso, alpha=0.5).alpha == 0.5 and apso.alpha == 0.1
    with pytest.raises(ValueError):
        attrs.evolve(apso, beta=2.0)
