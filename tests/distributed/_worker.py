"""One rank of a distributed test run: ``python -m tests.distributed._worker SUITE OUTDIR``.

Writes ``OUTDIR/rank{R}.pt`` (plain tensors, lists, dicts, strings) for the
test process to compare against single-process references.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch import nn

import nytorch_fn as nf
import nytorch_fn.distributed as nfd
from nytorch_fn import checkpoint

from . import _scenarios as sc

SIZES = {2: 7, 4: 10}  # uneven blocks on purpose


def leaves(p: nf.Particle) -> list[torch.Tensor]:
    return [t.detach().clone() for t in p.tensors]


def suite_ops() -> dict:
    w = nfd.world()
    n = SIZES[w.size]
    tpl = sc.template()
    full = sc.population(tpl, n)
    sh = nfd.shard(full)
    out: dict = {"sizes": list(sh.sizes), "offset": sh.offset, "local": leaves(sh.local)}
    # a fitness with a NaN and a tie, computed on the local block only
    f_full = torch.arange(n, dtype=torch.float32) % 4
    f_full[1] = float("nan")
    f_local = sh.block(f_full).clone()
    out["fitness"] = nfd.gather_fitness(sh, f_local)
    b = nfd.best(sh, f_local)
    out["best"], out["best_index"], out["best_fitness"] = leaves(b.member), b.index, b.fitness
    b = nfd.best(sh, f_local, maximize=False)
    out["worst"], out["worst_index"] = leaves(b.member), b.index
    out["top3"] = leaves(nfd.global_top_k(sh, f_local, 3))
    out["shaped"] = nfd.shaped_fitness(sh, sc.losses(sh.local), maximize=False)
    idx = torch.tensor([n - 1, 0, 2, 2, n - 1, 1])
    out["fetch"] = leaves(nfd.fetch(sh, idx))
    tidx = torch.randint(0, n, (n + 3,), generator=torch.Generator().manual_seed(5))
    taken = nfd.take(sh, tidx)
    out["take"], out["take_sizes"] = leaves(taken.local), list(taken.sizes)
    out["all_gather"] = leaves(nfd.all_gather(sh))
    g = nfd.gather(sh, dst=w.size - 1)
    out["gather"] = None if g is None else leaves(g)
    out["mean"] = leaves(nfd.mean(sh))
    out["weighted_mean"] = leaves(nfd.weighted_mean(sh, sh.block(torch.linspace(0.5, 2.0, n))))
    mine = sc.population(tpl, n) * float(w.rank + 1)
    out["broadcast"] = leaves(nfd.broadcast(mine[0], src=1))
    # uneven blocks from each rank's own members
    fl = nfd.from_local(full[: w.rank + 1])
    out["from_local_sizes"] = list(fl.sizes)
    # bytes of one best(): fitness all_gather + one member broadcast
    with nfd.count_bytes() as log:
        nfd.best(sh, f_local)
    out["best_log"] = [[r.op, r.payload, r.wire] for r in log.records]
    # species differing across ranks: refused on every rank alike
    other = nf.particle(nn.Linear(3, 5 + (w.rank % 2)))
    try:
        nfd.shard(nf.random_population(other, n, generator=torch.Generator().manual_seed(0)))
        out["mismatch"] = "no error"
    except nf.SpeciesMismatchError as e:
        out["mismatch"] = str(e)
    # the group is still usable after the refusal
    out["after"] = nfd.gather_fitness(sh, f_local)
    return out


def flat_state(state) -> list:
    """The state's leaves (tensors cloned, numbers as they are), in pytree order."""
    leaves, _ = pytree.tree_flatten(state)
    return [t.detach().clone() if isinstance(t, torch.Tensor) else t for t in leaves]


def suite_algos() -> dict:
    """Every registered algorithm, sharded, from the same seeds as the single-process reference."""
    out: dict = {}
    for name, (a, x, objectives, exact) in sc.algorithm_cases().items():
        s = nfd.sharded(a)
        with nfd.count_bytes() as log:
            st = sc.run_case(s, x, objectives)
        coll = nfd.DistributedCollective(st.asked[0, 0].item(), nfd.world())
        out[name] = {"leaves": flat_state(st), "rows": [coll.rows.start, coll.rows.stop],
                     "wire": log.wire, "calls": log.calls}
    return out


def _apso_run(st, s, g, start: int, stop: int, outdir: Path, *, die_at: int | None = None):
    rank = nfd.world().rank
    for step in range(start, stop):
        if die_at is not None and step == die_at and rank == 1:
            os._exit(3)  # a rank dies without a word
        st, _ = s.step(st, sc.losses, generator=g)
        if step == 1:  # checkpoint after generation 2: each rank its own state, and the generator
            checkpoint.save(outdir / f"ckpt{rank}.safetensors", {"state": st, "rng": g.get_state()})
            nfd.check_alive(timeout=10)  # nobody goes on before every rank has written
    return st


def suite_die(outdir: Path) -> dict:
    """APSO for 5 generations, checkpoint after 2; rank 1 dies in generation 4."""
    w = nfd.world()
    s = nfd.sharded(sc.fault_algorithm())
    g = torch.Generator().manual_seed(3)
    st = s.init(sc.population(sc.template(), SIZES[w.size]), generator=g)
    start = time.monotonic()
    try:
        _apso_run(st, s, g, 0, 5, outdir, die_at=3)
        return {"error": "none"}
    except nfd.DistributedError as e:
        return {"error": str(e), "elapsed": time.monotonic() - start}
    finally:
        nfd.shutdown()


def suite_resume(outdir: Path) -> dict:
    """Resume the run of ``suite_die`` from the checkpoints and finish 5 generations."""
    w = nfd.world()
    s = nfd.sharded(sc.fault_algorithm())
    like = {"state": s.init(sc.population(sc.template(), SIZES[w.size])), "rng": torch.Generator().get_state()}
    ck = checkpoint.load(outdir / f"ckpt{w.rank}.safetensors", like=like)
    g = torch.Generator()
    g.set_state(ck["rng"])
    st = ck["state"]
    st = _apso_run(st, s, g, st.generation, 5, outdir / "unused")
    return {"pop": leaves(st.population), "best": leaves(st.best), "generation": st.generation, "world": w.size}


def suite_hang() -> dict:
    """Rank 1 stops answering; rank 0's next collective must fail within the timeout."""
    w = nfd.world()
    sh = nfd.shard(sc.population(sc.template(), SIZES[w.size]))
    if w.rank == 1:
        time.sleep(30)  # the launcher kills us once rank 0 is done
        return {}
    start = time.monotonic()
    try:
        nfd.gather_fitness(sh, torch.zeros(len(sh.local)))
        return {"error": "none"}
    except nfd.DistributedError as e:
        return {"error": str(e), "elapsed": time.monotonic() - start}
    finally:
        nfd.shutdown()


def main() -> int:
    suite, outdir = sys.argv[1], Path(sys.argv[2])
    timeout = 3.0 if suite in ("hang", "die") else 30.0
    nfd.init(backend="gloo", timeout=timeout)
    rank = nfd.world().rank
    try:
        if suite == "main":
            out = {"ops": suite_ops(), "algos": suite_algos()}
        elif suite == "die":
            out = suite_die(outdir)
        elif suite == "resume":
            out = suite_resume(outdir)
        elif suite == "hang":
            out = suite_hang()
        else:
            raise SystemExit(f"unknown suite {suite!r}")
        code = 0
    except BaseException:
        out = {"__error__": traceback.format_exc()}
        code = 1
    torch.save(out, outdir / f"rank{rank}.pt")
    nfd.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
