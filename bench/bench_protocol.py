"""The algorithm protocol's costs: the OpenAI-ES's ask/tell, and a generation under both heap settings.

    flock /tmp/nytorch-bench.lock python bench/bench_protocol.py [--old-tree DIR] [--only NAME ...]

1. OpenAI-ES ``ask`` and ``tell`` at N = 256, D = 1,000 and D = 100,000 (one
   tensor of D values, one thread): the default (fast) gradient sum and
   ``exact=True``; with ``--old-tree DIR`` also the implementation before the
   protocol (``git archive cb0e2e0 nytorch_fn | tar -x -C DIR``), timed in the
   same process side by side.
2. One generation (ask + evaluate a sphere + tell, inside ``run``, which
   donates its own buffers) of every registered algorithm that handles
   D = 100,000 at N = 256, in a fresh process under default glibc and under
   ``MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=1073741824`` (no returning
   memory to the OS): median ms per generation (the best of ``--repeat``
   processes per setting, the settings alternating) and the ratio (target <= 1.2x).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HEAP = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
SKIP_LARGE = ("CMAES", "XNES", "IPOP", "BIPOP")  # a d x d matrix: D up to about 1e4


def vector_particle(nf, d: int):
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(torch.zeros(d))
    return nf.particle(m)


def sphere(pop) -> torch.Tensor:
    """Minus the squared norm per member, with no temporary of the population's size (a fitness
    that allocates N x D itself would measure the allocator on the user's side)."""
    return -torch.linalg.vector_norm(pop.tensors[0], dim=1).double().pow(2)


def median_ms(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1e3


def es_times(old_tree: str | None) -> list[dict]:
    torch.set_num_threads(1)
    import nytorch_fn as nf
    from nytorch_fn.algorithms import OpenAIES

    old = None
    if old_tree:
        # the old package under another name, in this process
        saved = {k: v for k, v in sys.modules.items() if k == "nytorch_fn" or k.startswith("nytorch_fn.")}
        for k in saved:
            del sys.modules[k]
        sys.path.insert(0, old_tree)
        try:
            old = importlib.import_module("nytorch_fn")
            old_alg = importlib.import_module("nytorch_fn.algorithms")
        finally:
            sys.path.remove(old_tree)
            for k in [k for k in sys.modules if k == "nytorch_fn" or k.startswith("nytorch_fn.")]:
                sys.modules["_old_" + k] = sys.modules.pop(k)
            sys.modules.update(saved)
    rows = []
    for d in (1000, 100_000):
        repeat = 21 if d == 1000 else 5
        p = vector_particle(nf, d)
        for label, kw in (("fast (default)", {}), ("exact=True", {"exact": True})):
            es = OpenAIES(population_size=256, sigma=0.1, **kw)
            g = torch.Generator().manual_seed(0)
            s = es.init(p)
            pop, s2 = es.ask(s, generator=g)
            fit = sphere(pop)
            rows.append({"D": d, "impl": f"protocol, {label}",
                         "ask": median_ms(lambda: es.ask(s2, generator=g, donate=False), repeat),
                         "tell": median_ms(lambda: es.tell(s2, pop, fit), repeat)})
        if old is not None:
            po = vector_particle(old, d)
            es = old_alg.OpenAIES(population_size=256, sigma=0.1)
            g = torch.Generator().manual_seed(0)
            s = es.init(po)
            pop, s2 = es.ask(s, generator=g)
            fit = sphere(pop)
            rows.append({"D": d, "impl": "before (cb0e2e0, exact fixed point)",
                         "ask": median_ms(lambda: es.ask(s, generator=g), repeat),
                         "tell": median_ms(lambda: es.tell(s2, fit, population=pop), repeat)})
    return rows


def child(names: list[str], d: int, n: int, generations: int) -> None:
    """One process: median ms per generation of each algorithm inside ``run``."""
    import attrs

    torch.set_num_threads(1)
    import nytorch_fn as nf
    from nytorch_fn import algorithms as alg

    p = vector_particle(nf, d)
    out = {}
    for name in names:
        ex = alg.ALGORITHMS[name]._example()
        a = ex.algorithm
        if ex.objectives != 1:
            continue
        if a.kind == "distribution":
            a = attrs.evolve(a, population_size=n)
            x = p
        else:
            x = nf.random_population(p, n, generator=torch.Generator().manual_seed(1))
        if name == "Hybrid":
            a = attrs.evolve(a, subset=n // 4)
        g = torch.Generator().manual_seed(2)
        state = a.init(x, generator=g)
        stamps = []

        def f(pop):
            stamps.append(time.perf_counter())
            return sphere(pop)

        a.run(state, f, generations, generator=g)
        gaps = sorted(b - c for b, c in zip(stamps[2:], stamps[1:-1]))  # the first two warm up
        out[name] = gaps[len(gaps) // 2] * 1e3
    print(json.dumps(out))


def heap_table(names: list[str], d: int, n: int, generations: int, repeat: int = 3) -> dict:
    """Per setting and algorithm, the best median over ``repeat`` fresh processes, the two settings
    alternating (so a burst of load on this shared machine hits both alike)."""
    results: dict = {"default glibc": {}, "fixed heap": {}}
    for _ in range(repeat):
        for label, extra in (("default glibc", {}), ("fixed heap", HEAP)):
            env = {k: v for k, v in os.environ.items() if k not in HEAP}
            env.update(extra, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
            cmd = [sys.executable, __file__, "--child", "--d", str(d), "--n", str(n), "--generations",
                   str(generations), "--only", *names]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            for name, ms in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                results[label][name] = min(ms, results[label].get(name, float("inf")))
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-tree")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--d", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--generations", type=int, default=7)
    ap.add_argument("--skip-es", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per heap setting (alternating)")
    ap.add_argument("--json")
    args = ap.parse_args()
    from nytorch_fn import algorithms as alg

    names = args.only or [k for k in sorted(alg.ALGORITHMS) if k not in SKIP_LARGE]
    if args.child:
        child(names, args.d, args.n, args.generations)
        return
    report: dict = {}
    if not args.skip_es:
        rows = es_times(args.old_tree)
        report["es"] = rows
        print("## OpenAI-ES, N = 256, one thread: median ms\n")
        print("| D | implementation | ask | tell |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['D']:,} | {r['impl']} | {r['ask']:.2f} | {r['tell']:.2f} |")
    heap = heap_table(names, args.d, args.n, args.generations, args.repeat)
    report["heap"] = heap
    a, b = heap["default glibc"], heap["fixed heap"]
    print(f"\n## One generation inside run(), N = {args.n}, D = {args.d:,}: median ms, best of {args.repeat} "
          "fresh processes per setting\n")
    print("| algorithm | default glibc | MALLOC_*_THRESHOLD_=1 GiB | ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for name in a:
        ratio = max(a[name], b[name]) / min(a[name], b[name])
        worst = max(worst, ratio)
        print(f"| {name} | {a[name]:.1f} | {b[name]:.1f} | {ratio:.2f}x |")
    print(f"\nworst ratio {worst:.2f}x (target <= 1.2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
