"""Issue 11 figures: eager particle arithmetic and the named one-pass primitives vs raw torch.

Run: python bench/run.py values            (CPU, 1 thread, 3 fresh processes)
     MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 python bench/run.py values

- the 269,322-parameter MLP: ``nf.lerp`` vs ``torch._foreach_lerp``; the natural
  ``0.5 * p + 0.5 * q`` (three passes and three allocations by definition) vs the
  two-pass foreach floor (``_foreach_mul`` then ``_foreach_add_``), eager and
  under ``torch.compile``;
- a population of 64 MLPs 64-64-64-10 blended toward the best: ``nf.lerp``
  (fresh and donated) and the natural expression vs ``torch.lerp`` on the
  stacked tensors, and the legacy library's loop of ParamProduct ops;
- the demo's training step (vmap(grad) + Adam over 64 MLPs 64-128-10 on a
  digits-sized batch): one-time compile cost and steady-state compiled/eager.
"""

from __future__ import annotations

import time
import warnings

import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import optim
from _harness import compare, legacy, mlp, table

warnings.filterwarnings("ignore")
SIZES = [784, 256, 256, 10]


def single() -> dict:
    torch.manual_seed(0)
    p = nf.particle(mlp(SIZES))
    q = p.randn(generator=torch.Generator().manual_seed(1))
    P, Q = list(p.tensors), list(q.tensors)

    def two_pass():
        r = torch._foreach_mul(P, 0.5)
        torch._foreach_add_(r, Q)
        return r

    def natural():
        return 0.5 * p + 0.5 * q

    start = time.perf_counter()
    compiled = torch.compile(natural)
    compiled()
    compile_s = time.perf_counter() - start
    assert all(torch.equal(a, b) for a, b in zip(compiled().tensors, natural().tensors))  # float32: same bits
    t = compare(
        {
            "raw torch._foreach_lerp": lambda: torch._foreach_lerp(P, Q, 0.5),
            "nf.lerp(p, q, 0.5)": lambda: nf.lerp(p, q, 0.5),
            "raw two-pass floor (_foreach_mul, _foreach_add_)": two_pass,
            "raw natural (3 foreach ops)": lambda: torch._foreach_add(torch._foreach_mul(P, 0.5), torch._foreach_mul(Q, 0.5)),
            "nf 0.5 * p + 0.5 * q (eager)": natural,
            "nf 0.5 * p + 0.5 * q (torch.compile)": compiled,
            "nf.lincomb([0.5, 0.5], [p, q])": lambda: nf.lincomb([0.5, 0.5], [p, q]),
        }
    )
    n = sum(x.numel() for x in p.tensors)
    old = legacy("blend", sizes=SIZES) or {}
    table(f"one particle, a {n:,}-parameter MLP {SIZES} (compile took {compile_s:.1f} s once)", list(t.items()) + list(old.items()),
          "raw two-pass floor (_foreach_mul, _foreach_add_)")
    return {
        "lerp / foreach_lerp floor": t["nf.lerp(p, q, 0.5)"] / t["raw torch._foreach_lerp"],
        "natural / two-pass floor": t["nf 0.5 * p + 0.5 * q (eager)"] / t["raw two-pass floor (_foreach_mul, _foreach_add_)"],
        "compiled natural / two-pass floor": t["nf 0.5 * p + 0.5 * q (torch.compile)"] / t["raw two-pass floor (_foreach_mul, _foreach_add_)"],
        "lincomb / two-pass floor": t["nf.lincomb([0.5, 0.5], [p, q])"] / t["raw two-pass floor (_foreach_mul, _foreach_add_)"],
        **({"legacy ParamProduct op / nf natural": old["legacy ParamProduct op"] / t["nf 0.5 * p + 0.5 * q (eager)"]} if old else {}),
    }


def population(n: int = 64, sizes=(64, 64, 64, 10)) -> dict:
    torch.manual_seed(0)
    pop = nf.init_population(mlp(sizes), n, generator=torch.Generator().manual_seed(0))
    best = nf.best(pop, torch.arange(n, dtype=torch.float32))
    stacked, target = [t.clone() for t in pop.tensors], list(best.tensors)
    own = {"pop": nf.stack(nf.unstack(pop))}

    def donated():
        own["pop"] = nf.lerp(own["pop"], best, 0.5, donate=True)

    t = compare(
        {
            "raw torch.lerp on the stacked tensors": lambda: [torch.lerp(s, b, 0.5) for s, b in zip(stacked, target)],
            "raw in place (torch._foreach_lerp_)": lambda: torch._foreach_lerp_(stacked, target, 0.5),
            "nf.lerp(pop, best, 0.5)": lambda: nf.lerp(pop, best, 0.5),
            "nf.lerp(pop, best, 0.5, donate=True)": donated,
            "nf 0.5 * pop + 0.5 * best": lambda: 0.5 * pop + 0.5 * best,
        },
        budget=0.1,
    )
    old = legacy("blend_population", sizes=list(sizes), n=n) or {}
    rows = list(t.items()) + list(old.items())
    table(f"population of {n} MLPs {list(sizes)} blended toward the best", rows, "raw torch.lerp on the stacked tensors")
    out = {
        "pop lerp / torch.lerp stacked": t["nf.lerp(pop, best, 0.5)"] / t["raw torch.lerp on the stacked tensors"],
        "pop lerp donated / in-place floor": t["nf.lerp(pop, best, 0.5, donate=True)"] / t["raw in place (torch._foreach_lerp_)"],
        "pop natural / torch.lerp stacked": t["nf 0.5 * pop + 0.5 * best"] / t["raw torch.lerp on the stacked tensors"],
    }
    if old:
        out["legacy loop / nf.lerp"] = old["legacy loop of ParamProduct ops"] / t["nf.lerp(pop, best, 0.5)"]
    return out


def training_step(n: int = 64, hidden: int = 128, batch: int = 128) -> dict:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    pop = nf.init_population(net, n, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(n, batch, 64), torch.randint(0, 10, (n, batch))
    opt = optim.adam(3e-3)

    def loss(m, xb, yb):
        return nn.functional.cross_entropy(nf.apply(m, xb), yb)

    def step(pop, state):
        grads = torch.func.vmap(torch.func.grad(loss))(pop, x, y)
        updates, state = opt.update(grads, state, pop)
        return optim.apply_updates(pop, updates), state

    state = opt.init(pop)
    start = time.perf_counter()
    compiled = torch.compile(step)
    compiled(pop, state)
    compile_s = time.perf_counter() - start
    e_pop, _ = step(pop, state)
    c_pop, _ = compiled(pop, state)
    worst = max(float((a - b).abs().max()) for a, b in zip(e_pop.tensors, c_pop.tensors))
    t = compare({"eager step": lambda: step(pop, state), "compiled step": lambda: compiled(pop, state)}, budget=0.2)
    table(f"demo training step: vmap(grad) + adam over {n} MLPs 64-{hidden}-10, batch {batch} "
          f"(compile {compile_s:.1f} s once; max |compiled - eager| {worst:.1e})", list(t.items()), "eager step")
    return {"compile seconds (once)": compile_s, "compiled / eager step": t["compiled step"] / t["eager step"]}


def main() -> dict:
    results = {}
    results.update(single())
    results.update(population())
    results.update(training_step())
    return results
