"""Bytes per generation of every sharded algorithm, and a weak-scaling model from them.

    python bench/bench_distributed.py [--ranks 2 4] [--quick] [--json out.json]

Launches gloo process groups on 127.0.0.1 (loopback only), runs one
generation (ask + evaluate + tell) of every algorithm in
``nytorch_fn.algorithms.ALGORITHMS`` under ``nfd.sharded`` (its protocol
example's hyperparameters) for several population sizes ``N`` and
parameter counts ``P``, and records the bytes each rank transmits through
collectives (``nytorch_fn.distributed.count_bytes``: the ``wire`` column is
bytes sent by this rank under ring/pipelined algorithms; the max over
ranks is reported). It also measures, on one process, the compute per
member per step (a forward+backward of the MLP on a batch) and the
loopback latency/bandwidth of gloo, then models weak scaling (fixed members
per rank) for 8 and 64 ranks on a stated network. Two cores cannot show
speed-up: the model is the claim, the measured bytes are its input (and are
checked against the closed-form expressions the model uses).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = {"P=1.2k": 32, "P=68k": 256}  # hidden width of a 32-in, 10-out MLP


def make_net(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(32, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def n_params(hidden: int) -> int:
    return sum(p.numel() for p in make_net(hidden).parameters())


# ---------------------------------------------------------------------------
# worker: one rank
# ---------------------------------------------------------------------------


def cases_for(n: int, tpl):
    """name -> (sharded-able algorithm, x, objectives): every registered algorithm at population ``n``
    (its protocol example's hyperparameters), plus the OpenAI-ES with the exact sum."""
    import attrs

    import nytorch_fn as nf
    from nytorch_fn import algorithms as alg

    pop = nf.random_population(tpl, n, generator=torch.Generator().manual_seed(2)) * 0.1
    out = {}
    for name, cls in sorted(alg.ALGORITHMS.items()):
        ex = cls._example()
        a = ex.algorithm
        if a.kind == "distribution":
            if "population_size" not in attrs.fields_dict(type(a)):
                continue
            try:
                a = attrs.evolve(a, population_size=n)
            except (ValueError, TypeError):
                continue
            out[name] = (a, tpl, ex.objectives)
        else:
            if name == "Hybrid":
                a = attrs.evolve(a, every=1, subset=max(1, n // 4))
            out[name] = (a, pop, ex.objectives)
    if "OpenAIES" in out:
        es = out["OpenAIES"][0]
        out["OpenAIES"] = (attrs.evolve(es, exact=False), tpl, 1)
        out["OpenAIES exact"] = (attrs.evolve(es, exact=True), tpl, 1)
    return out


def fitness_of(objectives: int):
    def f(pop):
        xs = [pop.tensors[i] for i in pop.species.layout().op]
        one = -sum((t.double() ** 2).flatten(1).sum(1) for t in xs)
        return one if objectives == 1 else torch.stack([one, -sum(((t.double() - 1) ** 2).flatten(1).sum(1) for t in xs)], 1)

    return f


def worker(out_path: str, ns: list[int]) -> None:
    import nytorch_fn as nf
    import nytorch_fn.distributed as nfd

    nfd.init(backend="gloo", timeout=60)
    w = nfd.world()
    rows = []
    for label, hidden in WIDTHS.items():
        torch.manual_seed(0)
        tpl = nf.particle(make_net(hidden))
        for n in ns:
            if n < w.size:
                continue
            for case, (a, x, objectives) in cases_for(n, tpl).items():
                s = nfd.sharded(a)
                g = torch.Generator().manual_seed(3)
                f = fitness_of(objectives)
                if case in ("CMAES", "XNES", "IPOP", "BIPOP") and n_params(hidden) > 10_000:
                    continue  # a d x d matrix: D up to about 1e4 (SNES/SepCMAES/LMMAES are the large-D ones)
                st = s.init(x, generator=g)
                st, _ = s.step(st, f, generator=g)  # a first generation (the best improves in it)
                with nfd.count_bytes() as log:  # one generation: ask + evaluate + tell
                    st, _ = s.step(st, f, generator=g)
                rows.append({"case": case, "N": n, "P": n_params(hidden), "label": label, "R": w.size,
                             "rank": w.rank, "wire": log.wire, "payload": log.payload, "calls": log.calls,
                             "ops": {k: v[1] for k, v in log.by_op().items()}})
            with nfd.count_bytes() as log:
                nfd.gather(nfd.from_local(nfd.shard(nf.random_population(tpl, n)).local), dst=0)
            rows.append({"case": "checkpoint gather", "N": n, "P": n_params(hidden), "label": label, "R": w.size,
                         "rank": w.rank, "wire": log.by_op().get("gather(members)", (0, 0.0))[1], "payload": 0,
                         "calls": 1, "ops": {}})
    # loopback alpha/beta: time all_gather of 4 bytes and of 4 MB per rank
    lat = []
    for size in (1, 1 << 20):
        t = torch.zeros(size)
        out = [torch.empty_like(t) for _ in range(w.size)]
        torch.distributed.all_gather(out, t)
        reps = 50 if size == 1 else 5
        start = time.perf_counter()
        for _ in range(reps):
            torch.distributed.all_gather(out, t)
        lat.append((time.perf_counter() - start) / reps)
    rows.append({"case": "_loopback", "R": w.size, "rank": w.rank, "small_s": lat[0], "big_s": lat[1],
                 "big_wire": (w.size - 1) * 4 * (1 << 20)})
    Path(out_path).write_text(json.dumps(rows))
    nfd.shutdown()


def launch(ranks: int, ns: list[int], tmp: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(ranks):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(ranks),
                   GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-W", "ignore", __file__, "--worker", str(tmp / f"r{ranks}_{r}.json"),
               "--ns", *map(str, ns)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
    for p in procs:
        p.wait(timeout=600)
    rows = []
    for r in range(ranks):
        rows += json.loads((tmp / f"r{ranks}_{r}.json").read_text())
    return rows


# ---------------------------------------------------------------------------
# compute per member, the model
# ---------------------------------------------------------------------------


def compute_per_member(hidden: int, n: int = 32, batch: int = 64) -> float:
    """Seconds of one vmapped forward+backward step per member (one process, one thread)."""
    import nytorch_fn as nf

    torch.set_num_threads(1)
    tpl = nf.particle(make_net(hidden))
    pop = nf.random_population(tpl, n, generator=torch.Generator().manual_seed(0)) * 0.1
    x, y = torch.randn(n, batch, 32), torch.randint(0, 10, (n, batch))

    def loss(p, x, y):
        return nn.functional.cross_entropy(nf.apply(p, x), y)

    step = torch.func.vmap(torch.func.grad(loss))
    step(pop, x, y)
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
        g = step(pop, x, y)
        pop = pop - 0.01 * g
    return (time.perf_counter() - start) / reps / n


def wire_model(case: str, n: int, p_bytes: int, r: int) -> float | None:
    """Closed-form bytes one rank transmits per generation (worst rank, upper bound), or None.

    Every tell gathers the ``[N]`` float64 fitness; the base broadcasts the new best member
    when it improves (counted: an upper bound).
    """
    m = -(-n // r)  # largest block
    fit = (r - 1) * 8 * m  # all_gather of the float64 fitness, padded to the largest block
    bcast = p_bytes * (r - 1) / r
    ring = 2 * (r - 1) / r
    take = lambda rows: 2 * (r - 1) * 8 + (r - 1) * 8 * rows + rows * p_bytes  # noqa: E731 counts, indices, rows
    if case == "APSO":
        return fit + bcast
    if case == "Hybrid":
        return fit + 2 * bcast  # the best, and the blend's target
    if case == "OpenAIES":
        return fit + bcast + ring * p_bytes  # one float all_reduce of the P gradient values
    if case == "OpenAIES exact":
        # int64 all_reduce (8 B per value) + the float64 maxima of the 6 tensors and the weights
        return fit + bcast + ring * 2 * p_bytes + ring * 8 * (6 + 1)
    if case == "GeneticAlgorithm":
        return fit + bcast + 2 * take(m)
    if case == "PBT":
        return fit + bcast + (r - 1) * 8 * m + take(m)  # + the hyperparameter gather
    if case == "checkpoint gather":
        return m * p_bytes
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--ns", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--json")
    ap.add_argument("--k", type=int, default=10, help="local steps per global step in the model")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.ns)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rows = []
        for r in args.ranks:
            rows += launch(r, args.ns, Path(d))
    meas = [x for x in rows if x["case"] != "_loopback"]
    loop = [x for x in rows if x["case"] == "_loopback"]
    print("## Bytes sent per rank per global step (max over ranks), measured; model in brackets\n")
    print("| case | P | N | R | calls | wire bytes | model (upper bound) |")
    print("|---|---|---|---|---|---|---|")
    worst: dict = {}
    for x in meas:
        key = (x["case"], x["P"], x["N"], x["R"])
        if key not in worst or x["wire"] > worst[key]["wire"]:
            worst[key] = x
    bad = 0
    modelled = 0
    for (case, p, n, r), x in sorted(worst.items()):
        model = wire_model(case, n, 4 * p, r)
        if model is None:
            print(f"| {case} | {p} | {n} | {r} | {x['calls']} | {x['wire']:,.0f} | — |")
            continue
        modelled += 1
        ok = x["wire"] <= model * 1.0001 + 1
        bad += not ok
        print(f"| {case} | {p} | {n} | {r} | {x['calls']} | {x['wire']:,.0f} | {model:,.0f}{'' if ok else ' (!)'} |")
    print(f"\nmeasured within model bound: {modelled - bad}/{modelled}")
    for r in sorted({x['R'] for x in loop}):
        xs = [x for x in loop if x["R"] == r]
        small = max(x["small_s"] for x in xs)
        big = max(x["big_s"] for x in xs)
        print(f"loopback gloo R={r}: all_gather 4 B {small * 1e6:.0f} us, 4 MiB/rank {big * 1e3:.1f} ms "
              f"({xs[0]['big_wire'] / big / 1e9:.2f} GB/s per rank)")
    big = torch.empty(1 << 22)
    start = time.perf_counter()
    torch.randn(big.shape, out=big, generator=torch.Generator().manual_seed(0))
    rng_s = (time.perf_counter() - start) / big.numel()
    print(f"randn: {rng_s * 1e9:.2f} ns per value (the ES's per-member noise, local members only)")
    from nytorch_fn._algorithms._base import LocalCollective

    import nytorch_fn as nf

    noise = nf.random_population(nf.particle(make_net(WIDTHS["P=68k"])), 64, generator=torch.Generator().manual_seed(0))
    shaped = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64)
    coll = LocalCollective(64)
    values = 64 * sum(t[0].numel() for t in noise.tensors)
    sums = {}
    for exact in (False, True):
        coll.weighted_sum(noise, shaped, exact=exact)
        start = time.perf_counter()
        coll.weighted_sum(noise, shaped, exact=exact)
        sums[exact] = (time.perf_counter() - start) / values
    fx_s = sums[False]
    print(f"weighted sum: {sums[False] * 1e9:.2f} ns per value (fast), {sums[True] * 1e9:.2f} (exact)")
    print("\n## Weak-scaling model (fixed members per rank, global step every k local steps)\n")
    print("T_local = n_local * c (c: measured seconds per member per step);")
    print("T_comm per global step = a * (R - 1) [ring all_gather latency] + 2 a * log2 R [broadcast/all_to_all]")
    print("                         + wire(N = R n_local, P, R) / B; efficiency = k T_local / (k T_local + T_comm).")
    print("Network assumed: a = 20 us, B = 12.5 GB/s (100 Gb/s); and B = 1.25 GB/s (10 Gb/s).\n")
    print("| P | case | n_local | c (ms/member) | eff. R=8 (100G) | eff. R=64 (100G) | eff. R=64 (10G) |")
    print("|---|---|---|---|---|---|---|")
    model_rows = []
    import math

    for label, hidden in WIDTHS.items():
        p = n_params(hidden)
        c = compute_per_member(hidden)
        for case in ("Hybrid", "OpenAIES", "GeneticAlgorithm", "PBT"):
            for n_local in (4, 32):
                effs = []
                for r, bw in ((8, 12.5e9), (64, 12.5e9), (64, 1.25e9)):
                    n = r * n_local
                    useful = n_local * c
                    redundant = 0.0
                    if case == "OpenAIES":
                        # per-member noise streams: a rank draws only its n_local x P values and
                        # sums only its rows in fixed point; nothing is redundant
                        useful += n_local * p * (rng_s + fx_s)
                    a = 20e-6
                    t_comm = a * (r - 1) + 2 * a * math.log2(r) + wire_model(case, n, 4 * p, r) / bw
                    k = args.k if case == "Hybrid" else 1
                    effs.append(k * useful / (k * useful + redundant + t_comm))
                model_rows.append({"P": p, "case": case, "n_local": n_local, "c": c, "eff": effs})
                print(f"| {p} | {case}{' (k=%d)' % args.k if case == 'Hybrid' else ''} | {n_local} | "
                      f"{c * 1e3:.3f} | {effs[0]:.2f} | {effs[1]:.2f} | {effs[2]:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": meas, "loopback": loop, "model": model_rows}, indent=1))


if __name__ == "__main__":
    main()
