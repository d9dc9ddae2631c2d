"""Evolutionary model merging on digits: ``python -m nytorch_fn.merge.evolve_demo``.

One small network is pre-trained briefly on scikit-learn's 8x8 digits (no
download), then fine-tuned into three experts, each on a few digit classes
(``0-2``, ``3-6``, ``7-9``; the experts are trained together, as one
population, with ``vmap(grad)``). Each expert knows its classes and little
else. The goal is one model for all ten classes, from the experts alone:

1. hand-picked recipes: a grid of the usual merges (a uniform soup, task
   arithmetic with ``lambda`` 0.1 .. 1, TIES and DARE-TIES over densities
   and ``lambda``), the best chosen on the validation split;
2. the evolved recipe (Akiba et al. 2024): ``merge.evolve`` searches, with
   CMA-ES, one DARE-TIES ``weight`` and ``density`` per layer and expert for
   the best validation accuracy, each generation's whole population of
   candidate merges evaluated in one ``nf.vmap_apply`` call.

Both are then scored on the held-out test split. Needs the ``demo`` extra
(scikit-learn); runs in a few seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

import nytorch_fn as nf
from nytorch_fn import merge, optim

TASKS = ((0, 1, 2), (3, 4, 5, 6), (7, 8, 9))


def load_digits(seed: int = 0) -> dict[str, torch.Tensor]:
    """scikit-learn's digits as float32 ``[n, 64]`` in [0, 1]: 1000 train, 400 validation, 397 test.

    Args:
        seed: the split's permutation.

    Returns:
        ``x_train``, ``y_train``, ``x_val``, ``y_val``, ``x_test``, ``y_test``.

    Raises:
        ImportError: scikit-learn is missing (the ``demo`` extra).
    """
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ImportError("the evolve demo needs scikit-learn: pip install 'nytorch-fn[demo]'") from None
    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = {"train": perm[:1000], "val": perm[1000:1400], "test": perm[1400:]}
    return {f"{a}_{s}": t[idx] for s, idx in split.items() for a, t in (("x", x), ("y", y))}


def _loss(p: nf.Particle, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(nf.apply(p, x) + mask, y)


def _train(p: nf.Particle, batches: Any, steps: int, lr: float) -> nf.Particle:
    """Adam on a particle (or, vectorised, a population), one batch per step."""
    opt = optim.adam(lr)
    state = opt.init(p)
    grad = torch.func.grad(_loss)
    if p.population_size is not None:
        grad = torch.func.vmap(grad)
    for step in range(steps):
        g = grad(p, *batches(step))
        updates, state = opt.update(g, state, p, donate=True)
        p = optim.apply_updates(p, updates, donate=step > 0)
    return p


def digits_experts(data: dict[str, torch.Tensor], *, seed: int = 0, hidden: Sequence[int] = (32,),
                   tasks: Sequence[Sequence[int]] = TASKS, base_steps: int = 15, expert_steps: int = 100,
                   lr: float = 1e-2) -> tuple[nf.Particle, list[nf.Particle]]:
    """A briefly pre-trained base and one fine-tuned expert per entry of ``TASKS``.

    Each expert is trained from the base on its classes only (the other
    classes' logits masked out), so it stays a ten-way classifier that knows
    its own classes.

    Args:
        data: from ``load_digits``.
        seed: the network's initialisation and the batches.
        hidden: hidden layer widths of the ``64 -> hidden... -> 10`` ReLU network.
        tasks: the classes of each expert.
        base_steps: Adam steps of pre-training on every class (kept short: a weak base).
        expert_steps: Adam steps of each expert's fine-tuning.
        lr: the learning rate of both.

    Returns:
        ``(base, experts)``: single particles of one species.
    """
    torch.manual_seed(seed)
    sizes = [64, *hidden, 10]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    x, y = data["x_train"], data["y_train"]
    g = torch.Generator().manual_seed(seed + 1)
    none = torch.zeros(10)

    def every_class(step: int) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(len(y), (64,), generator=g)
        return x[idx], y[idx], none

    base = _train(nf.particle(net), every_class, base_steps, lr)
    rows = [torch.nonzero(torch.isin(y, torch.tensor(t))).squeeze(1) for t in tasks]
    masks = torch.stack([torch.full((10,), float("-inf")).index_fill(0, torch.tensor(t), 0.0) for t in tasks])

    def per_task(step: int) -> tuple[torch.Tensor, ...]:
        idx = torch.stack([r[torch.randint(len(r), (64,), generator=g)] for r in rows])  # [K, 64]
        return x[idx], y[idx], masks

    experts = _train(nf.stack([base] * len(tasks)), per_task, expert_steps, lr)
    return base, nf.unstack(experts.map(lambda t, config: t.clone()))


def accuracy(population: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N]`` accuracy of every member of a population (a single particle: a 0-d tensor)."""
    with torch.no_grad():
        if population.population_size is None:
            return (nf.apply(population, x).argmax(-1) == y).float().mean()
        return (nf.vmap_apply(population, x).argmax(-1) == y).float().mean(-1)


def hand_picked(base: nf.Particle, experts: Sequence[nf.Particle], seed: int = 0) -> dict[str, nf.Particle]:
    """The usual recipes a merger tries by hand, by name."""
    out = {"linear (uniform soup)": merge.linear(list(experts))}
    for lam in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        out[f"task_arithmetic lambda={lam}"] = merge.task_arithmetic(base, list(experts), lambda_=lam)
    for density, lam in itertools.product((0.2, 0.4, 0.6, 0.8), (0.5, 1.0, 1.5)):
        out[f"ties density={density} lambda={lam}"] = merge.ties(base, list(experts), density=density, lambda_=lam)
        out[f"dare_ties density={density} lambda={lam}"] = merge.dare_ties(
            base, list(experts), density=density, lambda_=lam, generator=torch.Generator().manual_seed(seed))
    return out


def run(*, seed: int = 0, generations: int = 60, method: str = "dare_ties", groups: str = "layers") -> dict[str, Any]:
    """The whole comparison; returns the numbers ``main`` prints.

    Args:
        seed: data split, networks, batches, and the search.
        generations: CMA-ES generations.
        method: the merge method whose per-layer coefficients are evolved.
        groups: ``"layers"`` or ``"tensors"`` (``merge.evolve``'s groups).

    Returns:
        A dict: ``data``, ``base``, ``experts``, ``hand`` (name -> particle),
        ``best_hand`` (its name), ``result`` (the ``EvolvedMerge``),
        ``start`` (the starting recipe's merge), ``rows`` (the table: name,
        validation and test accuracy) and ``seconds``.
    """
    t0 = time.perf_counter()
    data = load_digits(seed)
    xv, yv, xt, yt = data["x_val"], data["y_val"], data["x_test"], data["y_test"]
    base, experts = digits_experts(data, seed=seed)
    hand = hand_picked(base, experts, seed)
    best_hand = max(hand, key=lambda k: float(accuracy(hand[k], xv, yv)))
    result = merge.evolve(method, experts, lambda pop: accuracy(pop, xv, yv), base=base, groups=groups,
                          generations=generations, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(result.seed) if result.seed is not None else None
    start = merge.merge_grouped(method, experts, result.start_recipe, groups=result.groups, base=base,
                                generator=gen)
    rows = [("base (pre-trained)", base)] + [(f"expert {''.join(map(str, t))}", e) for t, e in zip(TASKS, experts)]
    rows += [(f"starting recipe ({method}, weight 0.5, density 0.5)", start),
             (f"best hand-picked: {best_hand}", hand[best_hand]),
             (f"evolved ({method}, per {groups[:-1]}, {generations} CMA-ES generations)", result.merged)]
    table = [(name, float(accuracy(p, xv, yv)), float(accuracy(p, xt, yt))) for name, p in rows]
    return {"data": data, "base": base, "experts": experts, "hand": hand, "best_hand": best_hand, "result": result,
            "start": start, "rows": table, "seconds": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison and print its table.

    Args:
        argv: command-line arguments (``--seed``, ``--generations``, ``--method``, ``--groups``).

    Returns:
        ``run``'s dict.
    """
    ap = argparse.ArgumentParser(prog="python -m nytorch_fn.merge.evolve_demo", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=60)
    ap.add_argument("--method", default="dare_ties", choices=sorted(merge.METHODS))
    ap.add_argument("--groups", default="layers", choices=["layers", "tensors"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = run(seed=args.seed, generations=args.generations, method=args.method, groups=args.groups)
    width = max(len(r[0]) for r in out["rows"])
    print(f"{'model':{width}s}  val acc  test acc")
    for name, val, test in out["rows"]:
        print(f"{name:{width}s}  {val:7.3f}  {test:8.3f}")
    r = out["result"]
    print(f"\nevolved recipe ({', '.join(r.recipe)} per group x expert; groups {[g[0].split('.')[0] for g in r.groups]}):")
    for name, v in r.recipe.items():
        print(f"  {name}: {[[round(x, 2) for x in row] for row in v.tolist()]}")
    print(f"validation accuracy (the fitness): start {r.start_fitness:.3f} -> evolved {r.fitness:.3f}; "
          f"{out['seconds']:.1f} s in all")
    return out


if __name__ == "__main__":
    main()
