"""The CMA family against pycma (``cma`` on PyPI, Hansen's reference CMA-ES), side by side.

Function evaluations to reach f < 1e-8 on sphere, ellipsoid (condition 1e6)
and Rosenbrock in D = 10 and 40, 10 seeds each, the same population size
(4 + floor(3 ln D)), initial sigma (0.5) and start (ones; zeros for
Rosenbrock) on both sides, pycma with its stopping rules switched off. A run
that does not reach the target within the budget counts as infinitely many
evaluations in the median. Then ``IPOP(CMAES)`` on Rastrigin D = 10
(sigma 2 from 3 * ones; 10 seeds), our ``SepCMAES`` and ``LMMAES`` on the
same problems (5 seeds, smaller budgets), and the time per generation (ask + evaluate + tell) of
``SepCMAES``/``LMMAES`` on a D = 100,000 sphere. One thread.

    bash bench/pycma_env.sh                       # builds bench/.venv-pycma (once)
    flock /tmp/nytorch-bench.lock python bench/bench_cma.py
    flock /tmp/nytorch-bench.lock python bench/bench_cma.py --seeds 3 --skip-ipop   # quicker

pycma runs in its own venv (``bench/.venv-pycma``), in a subprocess of this
script (``--pycma-worker``), never imported here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROBLEMS = ("sphere", "ellipsoid", "rosenbrock")
DIMS = (10, 40)
TARGET = 1e-8
SIGMA = 0.5


def population(d: int) -> int:
    return 4 + int(math.floor(3 * math.log(d)))


def start(name: str) -> float:
    return 0.0 if name == "rosenbrock" else 1.0


def budget(d: int) -> int:
    return 200_000 if d <= 10 else 600_000


def other_budget(d: int) -> int:
    """SepCMAES/LMMAES's budget (their slow cases are budget-bound; reported as such)."""
    return 150_000 if d <= 10 else 300_000


# -- pycma, in its own venv ---------------------------------------------------------------


def pycma_worker(seeds: int) -> None:
    import cma
    import numpy as np

    def sphere(x):
        return float((x**2).sum())

    def ellipsoid(x):
        n = len(x)
        return float(((1e6 ** (np.arange(n) / (n - 1))) * x**2).sum())

    def rosenbrock(x):
        return float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())

    fns = {"sphere": sphere, "ellipsoid": ellipsoid, "rosenbrock": rosenbrock}
    off = {"tolfun": 0, "tolfunhist": 0, "tolfunrel": 0, "tolx": 0, "tolflatfitness": 10**9,
           "tolstagnation": 10**9, "tolconditioncov": 1e300, "tolupsigma": 1e300, "verbose": -9}
    out = {}
    for d in DIMS:
        for name in PROBLEMS:
            f = fns[name]
            runs = []
            for seed in range(seeds):
                es = cma.CMAEvolutionStrategy(d * [start(name)], SIGMA,
                                              {**off, "seed": seed + 1, "popsize": population(d)})
                used, hit = 0, None
                while used < budget(d):
                    xs = es.ask()
                    fx = [f(x) for x in xs]
                    used += len(xs)
                    if min(fx) < TARGET:
                        hit = used
                        break
                    es.tell(xs, fx)
                runs.append(hit)
            out[f"{name}/{d}"] = runs
    print(json.dumps({"version": cma.__version__, "runs": out}))


