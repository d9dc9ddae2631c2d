"""The one protocol, checked uniformly for every algorithm in ``nytorch_fn.algorithms.ALGORITHMS``.

Each algorithm registers a small ``Example`` (``cls._example()``); every test
here runs on it with one small species: a float32 ``Linear(3, 2)``, a float64
parameter and a non-operational one. New algorithms are picked up by the
registry, with no edit here.
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError, checkpoint
from nytorch_fn.algorithms import ALGORITHMS, History
from tests.helpers import Snapshot, tensor_equal, tree_equal

NAMES = sorted(ALGORITHMS)


def template() -> nf.Particle:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        p = nf.particle(nn.Linear(3, 2))
    sp = p.species.add_param("scale", torch.full((2,), 0.25, dtype=torch.float64))
    sp = sp.add_param("frozen", torch.arange(3.0)).with_config("frozen", operational=False)
    return nf.migrate(p, sp)


TEMPLATE = template()


def example(name: str):
    return ALGORITHMS[name]._example()


def start(name: str, seed: int = 0):
    """(algorithm, x, example) for ``name``."""
    ex = example(name)
    algo = ex.algorithm
    g = torch.Generator().manual_seed(seed)
    if algo.kind == "distribution":
        x = TEMPLATE
    else:
        x = nf.random_population(TEMPLATE, ex.population, generator=g)
    return algo, x, ex


def fitness_fn(objectives: int = 1):
    """Higher is better: minus the squared distance to 0.5 (and, for a second objective, to -0.5)."""

    def one(pop: nf.Particle, c: float) -> torch.Tensor:
        xs = [pop.tensors[i] for i in pop.species.layout().op]
        return -sum(((t.double() - c) ** 2).flatten(1).sum(1) for t in xs)

    def f(pop: nf.Particle) -> torch.Tensor:
        if objectives == 1:
            return one(pop, 0.5)
        return torch.stack([one(pop, 0.5), one(pop, -0.5)] + [one(pop, 0.1 * k) for k in range(objectives - 2)], 1)

    return f


def leaves_equal(a, b) -> bool:
    la, sa = pytree.tree_flatten(a)
    lb, sb = pytree.tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and tensor_equal(x, y)):
                return False
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        elif x != y:
            return False
    return True


def generations(algo, state, f, k: int, g: torch.Generator):
    for _ in range(k):
        state, _ = algo.step(state, f, generator=g)
    return state


# ---------------------------------------------------------------------------


def test_the_registry_holds_the_ported_algorithms():
    for name in ("APSO", "GeneticAlgorithm", "Hybrid", "OpenAIES", "PBT"):
        assert name in ALGORITHMS
    for name, cls in ALGORITHMS.items():
        assert cls.__name__ == name
        assert attrs.has(cls) and cls.kind in ("distribution", "population")
        fields = cls.State._fields
        assert fields[:4] == ("best", "best_fitness", "generation", "asked"), name


@pytest.mark.parametrize("name", NAMES)
def test_ask_and_tell_shapes_and_bookkeeping(name):
    algo, x, ex = start(name)
    snap = Snapshot(x)
    g = torch.Generator().manual_seed(1)
    state = algo.init(x, generator=g)
    assert type(state) is algo.State and state.generation == 0
    assert state.best.species is TEMPLATE.species and state.best.population_size is None
    assert state.best_fitness.dtype == torch.float64
    m = ex.objectives
    assert state.best_fitness.shape == (() if m == 1 else (m,))
    pop, asked = algo.ask(state, generator=g)
    n = algo.population_size if algo.kind == "distribution" else ex.population
    assert pop.species is TEMPLATE.species and len(pop) == n
    f = fitness_fn(m)(pop)
    new = algo.tell(asked, pop, f, generator=g)
    assert type(new) is algo.State and new.generation == 1
    assert snap.unchanged()  # init never writes into x, nor keeps it: a copy
    if m == 1:
        # the best is one of the evaluated members with its fitness (or the start, if no member beat it)
        i = int(torch.argmax(f))
        assert float(new.best_fitness) == float(f[i])
        assert torch.equal(fitness_fn(1)(nf.stack([new.best]))[0], f[i].double())
    # the non-operational parameter is never searched
    assert torch.equal(new.best.params["frozen"], TEMPLATE.params["frozen"])


@pytest.mark.parametrize("name", NAMES)
def test_state_is_never_modified_and_run_equals_step(name):
    algo, x, ex = start(name)
    f = fitness_fn(ex.objectives)
    state = algo.init(x, generator=torch.Generator().manual_seed(1))
    snap = Snapshot(state)
    a = generations(algo, state, f, 3, torch.Generator().manual_seed(2))
    b, history = algo.run(state, f, 3, generator=torch.Generator().manual_seed(2))
    assert snap.unchanged()  # ask/tell without donation and run (donating its own copy) leave it alone
    assert leaves_equal(a, b)  # writing in place never changes a value
    assert isinstance(history, History) and history.best_fitness.shape[0] == 3
    assert history.mean_fitness.shape == history.best_fitness.shape
    if "sigma" in algo.State._fields:
        assert history.sigma is not None and history.sigma.shape == (3,)
    else:
        assert history.sigma is None


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_and_resume_bit_for_bit(name, tmp_path):
    algo, x, ex = start(name)
    f = fitness_fn(ex.objectives)
    g = torch.Generator().manual_seed(3)
    state = generations(algo, algo.init(x, generator=g), f, 2, g)
    like = algo.init(x, generator=torch.Generator().manual_seed(99))
    # after a tell
    checkpoint.save(tmp_path / "a.safetensors", {"state": state, "rng": g.get_state()})
    loaded = checkpoint.load(tmp_path / "a.safetensors", like={"state": like, "rng": g.get_state()})
    assert leaves_equal(loaded["state"], state)
    g2 = torch.Generator()
    g2.set_state(loaded["rng"])
    assert leaves_equal(generations(algo, loaded["state"], f, 2, g2), generations(algo, state, f, 2, g))
    # between ask and tell
    pop, asked = algo.ask(state, generator=g)
    checkpoint.save(tmp_path / "b.safetensors", {"state": asked, "pop": pop})
    back = checkpoint.load(tmp_path / "b.safetensors", like={"state": like, "pop": pop})
    assert tree_equal(back["pop"], pop)
    fit = f(pop)
    assert leaves_equal(algo.tell(back["state"], back["pop"], fit, generator=torch.Generator().manual_seed(4)),
                        algo.tell(asked, pop, fit, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", NAMES)
def test_maximize_false_takes_losses_for_the_same_run(name):
    algo, x, ex = start(name)
    m = ex.objectives
    down = attrs.evolve(algo, maximize=False if m == 1 else (False,) * m)
    f = fitness_fn(m)
    up = generations(algo, algo.init(x, generator=torch.Generator().manual_seed(5)), f, 3,
                     torch.Generator().manual_seed(6))
    lo = generations(down, down.init(x, generator=torch.Generator().manual_seed(5)), lambda p: -f(p), 3,
                     torch.Generator().manual_seed(6))
    assert torch.equal(lo.best_fitness, -up.best_fitness)
    assert leaves_equal(lo._replace(best_fitness=up.best_fitness), up)


@pytest.mark.parametrize("name", NAMES)
def test_nan_fitness_is_the_worst_and_all_nan_is_refused(name):
    algo, x, ex = start(name)
    m = ex.objectives
    state = algo.init(x, generator=torch.Generator().manual_seed(1))
    pop, asked = algo.ask(state, generator=torch.Generator().manual_seed(2))
    f = fitness_fn(m)(pop)
    n = f.shape[0]
    best_row = int(torch.argmax(f if m == 1 else f[:, 0]))
    bad = f.clone()
    bad[best_row] = float("nan")
    new = algo.tell(asked, pop, bad, generator=torch.Generator().manual_seed(3))
    if m == 1:
        assert not math.isnan(float(new.best_fitness))
        assert float(new.best_fitness) == float(bad.nan_to_num(-math.inf).max())
    else:
        assert not bool(torch.isnan(new.best_fitness).all())
    snap = Snapshot(asked, pop)
    with pytest.raises(ValueError, match="NaN"):
        algo.tell(asked, pop, torch.full_like(f, float("nan")), generator=torch.Generator().manual_seed(3))
    assert snap.unchanged()
    assert n == len(pop)


@pytest.mark.parametrize("name", NAMES)
def test_bad_tells_are_refused_and_change_nothing(name):
    algo, x, ex = start(name)
    m = ex.objectives
    f = fitness_fn(m)
    state = algo.init(x, generator=torch.Generator().manual_seed(1))
    pop, asked = algo.ask(state, generator=torch.Generator().manual_seed(2))
    fit = f(pop)
    snap = Snapshot(asked, pop, fit)
    n = len(pop)
    # a population that was not the one asked
    other = nf.random_population(TEMPLATE, n, generator=torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="not|another population"):
        algo.tell(asked, other, fit)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, pop[: n - 1], fit[: n - 1])
    with pytest.raises(nf.SpeciesMismatchError):
        algo.tell(asked, nf.random_population(nf.particle(nn.Linear(2, 2)), n), fit)
    with pytest.raises(TypeError):
        algo.tell(asked, pop[0], fit)
    # nothing asked yet
    with pytest.raises(ValueError, match="ask"):
        algo.tell(state, pop, fit)
    # fitness of the wrong shape
    wrong = fit[:-1] if m == 1 else fit[:, 0]
    with pytest.raises(PopulationSizeError, match=r"fitness expects shape"):
        algo.tell(asked, pop, wrong)
    with pytest.raises(PopulationSizeError):
        algo.tell(asked, pop, fit.unsqueeze(-1) if m == 1 else fit[:, :1])
    with pytest.raises(TypeError):
        algo.tell(asked, pop, "fitness")
    # a state from another algorithm
    other_name = next(k for k in NAMES if ALGORITHMS[k].State is not algo.State)
    oalgo, ox, _ = start(other_name)
    ostate = oalgo.init(ox, generator=torch.Generator().manual_seed(1))
    with pytest.raises(TypeError, match=f"expected a {algo.State.__name__}.*got {type(ostate).__name__}"):
        algo.tell(ostate, pop, fit)
    with pytest.raises(TypeError, match=f"expected a {algo.State.__name__}"):
        algo.ask(ostate)
    with pytest.raises(TypeError, match="generator"):
        algo.ask(asked, generator=3)
    with pytest.raises(TypeError, match="donate"):
        algo.tell(asked, pop, fit, donate=1)
    assert snap.unchanged()
    algo.tell(asked, pop, fit)  # the right call still works afterwards


@pytest.mark.parametrize("name", NAMES)
def test_init_refuses_the_wrong_kind_and_non_float_parameters(name):
    algo, x, ex = start(name)
    wrong = nf.stack([TEMPLATE, TEMPLATE]) if algo.kind == "distribution" else TEMPLATE
    with pytest.raises((TypeError, ValueError)):
        algo.init(wrong)
    p = nf.particle(nn.Linear(3, 2))
    sp = p.species.add_param("count", torch.zeros(2, dtype=torch.int64))
    q = nf.migrate(p, sp)
    if algo.kind == "population":
        q = nf.stack([q] * max(ex.population, 2))
    with pytest.raises(TypeError, match="'count'"):
        algo.init(q)


@pytest.mark.parametrize("name", NAMES)
def test_equal_seeds_give_equal_runs_and_other_seeds_differ(name):
    algo, x, ex = start(name)
    f = fitness_fn(ex.objectives)
    runs = [algo.run(algo.init(x, generator=torch.Generator().manual_seed(s)), f, 3,
                     generator=torch.Generator().manual_seed(s))[0] for s in (8, 8, 9)]
    assert leaves_equal(runs[0], runs[1])
    assert not leaves_equal(runs[0], runs[2])


def test_run_refuses_bad_arguments_and_names_tqdm(monkeypatch):
    algo, x, ex = start("APSO")
    state = algo.init(x)
    f = fitness_fn()
    with pytest.raises(ValueError, match="generations"):
        algo.run(state, f, -1)
    with pytest.raises(TypeError, match="fitness_fn"):
        algo.run(state, "f", 2)
    import builtins

    real = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ImportError("no tqdm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    with pytest.raises(ImportError, match="demo"):
        algo.run(state, f, 1, progress=True)


def test_progress_bar_runs(capsys):
    pytest.importorskip("tqdm")
    algo, x, _ = start("APSO")
    state, history = algo.run(algo.init(x), fitness_fn(), 2, generator=torch.Generator().manual_seed(0),
                              progress=True)
    assert state.generation == 2 and history.best_fitness.shape == (2,)
    assert "APSO.run" in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_run_checks_the_fitness_every_generation_and_the_state_once(name):
    # run skips re-checking its own state and population between ask and tell, never the fitness
    algo, x, ex = start(name)
    state = algo.init(x, generator=torch.Generator().manual_seed(1))
    snap = Snapshot(state)
    good = fitness_fn(ex.objectives)
    calls = []

    def wrong_on_third(pop):
        calls.append(1)
        f = good(pop)
        return f if len(calls) < 3 else f[:-1]

    with pytest.raises(PopulationSizeError, match="fitness expects shape"):
        algo.run(state, wrong_on_third, 5, generator=torch.Generator().manual_seed(2))
    assert len(calls) == 3
    with pytest.raises(TypeError, match="fitness expects a tensor"):
        algo.run(state, lambda pop: "bad", 2)
    other = next(n for n in NAMES if ALGORITHMS[n].State is not type(algo).State)
    with pytest.raises(TypeError, match=f"expected a {type(algo).State.__name__}"):
        algo.run(start(other)[0].init(start(other)[1]), good, 1)
    assert snap.unchanged()
