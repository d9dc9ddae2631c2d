"""Compat layer vs the legacy nytorch 1.1.0, side by side, CPU, 1 thread.

Run with the project venv:  python bench/bench_compat.py [--procs N]
The legacy half runs in bench/.venv-legacy (built by bench/legacy_env.sh)
as a subprocess with the very same script (``--worker``), so both import
``nytorch`` under its own name. Prints a table of times (median of repeats)
and ratios legacy / ours.

Each side runs in ``--procs`` worker processes (default 3, taken in turn)
and the table shows the median over processes, with the range of the first
row. With glibc's default settings a process either trims the heap after
every expression (each fresh 1 MB result then page-faults) or does not,
depending on where long-lived allocations happen to sit in the heap: the
same code, even the raw torch floor, runs 0.3 ms in one process and 1.3 ms
in the next. One process per side is a lottery there.

Cases:
  particle_ops   0.5 * net + 0.5 * other on NytoModules holding a
                 784-256-256-10 MLP (about 270k parameters); wall clock and
                 CPU time with gc on, and wall clock with gc off while timing
                 (what ``timeit`` does: the legacy library's reference cycles
                 are then never freed and its memory grows). Both libraries
                 build the three modules of the expression (every operator
                 returns a real module, computed when it runs)
  floor          the same arithmetic in raw torch on the same tensors: three
                 allocating ``torch._foreach_*`` passes whose results are
                 wrapped in ``nn.Parameter`` (no modules built): what any
                 implementation that builds every intermediate must pay, so
                 legacy / floor bounds the ratio it can reach
  product_ops    (0.5 * net.product() + 0.5 * other.product()).module()
  product_floor  its raw torch floor: the three passes, the last result
                 wrapped in ``nn.Parameter``
  touch_100      touch() of 100 particles after one edit (adds a parameter)
  inplace_ops    net += 0.5 * other (the parameters' data replaced, as the
                 legacy library does)
  cycles         for _ in range(1000): net = 0.5 * net + 1, then count the
                 particles still alive without gc.collect()
  faults         minor page faults per 0.5 * net + 0.5 * other, in each
                 process: about 740 (3 MB) where glibc trims the heap after
                 every expression, near 0 where it does not
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY_PY = os.path.join(HERE, ".venv-legacy", "bin", "python")


def worker() -> dict:
    import gc
    import warnings
    import weakref

    warnings.simplefilter("ignore")
    import torch
    from torch import nn

    import nytorch as nyto

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class MLP(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(784, 256)
            self.l2 = nn.Linear(256, 256)
            self.l3 = nn.Linear(256, 10)

        def forward(self, x):
            return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))

    def timed(fn, number, repeat=7, clock=time.perf_counter, collect=True):
        """Median seconds per call; ``collect=False`` disables gc while timing (as ``timeit`` does)."""
        for _ in range(3):
            fn()
        gc.collect()
        runs = []
        for _ in range(repeat):
            if not collect:
                gc.disable()
            try:
                t = clock()
                for _ in range(number):
                    fn()
                runs.append((clock() - t) / number)
            finally:
                gc.enable()
                gc.collect()
        runs.sort()
        return runs[len(runs) // 2]

    net = MLP()
    other = net.randn()
    out = {"params": sum(p.numel() for p in net.parameters())}
    ops = lambda: 0.5 * net + 0.5 * other  # noqa: E731
    prods = lambda: (0.5 * net.product() + 0.5 * other.product()).module()  # noqa: E731
    out["particle_ops"] = timed(ops, 50)
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        ops()
    out["particle_ops_faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100
    out["particle_ops_cpu"] = timed(ops, 50, clock=time.process_time)
    out["particle_ops_nogc"] = timed(ops, 50, collect=False)
    ps, qs = list(net.parameters()), list(other.parameters())

    def floor():
        with torch.no_grad():
            x = [nn.Parameter(t) for t in torch._foreach_mul(ps, 0.5)]
            y = [nn.Parameter(t) for t in torch._foreach_mul(qs, 0.5)]
            return [nn.Parameter(t) for t in torch._foreach_add(x, y)]

    def product_floor():
        with torch.no_grad():
            x = torch._foreach_mul(ps, 0.5)
            y = torch._foreach_mul(qs, 0.5)
            return [nn.Parameter(t) for t in torch._foreach_add(x, y)]

    out["floor"] = timed(floor, 50)
    out["product_floor"] = timed(product_floor, 50)
    out["product_ops"] = timed(prods, 50)
    out["product_ops_cpu"] = timed(prods, 50, clock=time.process_time)

    def touch_100():
        base = MLP()
        particles = [base.clone() for _ in range(100)]
        base.extra = nn.Parameter(torch.randn(16))
        t = time.perf_counter()
        for p in particles:
            p.touch()
        return time.perf_counter() - t

    runs = sorted(touch_100() for _ in range(5))
    out["touch_100"] = runs[2]

    acc = MLP()
    step = acc.randn()

    def inplace():
        nonlocal acc
        acc += 0.5 * step

    out["inplace_ops"] = timed(inplace, 50)

    gc.collect()
    gc.disable()
    try:
        x = MLP()
        refs = []
        for _ in range(1000):
            x = 0.5 * x + 1
            refs.append(weakref.ref(x))
        out["cycles_alive"] = sum(r() is not None for r in refs)
    finally:
        gc.enable()
    return out


TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def _run(python: str, extra_env: dict) -> dict:
    env = dict(os.environ, **extra_env)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [python, os.path.abspath(__file__), "--worker"], capture_output=True, text=True, cwd="/", env=env, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_of(runs: list) -> dict:
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = sorted(r[key] for r in runs)
            out[key] = values[len(values) // 2]
    return out


def _table(title: str, ours_runs: list, legacy_runs: list) -> None:
    ours, legacy = _median_of(ours_runs), _median_of(legacy_runs)
    print(title)
    print(f"{'case':<46}{'legacy':>12}{'ours':>12}{'legacy/ours':>14}")
    rows = [
        ("0.5*net + 0.5*other  (wall, gc on)", "particle_ops"),
        ("0.5*net + 0.5*other  (CPU time, gc on)", "particle_ops_cpu"),
        ("0.5*net + 0.5*other  (wall, gc off: timeit)", "particle_ops_nogc"),
        ("product ops then .module()  (wall)", "product_ops"),
        ("product ops then .module()  (CPU time)", "product_ops_cpu"),
        ("touch() of 100 particles after one edit", "touch_100"),
        ("net += 0.5*other  (wall)", "inplace_ops"),
    ]
    for label, key in rows:
        print(f"{label:<46}{legacy[key] * 1e3:>10.3f}ms{ours[key] * 1e3:>10.3f}ms{legacy[key] / ours[key]:>13.2f}x")
    for label, key, versus in (
        ("raw torch floor of 0.5*net + 0.5*other (wall)", "floor", "particle_ops"),
        ("raw torch floor of the product ops (wall)", "product_floor", "product_ops"),
    ):
        lo, fl = legacy[versus], ours[key]
        print(
            f"{label:<46}{lo * 1e3:>10.3f}ms{fl * 1e3:>10.3f}ms{lo / fl:>13.2f}x  (ours {ours[versus] / fl:.2f}x the floor;"
            f" the floor in legacy's processes {legacy[key] * 1e3:.3f}ms)"
        )
    print(f"{'particles alive after 1000 x net=0.5*net+1, no gc':<46}{legacy['cycles_alive']:>12}{ours['cycles_alive']:>12}")
    faults = [
        "/".join(f"{r['particle_ops_faults']:.0f}" for r in runs) for runs in (legacy_runs, ours_runs)
    ]
    print(f"{'page faults per 0.5*net+0.5*other, each process':<46}  legacy {faults[0]}; ours {faults[1]}")
    if len(ours_runs) > 1:
        spans = [
            f"{who} {min(r['particle_ops'] for r in runs) * 1e3:.3f}-{max(r['particle_ops'] for r in runs) * 1e3:.3f}ms"
            for who, runs in (("legacy", legacy_runs), ("ours", ours_runs))
        ]
        floors = [r["floor"] for r in ours_runs]
        print(
            f"medians over {len(ours_runs)} processes per side; first row's range: {', '.join(spans)}; "
            f"floor {min(floors) * 1e3:.3f}-{max(floors) * 1e3:.3f}ms"
        )
    print()


def main() -> None:
    procs = int(sys.argv[sys.argv.index("--procs") + 1]) if "--procs" in sys.argv else 3
    if not os.path.exists(LEGACY_PY):
        subprocess.run(["bash", os.path.join(HERE, "legacy_env.sh")], check=True)
    print("compat (nytorch on nytorch_fn) vs legacy nytorch 1.1.0, CPU, 1 thread, MLP 784-256-256-10")
    for title, env in (
        ("glibc malloc, default settings", {}),
        ("glibc malloc, no heap trimming (" + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items()) + ")", TUNED_MALLOC),
    ):
        ours, legacy = [], []
        for _ in range(procs):
            ours.append(_run(sys.executable, env))
            legacy.append(_run(LEGACY_PY, env))
        _table(f"{title}; {ours[0]['params']} parameters", ours, legacy)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        print(json.dumps(worker()))
    else:
        main()