def run_pycma(seeds: int) -> dict:
    py = os.path.join(HERE, ".venv-pycma", "bin", "python")
    if not os.path.exists(py):
        raise SystemExit("bench/.venv-pycma is missing: run `bash bench/pycma_env.sh` first")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([py, "-W", "ignore", os.path.abspath(__file__), "--pycma-worker", "--seeds", str(seeds)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- ours ---------------------------------------------------------------------------------


def ours(seeds: int, other_seeds: int, skip_ipop: bool) -> dict:
    import torch
    from torch import nn

    import nytorch_fn as nf
    from nytorch_fn.algorithms import CMAES, IPOP, LMMAES, SepCMAES, ravel

    torch.set_num_threads(1)

    def flat(d, value):
        return nf.particle(nn.Linear(d, 1, bias=False).double()).map(lambda t, cfg: torch.full_like(t, value))

    def values(pop):
        return ravel(pop)

    def sphere(pop):
        return (values(pop) ** 2).sum(1)

    def ellipsoid(pop):
        x = values(pop)
        n = x.shape[1]
        return ((1e6 ** (torch.arange(n, dtype=x.dtype) / (n - 1))) * x**2).sum(1)

    def rosenbrock(pop):
        x = values(pop)
        return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)

    def rastrigin(pop):
        x = values(pop)
        return 10 * x.shape[1] + (x**2 - 10 * torch.cos(2 * math.pi * x)).sum(1)

    fns = {"sphere": sphere, "ellipsoid": ellipsoid, "rosenbrock": rosenbrock}

    def to_target(algo, x0, f, limit, seed):
        g = torch.Generator().manual_seed(seed)
        state = algo.init(x0, generator=g)
        used = 0
        while used < limit:
            state, loss = algo.step(state, f, generator=g, donate=True)
            used += loss.shape[0]
            if float(loss.min()) < TARGET:
                return used, state
        return None, state

    out: dict = {"cmaes": {}, "sep": {}, "lm": {}}
    for d in DIMS:
        for name in PROBLEMS:
            for key, cls in (("cmaes", CMAES), ("sep", SepCMAES), ("lm", LMMAES)):
                algo = cls(population_size=population(d), sigma=SIGMA, maximize=False)
                t = time.perf_counter()
                k, limit = (seeds, budget(d)) if key == "cmaes" else (other_seeds, other_budget(d))
                runs = [to_target(algo, flat(d, start(name)), fns[name], limit, s)[0] for s in range(k)]
                out[key][f"{name}/{d}"] = runs
                print(f"  ours {key:5s} {name:10s} D={d:<3d} {time.perf_counter() - t:6.1f} s", file=sys.stderr, flush=True)
    if not skip_ipop:
        rows = []
        for s in range(10):
            algo = IPOP(algorithm=CMAES(population_size=population(10), sigma=2.0), maximize=False)
            used, state = to_target(algo, flat(10, 3.0), rastrigin, 2_000_000, s)
            rows.append({"evaluations": used, "restarts": state.restarts, "population": state.population_size,
                         "best": float(state.best_fitness)})
        out["ipop"] = rows
    # time per generation, D = 100,000 sphere
    timing = {}
    d = 100_000
    x0 = flat(d, 1.0)
    for key, cls in (("sep", SepCMAES), ("lm", LMMAES)):
        for dtype in (torch.float64, torch.float32):
            algo = cls(population_size=population(d), sigma=SIGMA, maximize=False, dtype=dtype)
            g = torch.Generator().manual_seed(0)
            state = algo.init(x0, generator=g)
            for _ in range(3):
                state, _ = algo.step(state, sphere, generator=g, donate=True)
            times = []
            for _ in range(15):
                t = time.perf_counter()
                state, _ = algo.step(state, sphere, generator=g, donate=True)
                times.append(time.perf_counter() - t)
            timing[f"{key}/{str(dtype).split('.')[-1]}"] = statistics.median(times) * 1e3
    out["timing"] = timing
    return out


# -- report --------------------------------------------------------------------------------


def median(runs: list) -> float:
    vals = sorted(math.inf if r is None else r for r in runs)
    n = len(vals)
    return vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])


def cell(runs: list) -> str:
    m = median(runs)
    ok = sum(r is not None for r in runs)
    return (f"{m:>9,.0f}" if math.isfinite(m) else f"{'inf':>9s}") + f" ({ok}/{len(runs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--other-seeds", type=int, default=5, help="seeds for SepCMAES and LMMAES")
    ap.add_argument("--skip-ipop", action="store_true")
    ap.add_argument("--pycma-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the raw runs here")
    args = ap.parse_args()
    if args.pycma_worker:
        pycma_worker(args.seeds)
        return
    ref = run_pycma(args.seeds)
    mine = ours(args.seeds, args.other_seeds, args.skip_ipop)
    print(f"Median evaluations to f < {TARGET:g} ({args.seeds} seeds; in brackets: runs that reached it), "
          f"pycma {ref['version']}, same N and sigma0 = {SIGMA}")
    print(f"{'problem':12s} {'D':>3s} {'N':>3s} {'pycma':>15s} {'CMAES':>15s} {'ratio':>6s} {'SepCMAES':>15s} {'LMMAES':>15s}"
          f"   (SepCMAES/LMMAES: {args.other_seeds} seeds, budget {other_budget(10):,}/{other_budget(40):,})")
    for d in DIMS:
        for name in PROBLEMS:
            k = f"{name}/{d}"
            p, c = median(ref["runs"][k]), median(mine["cmaes"][k])
            ratio = c / p if math.isfinite(p) and math.isfinite(c) else math.nan
            print(f"{name:12s} {d:3d} {population(d):3d} {cell(ref['runs'][k]):>15s} {cell(mine['cmaes'][k]):>15s} "
                  f"{ratio:6.2f} {cell(mine['sep'][k]):>15s} {cell(mine['lm'][k]):>15s}")
    if "ipop" in mine:
        rows = mine["ipop"]
        ok = [r["evaluations"] for r in rows if r["evaluations"] is not None]
        print(f"\nIPOP(CMAES) on Rastrigin D=10 (sigma0 2 from 3 * ones): {len(ok)}/{len(rows)} reached f < {TARGET:g}; "
              f"evaluations median {median([r['evaluations'] for r in rows]):,.0f}, "
              f"min {min(ok) if ok else math.nan:,}, max {max(ok) if ok else math.nan:,}")
        print("  per seed (evaluations, restarts, final N):",
              ", ".join(f"{r['evaluations']}/{r['restarts']}/{r['population']}" for r in rows))
    t = mine["timing"]
    print(f"\nD = 100,000 sphere, N = {population(100_000)}, median ms per generation (ask + evaluate + tell, 1 thread):")
    for key, label in (("sep", "SepCMAES"), ("lm", "LMMAES")):
        print(f"  {label:9s} float64 {t[key + '/float64']:8.1f}   float32 {t[key + '/float32']:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pycma": ref, "ours": mine}, f, indent=1)


if __name__ == "__main__":
    main()
