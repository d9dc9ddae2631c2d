"""Our algorithms side by side with evosax (JAX), EvoTorch and EvoX (PyTorch) on this CPU (issue 13, "Numbers").

Every case runs in a fresh process pinned to one core (``taskset -c 0``) with
one thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``; JAX with
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``),
float32, population 256, the same problem, starting point and
hyperparameters on every side. A case runs ``G`` generations (the fixed
budget, ``256 G`` evaluations); the time per generation (ask + evaluate +
tell) is the median over the generations after the first five; the final
fitness is the best (lowest) loss any member reached.

Problems: sphere and Rastrigin in D = 1,000 and 100,000 (start: one point
drawn uniformly in [-5.12, 5.12]^D by numpy seed 0, or a population drawn
inside those bounds), and neuroevolution of an MLP 64-32-10 (ReLU, 2,410
weights) on scikit-learn's digits, fitness = the cross-entropy on a fixed
batch of 1,024 images, the same logsumexp expression on every side (start:
the same numpy-drawn weights on every side).

Each side is written as its documentation shows:

- ours: the protocol, ``state, history = algo.run(state, loss, G)`` (the
  library's loop, which keeps its buffers); "ours+compile" is
  ``torch.compile`` of one whole generation (``algo.step``).
- evosax 0.3.2: ``es.ask`` / evaluate / ``es.tell`` inside one ``jax.jit``
  function per generation.
- EvoTorch 0.6.1: a vectorised ``Problem`` and ``searcher.step()``.
- EvoX 1.4.0: a ``Problem`` (which also keeps the best loss seen),
  ``StdWorkflow`` and ``workflow.step()``; "EvoX+compile" is
  ``torch.compile(workflow.step)``.

Where a peer's algorithm differs from ours in a way the hyperparameters cannot
express, the row says so (``NOTES``). The peers live in their own venvs
(``bash bench/peers_env.sh``); a missing one is skipped with a message.

Usage (run it under the bench lock; each case prints as it finishes)::

    flock /tmp/nytorch-bench.lock python bench/bench_algorithms.py --problems sphere-1e3 --heap both
    flock /tmp/nytorch-bench.lock python bench/bench_algorithms.py --heap-check     # ours, D = 1e5, both heaps
    python bench/bench_algorithms.py --table bench/results/algorithms_raw.jsonl     # the tables again

``--problems``/``--algorithms``/``--libs`` take comma-separated names (see
``--list``); ``--raw FILE`` appends every measurement as one JSON line
(default ``bench/results/algorithms_raw.jsonl``); ``--quick`` runs a fifth
of the generations.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
N = 256
LOW, HIGH = -5.12, 5.12
WARMUP = 5
BATCH = 1024  # digits images in the fixed fitness batch
FIXED_HEAP = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}

PROBLEMS: dict[str, dict[str, Any]] = {
    "sphere-1e3": {"kind": "sphere", "d": 1_000, "generations": 200},
    "rastrigin-1e3": {"kind": "rastrigin", "d": 1_000, "generations": 200},
    "sphere-1e5": {"kind": "sphere", "d": 100_000, "generations": 25},
    "rastrigin-1e5": {"kind": "rastrigin", "d": 100_000, "generations": 25},
    "digits-mlp": {"kind": "digits", "d": 64 * 32 + 32 + 32 * 10 + 10, "generations": 200},
}

# algorithm -> the libraries that have it ("+c": with torch.compile)
ALGORITHMS: dict[str, tuple[str, ...]] = {
    "OpenAI-ES": ("ours", "ours+c", "evosax", "evox", "evox+c"),
    "SNES": ("ours", "ours+c", "evosax", "evotorch", "evox", "evox+c"),
    "PGPE": ("ours", "ours+c", "evosax", "evotorch"),
    "CMA-ES": ("ours", "evosax", "evotorch", "evox", "evox+c"),
    "Sep-CMA-ES": ("ours", "evosax", "evotorch"),
    "LM-MA-ES": ("ours", "evosax"),
    "PSO": ("ours", "ours+c", "evox", "evox+c"),
    "PSO r/member": ("ours", "evosax"),
    "DE": ("ours", "ours+c", "evosax", "evox", "evox+c"),
}
# ours only, in the heap check (no peer row): the rest of our algorithms that run at D = 1e5
HEAP_ONLY = ("CEM", "APSO", "GeneticAlgorithm", "NSGA2", "IPOP(SepCMAES)")
LIBS = ("ours", "ours+c", "evosax", "evotorch", "evox", "evox+c")
TORCH_PEERS = ("evotorch", "evox", "evox+c")
VENVS = {"evosax": ".venv-evosax", "evotorch": ".venv-evotorch", "evox": ".venv-evox"}


def algorithms_for(problem: str) -> list[str]:
    d = PROBLEMS[problem]["d"]
    names = list(ALGORITHMS)
    if d > 10_000:
        names.remove("CMA-ES")  # full covariance: D^2 floats; the separable and limited-memory ones instead
    if PROBLEMS[problem]["kind"] == "digits":
        names = ["OpenAI-ES", "SNES", "PGPE", "Sep-CMA-ES"]
    return names


# hyperparameters, the same on every side
def hyper(algorithm: str, kind: str) -> dict[str, Any]:
    nn_task = kind == "digits"
    if algorithm == "OpenAI-ES":
        return {"sigma": 0.02 if nn_task else 0.1, "lr": 0.01 if nn_task else 0.05}  # Adam, centred ranks, antithetic
    if algorithm == "SNES":
        return {"sigma": 0.05 if nn_task else 0.5}  # NES utilities, lr_mean 1, lr_sigma (3 + ln d) / (5 sqrt d)
    if algorithm == "PGPE":
        lr = 0.02 if nn_task else 0.15
        return {"sigma": 0.05 if nn_task else 0.5, "lr": lr, "max_speed": 2 * lr, "lr_sigma": 0.1}  # ClipUp, centred ranks
    if algorithm in ("CMA-ES", "Sep-CMA-ES", "LM-MA-ES"):
        return {"sigma": 0.05 if nn_task else 1.0}  # Hansen's defaults for everything else
    if algorithm in ("PSO", "PSO r/member"):
        return {"w": 0.7298, "c1": 1.49618, "c2": 1.49618}
    if algorithm == "DE":
        return {"F": 0.5, "CR": 0.9}  # rand/1/bin
    return {}  # HEAP_ONLY: their defaults


NOTES = {
    ("PSO", "evox"): "EvoX clamps velocities to [lb, ub] too and starts them random",
    ("PSO r/member", "ours"): "per_dimension=False: r1, r2 once per member, as evosax",
    ("PSO r/member", "evosax"): "no bounds in evosax's PSO",
    ("DE", "evosax"): "no bounds in evosax's DE",
    ("CMA-ES", "evox"): "EvoX's CMA-ES: no active weights",
    ("DE", "evox"): "EvoX draws r1, r2, r3 with replacement (its own TODO), so a trial can copy another "
                    "member: faster on the sphere, not Storn & Price's DE",
    ("DE", "evox+c"): "as evox",
    ("SNES", "evox"): "weight_type='recomb' (the NES utilities)",
    ("OpenAI-ES", "evox"): "EvoX's Adam has no bias correction: its first ~100 steps are 3-5x longer than Adam's",
    ("OpenAI-ES", "evox+c"): "as evox",
    ("Sep-CMA-ES", "ours"): "dtype=torch.float32 (the peers' precision; float64 is our default)",
    ("LM-MA-ES", "ours"): "dtype=torch.float32 (the peers' precision; float64 is our default)",
    ("CMA-ES", "ours"): "dtype=torch.float32 (the peers' precision; float64 is our default); "
                        "eigendecomposition every eigen_interval generations (1 here)",
}

# fewer generations where a generation is slow (every side alike)
GENERATIONS = {("CMA-ES", 1_000): 30}


# ---------------------------------------------------------------------------
# the problems, in numpy (every venv has numpy; the workers port them)
# ---------------------------------------------------------------------------


def start_point(d: int):
    import numpy as np

    return np.random.RandomState(0).uniform(LOW, HIGH, d).astype(np.float32)


def start_population(d: int):
    import numpy as np

    return np.random.RandomState(1).uniform(LOW, HIGH, (N, d)).astype(np.float32)


def mlp_start() -> dict[str, Any]:
    """The MLP's first weights (torch's Linear init, U(+-1/sqrt(fan_in)), drawn by numpy seed 0)."""
    import numpy as np

    r = np.random.RandomState(0)
    out = {}
    for name, (o, i) in (("0", (32, 64)), ("2", (10, 32))):
        bound = 1.0 / math.sqrt(i)
        out[f"{name}.weight"] = r.uniform(-bound, bound, (o, i)).astype(np.float32)
        out[f"{name}.bias"] = r.uniform(-bound, bound, (o,)).astype(np.float32)
    return out


def digits_batch():
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data[:BATCH] / 16.0).astype(np.float32)
    y = data.target[:BATCH].astype(np.int64)
    return x, y


# ---------------------------------------------------------------------------
# workers: one case in this process, JSON on the last line of stdout
# ---------------------------------------------------------------------------


def torch_losses(kind: str):
    """Batched losses on ``[N, D]`` float32 tensors (the torch peers' problems)."""
    import torch

    if kind == "sphere":
        return lambda x: (x * x).sum(-1)
    if kind == "rastrigin":
        return lambda x: 10.0 * x.shape[-1] + (x * x - 10.0 * torch.cos(2 * math.pi * x)).sum(-1)
    x_np, y_np = digits_batch()
    xb, yb = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def cross_entropy(flat: torch.Tensor) -> torch.Tensor:
        # the flat vector in named_parameters order: 0.weight, 0.bias, 2.weight, 2.bias
        n = flat.shape[0]
        w1, b1, w2, b2 = torch.split(flat, [32 * 64, 32, 10 * 32, 10], dim=1)
        h = torch.relu(torch.baddbmm(b1.unsqueeze(1), xb.expand(n, -1, -1), w1.view(n, 32, 64).transpose(1, 2)))
        return cross_entropy_of(torch.baddbmm(b2.unsqueeze(1), h, w2.view(n, 10, 32).transpose(1, 2)), yb)

    return cross_entropy


def cross_entropy_of(logits, y):
    """``[N]`` mean cross-entropy of ``[N, B, 10]`` logits: ``logsumexp - logit of the label``
    (torch's CPU ``log_softmax`` over a last dimension of 10 is 4x slower than ``logsumexp``
    and would make every torch side mostly that kernel)."""
    import torch

    picked = logits.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    return (torch.logsumexp(logits, -1) - picked).mean(1)


def flat_mlp_start():
    import numpy as np

    w = mlp_start()
    return np.concatenate([w[k].reshape(-1) for k in ("0.weight", "0.bias", "2.weight", "2.bias")])


def timed_loop(step: Callable[[], Any], generations: int, sync: Callable[[Any], Any] = lambda r: r) -> list[float]:
    ms = []
    for _ in range(generations):
        t = time.perf_counter()
        sync(step())
        ms.append(1e3 * (time.perf_counter() - t))
    return ms


def worker_ours(spec: dict) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    import nytorch_fn as nf
    from nytorch_fn import optim
    from nytorch_fn.algorithms import (
        APSO,
        CEM,
        CMAES,
        DE,
        IPOP,
        LMMAES,
        NSGA2,
        PGPE,
        PSO,
        SNES,
        GeneticAlgorithm,
        OpenAIES,
        SepCMAES,
        uniform_population,
    )

    kind, d, gens, algorithm = spec["kind"], spec["d"], spec["generations"], spec["algorithm"]
    h = hyper(algorithm, kind)
    g = torch.Generator().manual_seed(0)

    if kind == "digits":
        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        with torch.no_grad():
            for name, value in mlp_start().items():
                net.get_parameter(name).copy_(torch.from_numpy(value))
        x0 = nf.particle(net)
        x_np, y_np = digits_batch()
        xb, yb = torch.from_numpy(x_np), torch.from_numpy(y_np)

        def loss(pop):
            return cross_entropy_of(nf.vmap_apply(pop, xb), yb)  # logits [N, B, 10] -> [N]
    else:
        class Point(nn.Module):  # a flat search space: one parameter of D values
            def __init__(self, x: torch.Tensor) -> None:
                super().__init__()
                self.x = nn.Parameter(x)

        x0 = nf.particle(Point(torch.from_numpy(start_point(d))))
        if kind == "sphere" and spec.get("heap_check"):
            def loss(pop):  # no temporary of the population's size: the heap check measures the algorithm
                return torch.linalg.vector_norm(pop.params["x"], dim=1).pow(2)
        elif kind == "sphere":
            def loss(pop):
                x = pop.params["x"]
                return (x * x).sum(1)
        else:
            def loss(pop):
                x = pop.params["x"]
                return 10.0 * d + (x * x - 10.0 * torch.cos(2 * math.pi * x)).sum(1)

    bounds = None if kind == "digits" else (LOW, HIGH)
    if algorithm == "OpenAI-ES":
        algo = OpenAIES(population_size=N, sigma=h["sigma"], optimizer=optim.adam(h["lr"]), maximize=False)
    elif algorithm == "SNES":
        algo = SNES(population_size=N, sigma=h["sigma"], maximize=False)
    elif algorithm == "PGPE":
        algo = PGPE(population_size=N, sigma=h["sigma"], optimizer=optim.clipup(h["lr"], max_speed=h["max_speed"]),
                    lr_sigma=h["lr_sigma"], maximize=False)
    elif algorithm == "CMA-ES":  # float32 state as the peers (float64 is the default)
        algo = CMAES(population_size=N, sigma=h["sigma"], dtype=torch.float32, maximize=False)
    elif algorithm == "Sep-CMA-ES":  # float32 state as the peers (float64 is the default)
        algo = SepCMAES(population_size=N, sigma=h["sigma"], dtype=torch.float32, maximize=False)
    elif algorithm == "LM-MA-ES":
        algo = LMMAES(population_size=N, sigma=h["sigma"], dtype=torch.float32, maximize=False)
    elif algorithm in ("PSO", "PSO r/member"):
        algo = PSO(inertia=h["w"], cognitive=h["c1"], social=h["c2"], per_dimension=algorithm == "PSO",
                   bounds=bounds, maximize=False)
    elif algorithm == "DE":
        algo = DE(strategy="rand/1/bin", differential_weight=h["F"], crossover_rate=h["CR"], bounds=bounds,
                  maximize=False)
    elif algorithm == "CEM":
        algo = CEM(population_size=N, sigma=1.0, maximize=False)
    elif algorithm == "APSO":
        algo = APSO(bounds=bounds, maximize=False)
    elif algorithm == "GeneticAlgorithm":
        algo = GeneticAlgorithm(bounds=bounds, maximize=False)
    elif algorithm == "NSGA2":
        algo = NSGA2(bounds=bounds, mutation="polynomial", maximize=False)
        one = loss

        def loss(pop):  # two objectives: the loss at the origin and the sphere around (1, ..., 1)
            x = pop.params["x"]
            return torch.stack([one(pop), ((x - 1.0) * (x - 1.0)).sum(1)], 1)
    elif algorithm == "IPOP(SepCMAES)":
        algo = IPOP(algorithm=SepCMAES(population_size=N, sigma=1.0, dtype=torch.float32), maximize=False)
    else:
        raise KeyError(algorithm)

    if algo.kind == "population":
        x = nf.Particle(x0.species, {"x": torch.from_numpy(start_population(d))}) if kind != "digits" else \
            uniform_population(x0, N, -0.1, 0.1, generator=g)
        state = algo.init(x, generator=g)
    else:
        state = algo.init(x0, generator=g)

    if not spec["compile"]:
        stamps: list[float] = []

        def timed_loss(pop):
            stamps.append(time.perf_counter())
            return loss(pop)

        state, _history = algo.run(state, timed_loss, gens, generator=g)
        stamps.append(time.perf_counter())
        ms = [1e3 * (b - a) for a, b in itertools.pairwise(stamps)]
        return {"ms": ms, "best": float(state.best_fitness.reshape(-1)[0])}

    def generation(s):
        s, _ = algo.step(s, loss, generator=g)
        return s

    compiled = torch.compile(generation)
    box = [state]

    def step():
        box[0] = compiled(box[0])

    ms = timed_loop(step, gens)
    return {"ms": ms, "best": float(box[0].best_fitness.reshape(-1)[0])}


def worker_evosax(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from evosax.algorithms import (
        CMA_ES,
        LM_MA_ES,
        PGPE,
        PSO,
        SNES,
        DifferentialEvolution,
        Open_ES,
        Sep_CMA_ES,
    )
    from evosax.core.optimizer import clipup

    kind, d, gens, algorithm = spec["kind"], spec["d"], spec["generations"], spec["algorithm"]
    h = hyper(algorithm, kind)

    if kind == "digits":
        x_np, y_np = digits_batch()
        xb, yb = jnp.asarray(x_np), jnp.asarray(y_np)
        solution = {k: jnp.asarray(v) for k, v in mlp_start().items()}  # a pytree; evosax ravels it

        def member_loss(p):
            hid = jax.nn.relu(xb @ p["0.weight"].T + p["0.bias"])
            logits = hid @ p["2.weight"].T + p["2.bias"]
            picked = jnp.take_along_axis(logits, yb[:, None], -1)[:, 0]
            return (jax.scipy.special.logsumexp(logits, -1) - picked).mean()

        losses = jax.vmap(member_loss)
    else:
        solution = jnp.asarray(start_point(d))
        if kind == "sphere":
            losses = lambda x: (x * x).sum(-1)
        else:
            losses = lambda x: 10.0 * d + (x * x - 10.0 * jnp.cos(2 * jnp.pi * x)).sum(-1)

    population_based = algorithm in ("PSO r/member", "DE")
    if algorithm == "OpenAI-ES":
        es = Open_ES(population_size=N, solution=solution, optimizer=optax.adam(h["lr"]),
                     std_schedule=optax.constant_schedule(h["sigma"]))
        params = es.default_params
    elif algorithm == "SNES":
        es = SNES(population_size=N, solution=solution)
        params = es.default_params.replace(std_init=h["sigma"])
    elif algorithm == "PGPE":
        es = PGPE(population_size=N, solution=solution,
                  optimizer=clipup(learning_rate=h["lr"], max_velocity=h["max_speed"]))
        params = es.default_params.replace(std_init=h["sigma"], std_lr=h["lr_sigma"])
    elif algorithm in ("CMA-ES", "Sep-CMA-ES", "LM-MA-ES"):
        cls = {"CMA-ES": CMA_ES, "Sep-CMA-ES": Sep_CMA_ES, "LM-MA-ES": LM_MA_ES}[algorithm]
        es = cls(population_size=N, solution=solution)
        params = es.default_params.replace(std_init=h["sigma"])
    elif algorithm == "PSO r/member":
        es = PSO(population_size=N, solution=solution)
        params = es.default_params.replace(inertia_coeff=h["w"], cognitive_coeff=h["c1"], social_coeff=h["c2"])
    elif algorithm == "DE":
        es = DifferentialEvolution(population_size=N, solution=solution)
        params = es.default_params.replace(elitism=False, differential_weight=h["F"], crossover_rate=h["CR"])
    else:
        raise KeyError(algorithm)

    key = jax.random.key(0)
    key, sub = jax.random.split(key)
    if population_based:
        pop0 = jnp.asarray(start_population(d))
        state = es.init(sub, pop0, losses(pop0), params)
    else:
        state = es.init(sub, solution, params)

    @jax.jit
    def generation(key, state):
        key_ask, key_tell = jax.random.split(key)
        population, state = es.ask(key_ask, state, params)
        fitness = losses(population)
        state, _ = es.tell(key_tell, population, fitness, state, params)
        return state

    keys = list(jax.random.split(key, gens))
    box = [state]

    def step():
        box[0] = generation(keys.pop(), box[0])
        return box[0]

    ms = timed_loop(step, gens, sync=jax.block_until_ready)
    return {"ms": ms, "best": float(box[0].best_fitness), "version": _version("evosax")}


def worker_evotorch(spec: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from evotorch import Problem
    from evotorch.algorithms import CMAES, PGPE, SNES

    kind, d, gens, algorithm = spec["kind"], spec["d"], spec["generations"], spec["algorithm"]
    h = hyper(algorithm, kind)
    loss = torch_losses(kind)
    x0 = torch.from_numpy(flat_mlp_start() if kind == "digits" else start_point(d))
    problem = Problem("min", loss, solution_length=d, initial_bounds=(LOW, HIGH), vectorized=True,
                      dtype=torch.float32, seed=0)
    if algorithm == "SNES":
        searcher = SNES(problem, popsize=N, stdev_init=h["sigma"], center_init=x0)
    elif algorithm == "PGPE":
        searcher = PGPE(problem, popsize=N, center_learning_rate=h["lr"], stdev_learning_rate=h["lr_sigma"],
                        stdev_init=h["sigma"], optimizer="clipup", optimizer_config={"max_speed": h["max_speed"]},
                        ranking_method="centered", center_init=x0)
    elif algorithm in ("CMA-ES", "Sep-CMA-ES"):
        searcher = CMAES(problem, stdev_init=h["sigma"], popsize=N, center_init=x0,
                         separable=algorithm == "Sep-CMA-ES")
    else:
        raise KeyError(algorithm)
    ms = timed_loop(searcher.step, gens)
    return {"ms": ms, "best": float(searcher.status["best_eval"]), "version": _version("evotorch")}


def worker_evox(spec: dict) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    from evox.algorithms import CMAES, DE, PSO, SNES, OpenES
    from evox.core import Mutable, Problem
    from evox.workflows import StdWorkflow

    kind, d, gens, algorithm = spec["kind"], spec["d"], spec["generations"], spec["algorithm"]
    h = hyper(algorithm, kind)
    torch.manual_seed(0)

    if kind == "digits":
        from evox.utils import ParamsAndVector

        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        with torch.no_grad():
            for name, value in mlp_start().items():
                net.get_parameter(name).copy_(torch.from_numpy(value))
        adapter = ParamsAndVector(net)
        x0 = adapter.to_vector(dict(net.named_parameters())).detach()
        x_np, y_np = digits_batch()
        xb, yb = torch.from_numpy(x_np), torch.from_numpy(y_np)

        batched = torch.vmap(lambda params: torch.func.functional_call(net, params, (xb,)))  # [N, B, 10]

        def loss(pop: torch.Tensor) -> torch.Tensor:
            return cross_entropy_of(batched(adapter.batched_to_params(pop)), yb)
    else:
        loss = torch_losses(kind)
        x0 = torch.from_numpy(start_point(d))

    class Benchmark(Problem):
        # the best loss seen, kept by the problem: EvalMonitor records the fitness after
        # fitness_transform (ranks, for OpenES), not the loss
        def __init__(self) -> None:
            super().__init__()
            self.best = Mutable(torch.tensor(math.inf))

        def evaluate(self, pop: torch.Tensor) -> torch.Tensor:
            f = loss(pop)
            self.best = torch.minimum(self.best, f.min())
            return f

    problem = Benchmark()

    class CenteredRanks(nn.Module):  # OpenES takes the raw fitness; this is the shaping the others use
        def forward(self, f: torch.Tensor) -> torch.Tensor:
            ranks = torch.argsort(torch.argsort(f)).to(f.dtype)
            return ranks / (f.shape[0] - 1) - 0.5

    transform = None
    lb, ub = torch.full((d,), LOW), torch.full((d,), HIGH)
    if algorithm == "OpenAI-ES":
        algo = OpenES(pop_size=N, center_init=x0, learning_rate=h["lr"], noise_stdev=h["sigma"], optimizer="adam")
        transform = CenteredRanks()
    elif algorithm == "SNES":
        algo = SNES(pop_size=N, center_init=x0, sigma=h["sigma"], weight_type="recomb")
    elif algorithm == "CMA-ES":
        algo = CMAES(mean_init=x0, sigma=h["sigma"], pop_size=N)
    elif algorithm == "PSO":
        algo = PSO(pop_size=N, lb=lb, ub=ub, w=h["w"], phi_p=h["c1"], phi_g=h["c2"])
    elif algorithm == "DE":
        algo = DE(pop_size=N, lb=lb, ub=ub, base_vector="rand", differential_weight=h["F"],
                  cross_probability=h["CR"])
    else:
        raise KeyError(algorithm)
    workflow = StdWorkflow(algo, problem, fitness_transform=transform)
    workflow.init_step()  # the first generation (evaluates the initial population where there is one)
    step = torch.compile(workflow.step) if spec["compile"] else workflow.step
    ms = timed_loop(step, gens - 1)
    return {"ms": ms, "best": float(workflow.problem.best), "version": _version("evox")}


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


WORKERS = {"ours": worker_ours, "evosax": worker_evosax, "evotorch": worker_evotorch, "evox": worker_evox}


# sources no single-process algorithm run imports (edited by others without changing our figures)
NOT_HASHED = ("demo.py", "_demo_legacy.py", "_distributed.py", "distributed.py", "merge/", "_merge/")


def code_version() -> str:
    """A hash of nytorch_fn's sources as they are now, but ``NOT_HASHED`` (the tables compare only
    our runs of the newest code: the algorithms change while the peers' runs are kept)."""
    import hashlib

    h = hashlib.sha1()
    root = HERE.parent / "nytorch_fn"
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if rel in NOT_HASHED or rel.startswith(tuple(x for x in NOT_HASHED if x.endswith("/"))):
            continue
        h.update(f.relative_to(HERE.parent).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def worker_main(spec: dict) -> None:
    lib = spec["lib"].split("+")[0]
    start = time.perf_counter()
    out = WORKERS[lib](spec)
    ms = out["ms"][WARMUP:] if len(out["ms"]) > WARMUP + 2 else out["ms"][1:]
    out.update(
        median_ms=statistics.median(ms),
        q1_ms=statistics.quantiles(ms, n=4)[0] if len(ms) >= 2 else ms[0],
        q3_ms=statistics.quantiles(ms, n=4)[2] if len(ms) >= 2 else ms[0],
        seconds=time.perf_counter() - start,
    )
    print(json.dumps(out))


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


def python_for(lib: str) -> Path | None:
    base = lib.split("+")[0]
    if base == "ours":
        return Path(sys.executable)
    py = HERE / VENVS[base] / "bin" / "python"
    return py if py.exists() else None


def run_case(problem: str, algorithm: str, lib: str, heap: str, quick: bool, heap_check: bool = False) -> dict:
    p = PROBLEMS[problem]
    gens = GENERATIONS.get((algorithm, p["d"]), p["generations"])
    gens = gens // 5 if quick else gens
    spec = {"problem": problem, "kind": p["kind"], "d": p["d"], "generations": max(gens, WARMUP + 5),
            "algorithm": algorithm, "lib": lib, "compile": lib.endswith("+c"), "heap_check": heap_check}
    record = {"problem": problem, "algorithm": algorithm, "lib": lib, "heap": heap, "generations": spec["generations"]}
    if heap_check:
        record["heap_check"] = True
    py = python_for(lib)
    if py is None:
        return {**record, "error": f"no venv for {lib}: run bash bench/peers_env.sh"}
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1",
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               PYTHONPATH=str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore")
    for k in FIXED_HEAP:
        env.pop(k, None)
    if heap == "fixed":
        env.update(FIXED_HEAP)
    cmd = ["taskset", "-c", "0", str(py), str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(HERE.parent), check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        text = (proc.stderr or proc.stdout).strip().splitlines()
        errors = [ln.strip() for ln in text if "Error" in ln or "error:" in ln]
        return {**record, "error": (errors[-1] if errors else " | ".join(text[-2:]))[:240]}
    out = json.loads(lines[-1])
    out.pop("ms", None)
    if lib.startswith("ours"):
        out["code"] = code_version()
    return {**record, **out}


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.0f}" if v >= 1000 else f"{v:.1f}"


def fmt_f(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def fastest(records: list[dict]) -> dict[tuple, dict]:
    """Per (heap, problem, algorithm, library) the run with the lowest median (repeats are fresh
    processes: the machine's other load only ever adds time); an error only where nothing ran."""
    best: dict[tuple, dict] = {}
    newest = [r["code"] for r in records if r.get("code")]
    for r in records:
        if r["lib"].startswith("ours") and newest and r.get("code") != newest[-1]:
            continue  # our runs of older code
        key = (r["heap"], r["problem"], r["algorithm"], r["lib"])
        old = best.get(key)
        if old is None or ("error" in old and "error" not in r) or (
            "error" not in r and "error" not in old and r["median_ms"] < old["median_ms"]
        ):
            best[key] = r
    return best


def tables(records: list[dict]) -> str:
    """One table per (heap, problem): ms per generation per library, the ratios, the final fitness."""
    latest = fastest([r for r in records if not r.get("heap_check")])
    out = []
    heaps = [h for h in ("default", "fixed") if any(k[0] == h for k in latest)]
    for heap in heaps:
        for problem, p in PROBLEMS.items():
            rows = [a for a in algorithms_for(problem) if any(k[:3] == (heap, problem, a) for k in latest)]
            if not rows:
                continue
            gens = max(latest[k]["generations"] for k in latest if k[:2] == (heap, problem))
            heap_name = "glibc defaults" if heap == "default" else "MALLOC_MMAP/TRIM_THRESHOLD_=1 GiB"
            out.append(f"\n{problem}: D={p['d']:,}, population {N}, {gens} generations ({gens * N:,} evaluations), "
                       f"1 thread, heap: {heap_name}")
            out.append("ms per generation (median after 5 warm-up generations, best of the fresh processes run; "
                       "'+c' = torch.compile) | ratios: min(ours, ours+c) / the fastest torch peer, / evosax")
            head = f"{'algorithm':14s}" + "".join(f"{lib:>10s}" for lib in LIBS) + f"{'ours/torch':>11s}{'ours/evosax':>12s}"
            out.append(head)
            fits = []
            notes = []
            for a in rows:
                cells = {lib: latest.get((heap, problem, a, lib)) for lib in LIBS}
                ms = {lib: (c.get("median_ms") if c and "error" not in c else None) for lib, c in cells.items()}
                line = f"{a:14s}"
                for lib in LIBS:
                    c = cells[lib]
                    line += f"{('err' if c and 'error' in c else fmt_ms(ms[lib])):>10s}"
                ours = [v for v in (ms["ours"], ms["ours+c"]) if v is not None]
                ours_best = min(ours) if ours else None
                torch_peers = [ms[lib] for lib in TORCH_PEERS if ms[lib] is not None]
                r_t = f"{ours_best / min(torch_peers):.2f}x" if ours_best and torch_peers else "-"
                r_j = f"{ours_best / ms['evosax']:.2f}x" if ours_best and ms["evosax"] else "-"
                out.append(line + f"{r_t:>11s}{r_j:>12s}")
                fit = f"{a:14s}" + "".join(
                    f"{('-' if not cells[lib] or 'error' in cells[lib] else fmt_f(cells[lib].get('best'))):>10s}"
                    for lib in LIBS)
                fits.append(fit)
                row_gens = {c["generations"] for c in cells.values() if c}
                if row_gens != {gens}:
                    notes.append(f"  {a}: {', '.join(map(str, sorted(row_gens)))} generations on every side")
                for lib in LIBS:
                    if (a, lib) in NOTES and cells[lib]:
                        notes.append(f"  {a} / {lib}: {NOTES[(a, lib)]}")
                    if cells[lib] and "error" in cells[lib]:
                        notes.append(f"  {a} / {lib}: error: {cells[lib]['error']}")
            out.append("final fitness (best loss reached, lower is better)")
            out.append(f"{'algorithm':14s}" + "".join(f"{lib:>10s}" for lib in LIBS))
            out.extend(fits)
            out.extend(notes)
    return "\n".join(out)


def heap_table(records: list[dict]) -> str:
    checked = [r for r in records if r.get("heap_check") and r["problem"] == "sphere-1e5"]
    latest = {(k[1], k[2], k[0]): r for k, r in fastest(checked).items()
              if k[3] == "ours" and k[1].endswith("1e5") and "error" not in r}
    rows = sorted({(k[0], k[1]) for k in latest})
    if not rows:
        return ""
    out = [("\nours, population 256, D=100,000: ms per generation under glibc defaults vs a fixed heap "
            "(target: at most 1.2x apart; --heap-check runs, whose sphere is ||x||^2 by vector_norm, with no "
            "temporary of the population's size)"),
           f"{'problem':15s}{'algorithm':18s}{'default':>10s}{'fixed':>10s}{'ratio':>8s}"]
    for problem, a in rows:
        d = latest.get((problem, a, "default"))
        f = latest.get((problem, a, "fixed"))
        dm = d.get("median_ms") if d else None
        fm = f.get("median_ms") if f else None
        ratio = f"{max(dm, fm) / min(dm, fm):.2f}x" if dm and fm else "-"
        out.append(f"{problem:15s}{a:18s}{fmt_ms(dm):>10s}{fmt_ms(fm):>10s}{ratio:>8s}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--algorithms", default="all")
    ap.add_argument("--libs", default=",".join(LIBS))
    ap.add_argument("--heap", choices=("default", "fixed", "both"), default="both")
    ap.add_argument("--heap-check", action="store_true",
                    help="ours only, sphere D=1e5 (a fitness with no N x D temporary), both heaps")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="fresh processes per case (the tables take the fastest)")
    ap.add_argument("--raw", default=str(HERE / "results" / "algorithms_raw.jsonl"))
    ap.add_argument("--table", metavar="RAW", help="print the tables of a raw file and exit")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    if args.list:
        for p in PROBLEMS:
            print(p, ":", ", ".join(f"{a} [{' '.join(ALGORITHMS[a])}]" for a in algorithms_for(p)))
        return
    if args.table:
        records = [json.loads(ln) for ln in Path(args.table).read_text().splitlines() if ln.strip()]
        print(tables(records))
        print(heap_table(records))
        return
    problems = args.problems.split(",")
    libs = args.libs.split(",")
    heaps = ["default", "fixed"] if args.heap == "both" else [args.heap]
    if args.heap_check:  # ours only, D = 1e5, every algorithm that runs there, on the allocation-free sphere
        problems = ["sphere-1e5"]
        libs = ["ours"]
        heaps = ["default", "fixed"]
    for p in problems:
        if p not in PROBLEMS:
            raise SystemExit(f"unknown problem {p!r}; expected one of {list(PROBLEMS)}")
    for lib in libs:
        if lib not in LIBS:
            raise SystemExit(f"unknown library {lib!r}; expected one of {list(LIBS)}")
    records = []
    raw = Path(args.raw)
    raw.parent.mkdir(parents=True, exist_ok=True)
    for problem in problems:
        known = algorithms_for(problem) + (list(HEAP_ONLY) if args.heap_check else [])
        names = known if args.algorithms == "all" else [a for a in args.algorithms.split(",") if a in known]
        for a in names:
            # round by round, every library and heap setting in turn: this VM's speed drifts over
            # minutes, and a side measured only after another would carry the drift in its ratio
            cases = [(lib, heap) for _ in range(args.repeat) for lib in ALGORITHMS.get(a, ("ours",))
                     if lib in libs for heap in heaps]
            for lib, heap in cases:
                r = run_case(problem, a, lib, heap, args.quick, args.heap_check)
                r["when"] = time.strftime("%Y-%m-%d %H:%M")
                records.append(r)
                with raw.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                what = f"error: {r['error']}" if "error" in r else \
                    f"{r['median_ms']:.2f} ms/gen [{r['q1_ms']:.2f}, {r['q3_ms']:.2f}]  best {r['best']:.4g}  " \
                    f"({r['seconds']:.0f} s)"
                print(f"{problem:14s} {a:13s} {lib:9s} {heap:8s} {what}", flush=True)
    print(tables(records))
    print(heap_table(records))


if __name__ == "__main__":
    main()
