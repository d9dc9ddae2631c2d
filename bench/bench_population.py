"""Issue 3 figures: populations vs a Python loop of modules, vs the raw stacked-torch floor, vs legacy.

Runs at torch's default thread count (this machine's cores); loops and vmap
are also timed at 1 thread so the ratios can be read both ways.

Run: python bench/run.py population
"""

from __future__ import annotations

import copy
import subprocess
import sys

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import nytorch_fn as nf
from _harness import HERE, compare, fmt, legacy, mlp, table
from nytorch_fn import optim

#: populations are measured on the whole machine (torch's default thread count);
#: loops are also timed at 1 thread, their best setting for many tiny ops.
ALL = torch.get_num_threads()


def _sync(device: str):
    return torch.cuda.synchronize if str(device).startswith("cuda") else None


def blend_toward_best(n: int = 64, sizes=(64, 64, 64, 10), device: str = "cpu") -> dict:
    torch.manual_seed(0)
    pop = nf.init_population(mlp(sizes), n).to(device)
    best = pop[0].clone()
    stacked, target = list(pop.tensors), list(best.tensors)

    def floor():
        return [torch.lerp(t, b, 0.5) for t, b in zip(stacked, target)]

    t = compare(
        {
            "raw floor (torch.lerp per stacked tensor)": floor,
            "nytorch_fn nf.lerp(pop, best, 0.5)": lambda: nf.lerp(pop, best, 0.5),
        },
        sync=_sync(device),
    )
    old = legacy("blend_population", sizes=list(sizes), n=n, device=device) or {}
    rows = list(t.items()) + list(old.items())
    table(f"blend toward the best, N={n} MLPs {list(sizes)}", rows, "raw floor (torch.lerp per stacked tensor)")
    ours = t["nytorch_fn nf.lerp(pop, best, 0.5)"]
    out = {"blend ours/floor": ours / t["raw floor (torch.lerp per stacked tensor)"]}
    if old:
        out["blend legacy/ours"] = old["legacy loop of ParamProduct ops"] / ours
    return out


def forward(n: int = 256, sizes=(32, 32, 32, 10), batch: int = 128, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    modules = [mlp(sizes).to(device) for _ in range(n)]
    pop = nf.stack_modules(modules)
    x = torch.randn(batch, sizes[0], device=device)
    params, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0]).to("meta")

    def one(p, b, xx):
        return functional_call(base, (p, b), (xx,))

    raw = vmap(one, in_dims=(0, 0, None))

    loop = lambda: torch.stack([m(x) for m in modules])  # noqa: E731
    with torch.no_grad():
        t = compare(
            {
                f"Python loop of modules ({ALL} threads)": loop,
                "Python loop of modules (1 thread)": loop,
                f"raw torch.func (stack_module_state+vmap, {ALL} thr)": lambda: raw(params, buffers, x),
                f"nytorch_fn vmap_apply(pop, x) ({ALL} threads)": lambda: nf.vmap_apply(pop, x),
                "raw torch.func (1 thread)": lambda: raw(params, buffers, x),
                "nytorch_fn vmap_apply(pop, x) (1 thread)": lambda: nf.vmap_apply(pop, x),
            },
            threads={"Python loop of modules (1 thread)": 1, "raw torch.func (1 thread)": 1, "nytorch_fn vmap_apply(pop, x) (1 thread)": 1},
            sync=_sync(device),
        )
    assert torch.allclose(nf.vmap_apply(pop, x), torch.stack([m(x) for m in modules]), atol=1e-5)
    raw_name = f"raw torch.func (stack_module_state+vmap, {ALL} thr)"
    table(f"forward pass of N={n} MLPs {list(sizes)}, batch {batch}", list(t.items()), raw_name)
    ours = t[f"nytorch_fn vmap_apply(pop, x) ({ALL} threads)"]
    best_loop = min(t[f"Python loop of modules ({ALL} threads)"], t["Python loop of modules (1 thread)"])
    return {
        "vmap_apply best loop/ours": best_loop / ours,
        "vmap_apply ours/raw": ours / t[raw_name],
        "vmap_apply 1 thread: loop/ours": t["Python loop of modules (1 thread)"] / t["nytorch_fn vmap_apply(pop, x) (1 thread)"],
        "vmap_apply 1 thread: ours/raw": t["nytorch_fn vmap_apply(pop, x) (1 thread)"] / t["raw torch.func (1 thread)"],
    }


