"""The flagship demo: a population of small networks trained on scikit-learn's digits
with the hybrid gradient + swarm algorithm, fully vectorised.

    python -m nytorch_fn.demo [--population 64] [--steps 600] [--seed 0] [--out demo-out]

Every step trains every member by one Adam step on its own minibatch (one
``torch.func.vmap`` of ``grad``); every ``--every`` steps (one generation of
``nytorch_fn.algorithms.Hybrid``) a random subset is blended toward the
member with the best validation accuracy (the legacy
docs' ``alpha W_best + (1 - alpha) W_i``). At the end it prints a per-member
accuracy table and writes ``accuracy.png`` (accuracy against step for every
member and the best) and ``summary.json`` to ``--out``.

Needs the ``demo`` extra (scikit-learn ships the digits, matplotlib draws,
tqdm shows progress): ``pip install "nytorch-fn[demo]"``.
``--compare-legacy`` also runs the same algorithm written with the ``nytorch``
compat API as a Python loop of modules and prints both times side by side.

It runs unchanged under ``torchrun --nproc-per-node=2 -m nytorch_fn.demo``:
each rank trains a block of members (``nytorch_fn.distributed``) and rank 0
reports; the result equals the single-process run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

import nytorch_fn as nf
from nytorch_fn import optim
from nytorch_fn.algorithms import Hybrid


def _need(module: str) -> Any:
    """Import a demo dependency, or exit saying how to install it.

    Args:
        module: the module to import (``"sklearn.datasets"``).

    Returns:
        The imported module.

    Raises:
        SystemExit: it is not installed (the message gives the pip command).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SystemExit(
            f"the demo needs {module.split('.')[0]} ({error}); install the demo extra: pip install 'nytorch-fn[demo]'"
        ) from error


def load_digits(seed: int) -> dict[str, torch.Tensor]:
    """scikit-learn's 8x8 digits (shipped inside the package), split train/val/test 60/20/20.

    Args:
        seed: seeds the shuffle before the split.

    Returns:
        A dict with ``x_train``, ``y_train``, ``x_val``, ``y_val``, ``x_test``
        and ``y_test`` (inputs ``[n, 64]`` float32 in [0, 1], labels ``[n]`` int64).
    """
    sk_load_digits = _need("sklearn.datasets").load_digits

    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    a, b = int(0.6 * len(y)), int(0.8 * len(y))
    return {"x_train": x[:a], "y_train": y[:a], "x_val": x[a:b], "y_val": y[a:b], "x_test": x[b:], "y_test": y[b:]}


