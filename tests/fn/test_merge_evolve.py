"""Evolutionary merging: merge.evolve improves on its starting recipe with a fixed seed, reproducibly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import algorithms, merge
from tests.helpers import Snapshot, mlp, tensor_equal


def _problem(seed=0):
    """Three experts of a small MLP and a target that mixes them with a different weight per layer."""
    base = nf.particle(mlp(seed, (6, 5, 4)))
    g = torch.Generator().manual_seed(seed + 1)
    experts = [base + 0.2 * base.randn(generator=g) for _ in range(3)]
    groups = merge.layer_groups(base.species)
    true = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.7, 0.4]], dtype=torch.float64)
    target = merge.merge_grouped("task_arithmetic", experts, true, groups=groups, base=base)
    x = torch.randn(32, 6, generator=g)
    y = nf.apply(target, x)

    def fitness(pop):  # minus the mean squared error to the target's outputs, every member at once
        return -((nf.vmap_apply(pop, x) - y) ** 2).mean(dim=(1, 2))

    return base, experts, fitness, true


def test_evolve_improves_on_its_starting_recipe_and_finds_the_per_layer_mix():
    base, experts, fitness, true = _problem()
    snap = Snapshot(base, experts)
    seen = []

    def spy(pop):
        seen.append(pop.population_size)
        return fitness(pop)

    r = merge.evolve("task_arithmetic", experts, spy, base=base, generations=60,
                     generator=torch.Generator().manual_seed(0))
    assert snap.unchanged()
    assert r.fitness > 0.01 * r.start_fitness  # the error to the target down 100-fold
    assert r.recipe["weight"].shape == (2, 3) and r.start_recipe["weight"].shape == (2, 3)
    assert torch.allclose(r.start_recipe["weight"], torch.full((2, 3), 0.5, dtype=torch.float64))
    assert (r.recipe["weight"] - true).abs().max() < 0.01  # the per-layer mix that made the target
    assert seen[0] == 1 and set(seen[1:]) == {max(8, algorithms.cma_population_size(6))}  # start, then populations
    assert len(r.history.best_fitness) == 60
    # the returned particle is the recipe's merge, and its fitness the one reported
    again = merge.merge_grouped("task_arithmetic", experts, r.recipe, groups=r.groups, base=base)
    for name in base.species.names:
        assert tensor_equal(again.params[name], r.merged.params[name])
    assert float(fitness(nf.stack([r.merged]))[0]) == pytest.approx(r.fitness)


def test_the_same_seed_gives_the_same_recipe_and_a_random_method_reproduces_its_merge():
    base, experts, fitness, _ = _problem(1)
    kw = dict(base=base, generations=8, generator=None)
    a = merge.evolve("dare_ties", experts, fitness, **{**kw, "generator": torch.Generator().manual_seed(3)})
    b = merge.evolve("dare_ties", experts, fitness, **{**kw, "generator": torch.Generator().manual_seed(3)})
    assert a.seed is not None and a.seed == b.seed
    assert set(a.recipe) == {"weight", "density"}
    for name in a.recipe:
        assert torch.equal(a.recipe[name], b.recipe[name])
    again = merge.merge_grouped("dare_ties", experts, a.recipe, groups=a.groups, base=base,
                                generator=torch.Generator().manual_seed(a.seed))
    for name in base.species.names:
        assert tensor_equal(again.params[name], a.merged.params[name])
    assert a.fitness >= a.start_fitness


def test_options_losses_bounds_init_groups_and_another_algorithm():
    base, experts, fitness, _ = _problem(2)
    loss = lambda pop: -fitness(pop)  # noqa: E731
    r = merge.evolve("task_arithmetic", experts, loss, base=base, groups="all", search=("weight", "lambda_"),
                     init={"weight": [0.2, 0.3, 0.4], "lambda_": 1.0}, bounds={"lambda_": (0.5, 1.5)},
                     algorithm=algorithms.SepCMAES(population_size=10, sigma=0.2, maximize=False), generations=15,
                     generator=torch.Generator().manual_seed(0), normalize=False)
    assert r.fitness < r.start_fitness  # a loss, minimised
    assert r.groups == (tuple(base.species.names),)
    assert r.recipe["weight"].shape == (1, 3) and r.recipe["lambda_"].shape == (1,)
    assert 0.5 <= float(r.recipe["lambda_"][0]) <= 1.5
    assert torch.allclose(r.start_recipe["weight"][0], torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64))
    assert r.parameters == {"normalize": False}
    slerp = merge.evolve("slerp", experts[:1], fitness, base=base, groups="tensors", generations=5,
                         generator=torch.Generator().manual_seed(0))
    assert slerp.recipe["t"].shape == (4,) and bool(((slerp.recipe["t"] >= 0) & (slerp.recipe["t"] <= 1)).all())


def test_zero_generations_return_the_starting_recipe():
    base, experts, fitness, _ = _problem()
    r = merge.evolve("linear", experts, fitness, generations=0, generator=torch.Generator().manual_seed(0))
    assert r.fitness == r.start_fitness
    soup = merge.linear(experts)
    for name in base.species.names:  # weights 0.5 each, normalised: the uniform soup (to rounding)
        assert torch.allclose(r.merged.params[name], soup.params[name], atol=1e-6)


def test_bad_input_is_refused_by_name_and_leaves_the_models_untouched():
    base, experts, fitness, _ = _problem()
    snap = Snapshot(base, experts)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with pytest.raises(ValueError, match="no default parameters to search"):
        merge.evolve("model_stock", experts, fitness, base=base, generator=g())
    with pytest.raises(ValueError, match="no numeric parameter 'alpha' to search"):
        merge.evolve("ties", experts, fitness, base=base, search=("alpha",), generator=g())
    with pytest.raises(ValueError, match=r"bounds\['weight'\] expects finite"):
        merge.evolve("ties", experts, fitness, base=base, bounds={"weight": (1.0, 0.0)}, generator=g())
    with pytest.raises(ValueError, match="bounds names 'density', which is not searched"):
        merge.evolve("linear", experts, fitness, bounds={"density": (0.1, 1.0)}, generator=g())
    with pytest.raises(ValueError, match=r"init\['density'\] expects values inside bounds"):
        merge.evolve("ties", experts, fitness, base=base, init={"density": 0.0}, generator=g())
    with pytest.raises(ValueError, match=r"init\['weight'\] expects a number, 3 values"):
        merge.evolve("ties", experts, fitness, base=base, init={"weight": [0.5, 0.5]}, generator=g())
    with pytest.raises(TypeError, match="'density' is searched; it cannot also be fixed"):
        merge.evolve("ties", experts, fitness, base=base, density=0.5, generator=g())
    with pytest.raises(TypeError, match="distribution-based algorithm"):
        merge.evolve("linear", experts, fitness, algorithm=algorithms.DE(), generator=g())
    with pytest.raises(TypeError, match="fitness_fn expects a callable"):
        merge.evolve("linear", experts, 3, generator=g())
    with pytest.raises(ValueError, match=r"fitness_fn expects to return \[N\] = \[1\] values"):
        merge.evolve("linear", experts, lambda pop: torch.zeros(2), generator=g())
    with pytest.raises(ValueError, match="generations expects an int >= 0"):
        merge.evolve("linear", experts, fitness, generations=-1)
    with pytest.raises(TypeError, match="needs a base model"):
        merge.evolve("ties", experts, fitness, generator=g())
    assert snap.unchanged()


def test_the_evolved_recipe_runs_as_a_mergekit_config_out_of_core(tmp_path):
    yaml = pytest.importorskip("yaml")
    from safetensors.torch import save_file

    base, experts, fitness, _ = _problem()
    r = merge.evolve("ties", experts, fitness, base=base, generations=6, generator=torch.Generator().manual_seed(0))
    paths = []
    for i, p in enumerate([base] + experts):
        f = tmp_path / f"m{i}.safetensors"
        save_file({n: t.contiguous() for n, t in p.params.items()}, str(f))
        paths.append(str(f))
    cfg = r.config(paths[1:], base=paths[0])
    assert cfg["merge_method"] == "ties" and len(cfg["models"]) == 3
    text = yaml.safe_dump(cfg)
    (tmp_path / "evolved.yml").write_text(text)
    out = merge.run_config(tmp_path / "evolved.yml", tmp_path / "out")
    got = merge.Checkpoint(out)
    for name in base.species.names:
        assert tensor_equal(got.read(name), r.merged.params[name]), name
    with pytest.raises(ValueError, match="expected 3 model paths"):
        r.config(paths[1:3], base=paths[0])
    with pytest.raises(ValueError, match="needs the base model's path"):
        r.config(paths[1:])


def test_the_digits_example_evolves_past_its_start_and_the_best_hand_picked_recipe():
    pytest.importorskip("sklearn")
    from nytorch_fn.merge import evolve_demo

    torch.set_num_threads(1)
    data = evolve_demo.load_digits(0)
    base, experts = evolve_demo.digits_experts(data, seed=0)
    xv, yv, xt, yt = data["x_val"], data["y_val"], data["x_test"], data["y_test"]
    r = merge.evolve("dare_ties", experts, lambda pop: evolve_demo.accuracy(pop, xv, yv), base=base,
                     generations=60, generator=torch.Generator().manual_seed(0))  # the demo's defaults
    start = merge.merge_grouped("dare_ties", experts, r.start_recipe, groups=r.groups, base=base,
                                generator=torch.Generator().manual_seed(r.seed))
    assert r.fitness > r.start_fitness + 0.1  # validation accuracy, the fitness
    assert float(evolve_demo.accuracy(r.merged, xt, yt)) > float(evolve_demo.accuracy(start, xt, yt)) + 0.1
    soup = merge.linear(experts)  # the best hand-picked recipe of the demo's grid with this seed
    assert float(evolve_demo.accuracy(r.merged, xt, yt)) > float(evolve_demo.accuracy(soup, xt, yt))