def sgd_step(n: int = 256, sizes=(32, 32, 32, 10), batch: int = 128, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    modules = [mlp(sizes).to(device) for _ in range(n)]
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in modules]
    x = torch.randn(batch, sizes[0], device=device)
    y = torch.randint(0, sizes[-1], (batch,), device=device)
    pop = nf.stack_modules(modules)
    opt = optim.sgd(0.05)
    state = opt.init(pop)

    def loop():
        for m, o in zip(modules, optimisers):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()

    def loss(p, xx, yy):
        return nn.functional.cross_entropy(nf.apply(p, xx), yy)

    per_member_grad = vmap(grad(loss), in_dims=(0, None, None))
    holder = {"pop": pop, "state": state}

    def ours():
        g = per_member_grad(holder["pop"], x, y)
        updates, holder["state"] = opt.update(g, holder["state"])
        holder["pop"] = optim.apply_updates(holder["pop"], updates, donate=True)

    def ours_fresh():
        g = per_member_grad(holder["pop"], x, y)
        updates, holder["state"] = opt.update(g, holder["state"])
        holder["pop"] = optim.apply_updates(holder["pop"], updates)

    t = compare(
        {
            f"loop of N modules + torch.optim.SGD ({ALL} thr)": loop,
            "loop of N modules + torch.optim.SGD (1 thread)": loop,
            "nytorch_fn vmap(grad) + sgd (fresh)": ours_fresh,
            "nytorch_fn vmap(grad) + sgd (donated)": ours,
            "nytorch_fn vmap(grad) + sgd (donated, 1 thr)": ours,
        },
        repeat=5,
        threads={"loop of N modules + torch.optim.SGD (1 thread)": 1, "nytorch_fn vmap(grad) + sgd (donated, 1 thr)": 1},
        sync=_sync(device),
    )
    base = "loop of N modules + torch.optim.SGD (1 thread)"
    table(f"one SGD step over N={n} MLPs {list(sizes)}, batch {batch}", list(t.items()), base)
    best_loop = min(t[base], t[f"loop of N modules + torch.optim.SGD ({ALL} thr)"])
    return {
        "sgd best loop/ours": best_loop / t["nytorch_fn vmap(grad) + sgd (donated)"],
        "sgd 1 thread: loop/ours": t[base] / t["nytorch_fn vmap(grad) + sgd (donated, 1 thr)"],
    }


def large(n: int = 64, sizes=(784, 256, 256, 10), device: str = "cpu") -> dict:
    torch.manual_seed(0)
    pop = nf.init_population(mlp(sizes), n).to(device)
    best = pop[0].clone()
    mb = sum(t.numel() * t.element_size() for t in pop.tensors) / 1e6
    stacked, target = [t.clone() for t in pop.tensors], list(best.tensors)
    holder = {"pop": pop}

    def donated():
        holder["pop"] = nf.lerp(holder["pop"], best, 0.5, donate=True)
        return holder["pop"]

    t = compare(
        {
            "raw fresh (torch.lerp per tensor)": lambda: [torch.lerp(s, b, 0.5) for s, b in zip(stacked, target)],
            "raw in place (torch._foreach_lerp_)": lambda: torch._foreach_lerp_(stacked, target, 0.5),
            "nf.lerp(pop, best, 0.5) (fresh)": lambda: nf.lerp(pop, best, 0.5),
            "nf.lerp(pop, best, 0.5, donate=True)": donated,
        },
        repeat=5,
        budget=0.3,
        sync=_sync(device),
    )
    table(f"large stacked tensors: blend of N={n} x {list(sizes)} ({mb:.0f} MB)", list(t.items()), "raw in place (torch._foreach_lerp_)")
    return {
        "large fresh/donated": t["nf.lerp(pop, best, 0.5) (fresh)"] / t["nf.lerp(pop, best, 0.5, donate=True)"],
        "large donated/raw in place": t["nf.lerp(pop, best, 0.5, donate=True)"] / t["raw in place (torch._foreach_lerp_)"],
    }


_RSS_SCRIPT = """
import sys, torch, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {here!r})
from _harness import peak_rss_mb
import nytorch_fn as nf
from torch import nn
n = {n}
m = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
before = peak_rss_mb()
p = nf.particle(m)
pop = nf.random_population(p, n) if n else p
after = peak_rss_mb()
tensor_mb = sum(t.numel() * t.element_size() for t in pop.tensors) / 1e6
print(after - before, tensor_mb)
"""


def memory(sizes=(1, 64, 256)) -> dict:
    print("\npeak RSS of a population (fresh process each), MLP 784-256-256-10")
    out = {}
    for n in sizes:
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT.format(here=str(HERE), n=n)], capture_output=True, text=True, check=True
        )
        grown, tensor_mb = map(float, proc.stdout.split())
        print(f"  N={n:<4} tensors {tensor_mb:8.1f} MB   peak RSS grew {grown:8.1f} MB   ({grown / tensor_mb:4.2f}x the tensors)")
        out[f"rss N={n} / tensor bytes"] = grown / tensor_mb
    return out


def main() -> dict:
    results = {}
    results.update(blend_toward_best())
    results.update(forward())
    results.update(sgd_step())
    results.update(large())
    results.update(memory())
    return results