def make_net(hidden: int = 128) -> nn.Module:
    """One member's network: an MLP 64-hidden-10 (ReLU).

    Args:
        hidden: the hidden width.

    Returns:
        ``nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))``.

    Examples:
        >>> from nytorch_fn.demo import make_net
        >>> nf.particle(make_net(32)).species.names
        ('0.weight', '0.bias', '2.weight', '2.bias')
    """
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def member_loss(member: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One member's cross-entropy loss on a batch (what ``Hybrid`` differentiates).

    Args:
        member: a single particle of ``make_net``'s species.
        x: inputs ``[B, 64]``.
        y: labels ``[B]``.

    Returns:
        The mean loss, a 0-d tensor.
    """
    return F.cross_entropy(nf.apply(member, x), y)


def accuracy(population: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[N]`` accuracies of every member on (x, y), one vmap call.

    Args:
        population: ``N`` members of ``make_net``'s species.
        x: inputs ``[B, 64]``, shared by all members.
        y: labels ``[B]``.

    Returns:
        ``[N]`` float32 accuracies in [0, 1].

    Examples:
        >>> from nytorch_fn.demo import accuracy, make_net
        >>> pop = nf.init_population(make_net(8), 4, generator=torch.Generator().manual_seed(0))
        >>> accuracy(pop, torch.rand(20, 64), torch.randint(0, 10, (20,))).shape
        torch.Size([4])
    """
    with torch.no_grad():
        logits = nf.vmap_apply(population, x)
    return (logits.argmax(-1) == y).float().mean(-1)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``python -m nytorch_fn.demo --help`` lists it).

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        The parsed options.

    Raises:
        SystemExit: an unknown or out-of-range option (argparse's message).
    """
    ap = argparse.ArgumentParser(prog="python -m nytorch_fn.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", type=int, default=64, help="members (default 64)")
    ap.add_argument("--steps", type=int, default=600, help="gradient steps (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for accuracy.png and summary.json")
    ap.add_argument("--batch-size", type=int, default=64, help="minibatch per member (default 64)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=128, help="hidden units of each member's MLP 64-hidden-10")
    ap.add_argument("--every", type=int, default=20, help="blend toward the best every k steps")
    ap.add_argument("--subset", type=float, default=0.25, help="fraction of members blended each time")
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the best in the blend")
    ap.add_argument("--eval-every", type=int, default=10,
                    help="unused: validation accuracy is recorded once per generation of --every steps")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: these small batched ops run faster on one thread, "
        "and a busy machine makes extra threads much slower)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--compare-legacy", action="store_true", help="also time the nytorch (compat) loop of modules")
    args = ap.parse_args(argv)
    if args.population < 2:
        ap.error(f"--population expects at least 2 members, got {args.population}")
    if args.steps < 1:
        ap.error(f"--steps expects at least 1, got {args.steps}")
    if args.threads < 1:
        ap.error(f"--threads expects at least 1, got {args.threads}")
    if not 0 < args.subset <= 1:
        ap.error(f"--subset expects a fraction in (0, 1], got {args.subset}")
    return args


class _Run:
    """One process, or this rank's block of members under ``torchrun`` (same seed everywhere)."""

    def __init__(self, hybrid: Hybrid, population: nf.Particle, generator: torch.Generator) -> None:
        import nytorch_fn.distributed as nfd

        self.n = len(population)
        self.nfd = nfd if nfd.launched() else None
        if self.nfd is None:
            self.rank, self.algo = 0, hybrid
        else:
            self.nfd.init()
            self.rank = self.nfd.world().rank
            self.algo = self.nfd.sharded(hybrid)  # the same algorithm; only its collective changes
        self.state = self.algo.init(population, generator=generator)

    def everyone(self, local_values: torch.Tensor) -> torch.Tensor:
        """``[N]`` from each process's ``[n_local]`` (one all_gather under torchrun)."""
        if self.nfd is None:
            return local_values
        return self.nfd.DistributedCollective(self.n, self.nfd.world()).gather(local_values)

    def population(self) -> nf.Particle | None:
        """The whole trained population (on rank 0; None elsewhere)."""
        local = self.state.population
        return local if self.nfd is None else self.nfd.gather(self.nfd.from_local(local), dst=0)

    def close(self) -> None:
        if self.nfd is not None:
            # every rank must be done with the gather before any tears its group down
            # (gloo aborts a process whose peer destroys the group mid-transfer)
            self.nfd.check_alive(timeout=120)
            self.nfd.shutdown()


def train(args: argparse.Namespace, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The vectorised hybrid run; returns the trained population and the history.

    One generation of the protocol is ``--every`` gradient steps (``ask``),
    the validation accuracy of every member (the fitness), then the blend
    (``tell``). Under ``torchrun`` each rank trains its block of members;
    minibatch indices are drawn for the whole population from the same seed
    on every rank, so the run equals the single-process one.

    Args:
        args: the options from ``parse``.
        data: the splits from ``load_digits``.

    Returns:
        ``population`` (the trained population; None on ranks other than 0),
        ``steps`` and ``history`` (``[generations, N]`` validation accuracy),
        ``val`` and ``test`` (``[N]`` final accuracies), ``seconds`` (training
        time) and ``rank``.
    """
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    population = nf.init_population(make_net(args.hidden), args.population, generator=g)
    x, y = data["x_train"], data["y_train"]
    n_train = len(y)

    def batches(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, n_train, (args.population, args.batch_size), generator=gen)
        return x[idx], y[idx]  # one minibatch per member (cut to each rank's rows when sharded)

    hybrid = Hybrid(
        loss=member_loss,
        optimizer=optim.adam(args.lr),
        batches=batches,
        in_dims=(0, 0),
        every=args.every,
        subset=max(1, int(args.subset * args.population)),
        alpha=args.alpha,
    )
    run = _Run(hybrid, population, g)
    steps, history = [], []
    progress = _progress(args, disable=run.rank != 0)
    start = time.perf_counter()
    done = 0
    while done < args.steps:
        k = min(args.every, args.steps - done)
        algo = run.algo if k == args.every else _with_every(run, hybrid, k)
        pop, run.state = algo.ask(run.state, generator=g, donate=True)
        local_val = accuracy(pop, data["x_val"], data["y_val"])
        val_acc = run.everyone(local_val)
        run.state = algo.tell(run.state, pop, local_val, generator=g, donate=True)
        done += k
        steps.append(done)
        history.append(val_acc.clone())
        progress.set_postfix(best=f"{float(val_acc.max()):.3f}", mean=f"{float(val_acc.mean()):.3f}")
        progress.update(k)
    progress.close()
    seconds = time.perf_counter() - start
    val_acc = run.everyone(accuracy(run.state.population, data["x_val"], data["y_val"]))
    test_acc = run.everyone(accuracy(run.state.population, data["x_test"], data["y_test"]))
    trained = run.population()
    rank = run.rank
    run.close()
    return {"population": trained, "steps": steps, "history": torch.stack(history), "val": val_acc,
            "test": test_acc, "seconds": seconds, "rank": rank}


def _with_every(run: _Run, hybrid: Hybrid, k: int) -> Any:
    """The same algorithm for a last, shorter generation of ``k`` steps."""
    import attrs

    short = attrs.evolve(hybrid, every=k)
    return short if run.nfd is None else run.nfd.sharded(short)


def _progress(args: argparse.Namespace, *, disable: bool = False) -> Any:
    tqdm = _need("tqdm.auto").tqdm
    return tqdm(
        total=args.steps, desc="hybrid training", unit="step", disable=args.no_progress or disable, file=sys.stderr
    )


def table(val: torch.Tensor, test: torch.Tensor) -> str:
    """The per-member accuracy table the demo prints, the best member (by validation) marked.

    Args:
        val: ``[N]`` validation accuracies.
        test: ``[N]`` test accuracies.

    Returns:
        The table as text, one line per member and a mean line.

    Examples:
        >>> from nytorch_fn.demo import table
        >>> print(table(torch.tensor([0.5, 0.75]), torch.tensor([0.25, 1.0])))
        member   val acc   test acc
        ------   -------   --------
             0     0.500      0.250
             1     0.750      1.000  <- best (by validation)
        mean       0.625      0.625
    """
    best = int(torch.argmax(val))
    lines = ["member   val acc   test acc", "------   -------   --------"]
    for i in range(len(val)):
        mark = "  <- best (by validation)" if i == best else ""
        lines.append(f"{i:6d}   {float(val[i]):7.3f}   {float(test[i]):8.3f}{mark}")
    lines.append(f"mean     {float(val.mean()):7.3f}   {float(test.mean()):8.3f}")
    return "\n".join(lines)


def plot(path: Path, steps: list[int], history: torch.Tensor) -> None:
    """Draw validation accuracy against step for every member, the best and the mean (matplotlib).

    Args:
        path: the PNG file to write.
        steps: the step after each generation.
        history: ``[len(steps), N]`` validation accuracies.
    """
    _need("matplotlib").use("Agg")
    plt = _need("matplotlib.pyplot")

    fig, ax = plt.subplots(figsize=(8, 5))
    for member in history.T:
        ax.plot(steps, member.numpy(), color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(steps, history.max(1).values.numpy(), color="tab:red", linewidth=2.2, label="best member")
    ax.plot(steps, history.mean(1).numpy(), color="black", linewidth=1.5, linestyle="--", label="population mean")
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"hybrid gradient + swarm training of {history.shape[1]} networks on digits")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo: train, print the table, write ``accuracy.png`` and ``summary.json``.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``), e.g.
            ``["--population", "16", "--steps", "40", "--out", "demo-out"]``.

    Returns:
        The summary written to ``summary.json`` (population, steps, seed,
        training time, the best member and its accuracies; ``{}`` on ranks
        other than 0 under ``torchrun``).
    """
    args = parse(argv)
    torch.set_num_threads(args.threads)
    data = load_digits(args.seed)
    result = train(args, data)
    if result["rank"] != 0:  # under torchrun only rank 0 reports
        return {}
    val, test = result["val"], result["test"]
    best = int(torch.argmax(val))
    print(table(val, test))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "accuracy.png", result["steps"], result["history"])
    summary = {
        "population": args.population,
        "steps": args.steps,
        "seed": args.seed,
        "train_seconds": round(result["seconds"], 3),
        "best_member": best,
        "best_val_accuracy": float(val[best]),
        "best_test_accuracy": float(test[best]),
        "mean_test_accuracy": float(test.mean()),
    }
    if args.compare_legacy:
        from nytorch_fn._demo_legacy import compare_legacy

        summary.update(compare_legacy(args, data, result["seconds"]))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\nbest member {best}: held-out test accuracy {summary['best_test_accuracy']:.3f} "
        f"(validation {summary['best_val_accuracy']:.3f}); trained {args.population} networks x "
        f"{args.steps} steps in {result['seconds']:.1f} s; wrote {args.out / 'accuracy.png'}"
    )
    return summary


def cli() -> None:
    """Console-script entry point (``nytorch-fn-demo``)."""
    main()


if __name__ == "__main__":
    main()
