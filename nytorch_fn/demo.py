"""The flagship demo: population-based training against the same networks trained independently.

    python -m nytorch_fn.demo [--population 64] [--steps 600] [--seed 0] [--out demo-out]

The task: scikit-learn's 8x8 digits with a small training set whose labels
are partly wrong (``--label-noise``, default 40% of the 600 training labels
redrawn uniformly at random; validation and test labels are left clean).
Every member is an MLP trained with Adam, with its own learning rate and
weight decay drawn log-uniformly. Two methods run side by side, from the
same initial weights and hyperparameters, on the same minibatches, for the
same number of steps (the same compute, both one ``torch.func.vmap`` over
the members):

- **PBT** (``nytorch_fn.algorithms.PBT``): every ``--every`` steps the worst
  quarter of the members (by validation cross-entropy) copy the weights and
  Adam state of one of the best quarter and perturb its learning rate and
  weight decay (x0.8 or x1.25);
- **independent**: the same members, never exploited (random search over
  the same draws).

Each method's result is its member with the lowest validation
cross-entropy at the end, scored on the held-out test split (accuracy and
cross-entropy). It prints both side by side (with the early-stopped
figures: the best checkpoint by validation over all generations), and
writes ``accuracy.png`` (validation cross-entropy, test accuracy and the
chosen member's learning rate against step, both methods) and
``summary.json`` to ``--out``. With noisy labels what to do late in training
differs from what to do early (fit fast, then stop memorising the wrong
labels); PBT finds that schedule, a fixed draw cannot.

Needs the ``demo`` extra (scikit-learn ships the digits, matplotlib draws,
tqdm shows progress): ``pip install "nytorch-fn[demo]"``.
``--compare-legacy`` also times the PBT step written with the ``nytorch``
compat API as a Python loop of modules (one ``torch.optim.Adam`` each) and
prints both times side by side.

It runs unchanged under ``torchrun --nproc-per-node=2 -m nytorch_fn.demo``:
each rank trains a block of members (``nytorch_fn.distributed``) and rank 0
reports; the result equals the single-process run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import nytorch_fn as nf
from nytorch_fn import optim
from nytorch_fn.algorithms import PBT, LocalCollective

#: the two methods, in the order they are printed and plotted
METHODS = ("pbt", "independent")
_LABELS = {"pbt": "PBT", "independent": "independent"}
_COLORS = {"pbt": "tab:red", "independent": "tab:blue"}


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


def load_digits(
    seed: int, *, train_size: int = 600, val_size: int = 500, label_noise: float = 0.4
) -> dict[str, torch.Tensor]:
    """scikit-learn's 8x8 digits (shipped inside the package): train / validation / test, noisy training labels.

    Args:
        seed: seeds the shuffle before the split and the label noise.
        train_size: training examples (the first after the shuffle).
        val_size: validation examples (the next); the test split is the rest.
        label_noise: the fraction of training labels redrawn uniformly from
            the 10 classes (a redrawn label may equal the true one), in [0, 1).
            Validation and test labels are never changed.

    Returns:
        A dict with ``x_train``, ``y_train`` (noisy), ``x_val``, ``y_val``,
        ``x_test`` and ``y_test`` (inputs ``[n, 64]`` float32 in [0, 1],
        labels ``[n]`` int64), and ``flipped`` (``[train_size]`` bool: the
        redrawn training labels).

    Raises:
        ValueError: splits that do not fit in the 1,797 digits (at least one
            test example), or ``label_noise`` outside [0, 1).

    Examples:
        >>> from nytorch_fn.demo import load_digits
        >>> data = load_digits(0, train_size=100, val_size=100, label_noise=0.5)
        >>> data["x_train"].shape, data["x_test"].shape, int(data["flipped"].sum())   # 45 of 100 labels redrawn
        (torch.Size([100, 64]), torch.Size([1597, 64]), 45)
    """
    sk_load_digits = _need("sklearn.datasets").load_digits

    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    if train_size < 1 or val_size < 1 or train_size + val_size >= len(y):
        raise ValueError(
            f"load_digits: expected train_size >= 1, val_size >= 1 and train_size + val_size < {len(y)} "
            f"(the digits), got {train_size} and {val_size}"
        )
    if not 0 <= label_noise < 1:
        raise ValueError(f"load_digits: label_noise expects a fraction in [0, 1), got {label_noise}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    a, b = train_size, train_size + val_size
    flipped = torch.rand(a, generator=g) < label_noise
    y_train = torch.where(flipped, torch.randint(0, 10, (a,), generator=g), y[:a])
    return {"x_train": x[:a], "y_train": y_train, "x_val": x[a:b], "y_val": y[a:b], "x_test": x[b:], "y_test": y[b:],
            "flipped": flipped}


def make_net(hidden: int = 64) -> nn.Module:
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


def member_loss(member: nf.Particle, x: torch.Tensor, y: torch.Tensor, weight_decay: torch.Tensor) -> torch.Tensor:
    """One member's training loss: cross-entropy plus ``weight_decay / 2`` times its squared parameters.

    The penalty's gradient is ``weight_decay * w``: ``torch.optim.Adam``'s
    ``weight_decay`` (what the legacy loop of ``--compare-legacy`` uses).

    Args:
        member: a single particle of ``make_net``'s species.
        x: inputs ``[B, 64]``.
        y: labels ``[B]``.
        weight_decay: this member's weight decay, a 0-d tensor.

    Returns:
        The loss, a 0-d tensor.
    """
    penalty = sum(t.square().sum() for t in member.tensors)
    return F.cross_entropy(nf.apply(member, x), y) + weight_decay * penalty / 2


def evaluate(population: nf.Particle, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N]`` cross-entropies and ``[N]`` accuracies of every member on (x, y), one vmap call.

    Args:
        population: ``N`` members of ``make_net``'s species.
        x: inputs ``[B, 64]``, shared by all members.
        y: labels ``[B]``.

    Returns:
        ``(cross_entropy, accuracy)``, each ``[N]`` float32.

    Examples:
        >>> from nytorch_fn.demo import evaluate, make_net
        >>> pop = nf.init_population(make_net(8), 4, generator=torch.Generator().manual_seed(0))
        >>> ce, acc = evaluate(pop, torch.rand(20, 64), torch.randint(0, 10, (20,)))
        >>> ce.shape, acc.shape
        (torch.Size([4]), torch.Size([4]))
    """
    with torch.no_grad():
        logits = nf.vmap_apply(population, x)
        ce = F.cross_entropy(logits.transpose(1, 2), y.expand(len(logits), -1), reduction="none").mean(-1)
    return ce, (logits.argmax(-1) == y).float().mean(-1)


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
    return evaluate(population, x, y)[1]


def _positive_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects LOW,HIGH (two numbers), got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expects 0 < LOW <= HIGH, got {text!r}")
    return low, high


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
    ap.add_argument("--population", type=int, default=64, help="members of each method (default 64)")
    ap.add_argument("--steps", type=int, default=600, help="Adam steps per member, each method (default 600)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for accuracy.png and summary.json")
    ap.add_argument("--every", type=int, default=10, help="steps per PBT generation (exploit and explore; default 10)")
    ap.add_argument("--fraction", type=float, default=0.25,
                    help="PBT: fraction of members replaced each generation, in (0, 0.5] (default 0.25)")
    ap.add_argument("--lr-range", type=_positive_range, default=(1e-4, 0.3), metavar="LOW,HIGH",
                    help="learning rates drawn log-uniformly in it (default 1e-4,0.3)")
    ap.add_argument("--wd-range", type=_positive_range, default=(1e-5, 0.1), metavar="LOW,HIGH",
                    help="weight decays drawn log-uniformly in it (default 1e-5,0.1)")
    ap.add_argument("--label-noise", type=float, default=0.4,
                    help="fraction of training labels redrawn at random, in [0, 1) (default 0.4)")
    ap.add_argument("--train-size", type=int, default=600, help="training examples (default 600)")
    ap.add_argument("--val-size", type=int, default=500, help="validation examples (default 500; test: the rest)")
    ap.add_argument("--batch-size", type=int, default=16, help="minibatch per member (default 16)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden units of each member's MLP 64-hidden-10")
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: these small batched ops run faster on one thread, "
        "and a busy machine makes extra threads much slower)",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--compare-legacy", action="store_true",
                    help="also time the PBT step as a nytorch (compat) loop of modules")
    args = ap.parse_args(argv)
    if args.population < 2:
        ap.error(f"--population expects at least 2 members, got {args.population}")
    for name in ("steps", "every", "batch_size", "hidden", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} expects at least 1, got {getattr(args, name)}")
    if not 0 < args.fraction <= 0.5:
        ap.error(f"--fraction expects a fraction in (0, 0.5], got {args.fraction}")
    if not 0 <= args.label_noise < 1:
        ap.error(f"--label-noise expects a fraction in [0, 1), got {args.label_noise}")
    if args.train_size < 1 or args.val_size < 1 or args.train_size + args.val_size >= 1797:
        ap.error(f"--train-size and --val-size: the split expects at least 1 example each and a sum below 1797 "
                 f"(the digits), got {args.train_size} and {args.val_size}")
    return args


class Trainer:
    """PBT's ``train``: ``every`` Adam steps for every member, with its own learning rate and weight decay.

    Holds the Adam state of its members across generations (``follow`` moves
    it with the weights after an exploit) and draws minibatch indices for the
    whole population from its own generator, keeping its rows, so that both
    methods see the same minibatches and a sharded run equals the
    single-process one.

    Args:
        data: the splits from ``load_digits``.
        n: members in the whole population.
        rows: this process's members (``range(n)`` on one process).
        batch_size: examples per member per step.
        every: steps per call.
        steps: steps in all (the last call is shorter when ``every`` does not divide it).
        seed: seeds the minibatch generator.
    """

    def __init__(self, data: dict[str, torch.Tensor], *, n: int, rows: range, batch_size: int, every: int,
                 steps: int, seed: int) -> None:
        self.x, self.y = data["x_train"], data["y_train"]
        self.n, self.rows, self.batch_size, self.every, self.steps = n, rows, batch_size, every, steps
        self.batches = torch.Generator().manual_seed(seed)
        self.grad = torch.func.vmap(torch.func.grad(member_loss))
        self.opt_state: Any = None
        self.done = 0

    def __call__(self, population: nf.Particle, hyperparams: dict, generator: Any = None) -> nf.Particle:
        """Train ``population`` (this process's members) for the next generation.

        Args:
            population: the members, ``[n_local, ...]`` per tensor.
            hyperparams: ``"lr"`` and ``"weight_decay"``, ``[n_local]`` each.
            generator: unused (PBT's generator; minibatches come from the trainer's own).

        Returns:
            The trained members.
        """
        lr = hyperparams["lr"].to(torch.float32)
        wd = hyperparams["weight_decay"].to(torch.float32)
        adam = optim.adam(lr)
        state = adam.init(population) if self.opt_state is None else self.opt_state
        rows = slice(self.rows.start, self.rows.stop)
        for k in range(min(self.every, self.steps - self.done)):
            idx = torch.randint(0, len(self.y), (self.n, self.batch_size), generator=self.batches)[rows]
            grads = self.grad(population, self.x[idx], self.y[idx], wd)
            # the Adam state is the trainer's own; the population is after its first step here
            updates, state = adam.update(grads, state, population, donate=True)
            population = optim.apply_updates(population, updates, donate=k > 0)
            self.done += 1
        self.opt_state = state
        return population

    def follow(self, source: torch.Tensor, collective: Any) -> None:
        """After PBT's ``tell``: each member's Adam state becomes its donor's, as its weights did.

        Args:
            source: ``[n_local]`` global index of each member's donor (``PBTState.source``).
            collective: the run's collective (``LocalCollective`` or, under
                ``torchrun``, ``nytorch_fn.distributed.DistributedCollective``).
        """
        s = self.opt_state
        self.opt_state = type(s)(s.count, collective.take(s.mu, source), collective.take(s.nu, source))


class _Run:
    """One process, or this rank's block of members under ``torchrun`` (same seed everywhere)."""

    def __init__(self, n: int) -> None:
        import nytorch_fn.distributed as nfd

        self.n = n
        self.nfd = nfd if nfd.launched() else None
        if self.nfd is None:
            self.rank, self.collective = 0, LocalCollective(n)
        else:
            self.nfd.init()
            self.rank = self.nfd.world().rank
            self.collective = self.nfd.DistributedCollective(n, self.nfd.world())

    def algorithm(self, pbt: PBT) -> Any:
        """The same algorithm; only its collective changes under ``torchrun``."""
        return pbt if self.nfd is None else self.nfd.sharded(pbt)

    def everyone(self, local_values: torch.Tensor) -> torch.Tensor:
        """``[N]`` from each process's ``[n_local]`` (one all_gather under torchrun)."""
        return self.collective.gather(local_values)

    def close(self) -> None:
        if self.nfd is not None:
            # every rank must be done with its last collective before any tears the group down
            # (gloo aborts a process whose peer destroys the group mid-transfer)
            self.nfd.check_alive(timeout=120)
            self.nfd.shutdown()


def _method(args: argparse.Namespace, data: dict[str, torch.Tensor], run: _Run, *, exploit: bool,
            progress: Any) -> dict[str, Any]:
    """Train one method from the seed's population and hyperparameters; its history and figures.

    Both methods build the same initial population and hyperparameters (the
    same draws from the same seed) and the same minibatches; only PBT's
    exploit and explore (``tell``) differ. After every generation all members
    are scored on the validation split and the member chosen by validation
    on the test split; at the end every member is scored on the test split.
    """
    g = torch.Generator().manual_seed(args.seed)
    population = nf.init_population(make_net(args.hidden), args.population, generator=g)
    trainer = Trainer(data, n=args.population, rows=run.collective.rows, batch_size=args.batch_size,
                      every=args.every, steps=args.steps, seed=args.seed + 1)
    pbt = PBT(hyperparams={"lr": (*args.lr_range, "log"), "weight_decay": (*args.wd_range, "log")},
              train=trainer, fraction=args.fraction, maximize=False)
    algo = run.algorithm(pbt)
    state = algo.init(population, generator=g)
    hp = state.hyperparams
    names = ("val_ce", "val_acc", "lr", "weight_decay", "test_ce", "test_acc")
    history: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    steps: list[int] = []
    start = time.perf_counter()
    local = state.population
    while trainer.done < args.steps:
        before = trainer.done
        if exploit:
            local, state = algo.ask(state, generator=g)
            hp = state.hyperparams  # the values this generation trained with
        else:
            local = trainer(local, hp)
        val_ce, val_acc = evaluate(local, data["x_val"], data["y_val"])
        row = {"val_ce": val_ce, "val_acc": val_acc, "lr": hp["lr"].float(), "weight_decay": hp["weight_decay"].float()}
        for k, v in row.items():
            history[k].append(run.everyone(v))
        chosen = torch.argmin(history["val_ce"][-1]).reshape(1)
        test_ce, test_acc = evaluate(run.collective.take(local, chosen), data["x_test"], data["y_test"])
        history["test_ce"].append(test_ce[0])
        history["test_acc"].append(test_acc[0])
        steps.append(trainer.done)
        if exploit and trainer.done < args.steps:
            state = algo.tell(state, local, val_ce, generator=g)
            trainer.follow(state.source, run.collective)
        progress.update(trainer.done - before)
        progress.set_postfix(method=_LABELS["pbt" if exploit else "independent"],
                             val_ce=f"{float(history['val_ce'][-1].min()):.3f}")
    final = run.everyone(evaluate(local, data["x_test"], data["y_test"])[1])
    seconds = time.perf_counter() - start
    h = {k: torch.stack(v) for k, v in history.items()}
    return {"steps": steps, "history": h, "seconds": seconds, **figures(h, final)}


def figures(history: dict[str, torch.Tensor], final_test_acc: torch.Tensor) -> dict[str, Any]:
    """A method's result from its history: the member chosen by validation at the end, and early-stopped.

    Args:
        history: ``val_ce``, ``val_acc``, ``lr`` and ``weight_decay``, each
            ``[generations, N]``, and ``test_ce``, ``test_acc``, each
            ``[generations]``: the test figures of the member with the lowest
            validation cross-entropy at that generation.
        final_test_acc: ``[N]`` every member's test accuracy at the end.

    Returns:
        ``member`` (the index of the member with the lowest final validation
        cross-entropy), its ``val_ce``, ``val_acc``, ``test_ce``,
        ``test_acc``, ``lr`` and ``weight_decay``; ``median_test_acc`` (all
        members, at the end); ``early_stopped``: the checkpoint with the
        lowest validation cross-entropy over all generations (``generation``,
        ``member``, ``val_ce``, ``test_ce``, ``test_acc``).

    Examples:
        >>> from nytorch_fn.demo import figures
        >>> h = {k: torch.tensor([[0.5, 0.2], [0.9, 0.4]]) for k in ("val_acc", "lr", "weight_decay")}
        >>> h["val_ce"] = torch.tensor([[1.0, 0.3], [2.0, 0.6]])
        >>> h["test_ce"], h["test_acc"] = torch.tensor([0.35, 0.65]), torch.tensor([0.8, 0.7])
        >>> r = figures(h, torch.tensor([0.6, 0.7]))
        >>> r["member"], r["test_acc"], r["early_stopped"]["generation"], r["early_stopped"]["test_acc"]
        (1, 0.699999988079071, 0, 0.800000011920929)
    """
    i = int(torch.argmin(history["val_ce"][-1]))
    best_per_generation = history["val_ce"].min(1)
    gen = int(torch.argmin(best_per_generation.values))
    out: dict[str, Any] = {"member": i}
    out.update({k: float(history[k][-1, i]) for k in ("val_ce", "val_acc", "lr", "weight_decay")})
    out.update({k: float(history[k][-1]) for k in ("test_ce", "test_acc")})
    out["median_test_acc"] = float(final_test_acc.median())
    out["early_stopped"] = {"generation": gen, "member": int(best_per_generation.indices[gen]),
                            "val_ce": float(best_per_generation.values[gen]),
                            "test_ce": float(history["test_ce"][gen]), "test_acc": float(history["test_acc"][gen])}
    return out


def train(args: argparse.Namespace, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Both methods, one after the other, in this process (or this rank's block under ``torchrun``).

    Args:
        args: the options from ``parse``.
        data: the splits from ``load_digits``.

    Returns:
        ``pbt`` and ``independent``, each with ``steps`` (the step after each
        generation), ``history`` (``[generations, N]`` tensors, see
        ``figures``), ``seconds`` (training and evaluation time) and the
        ``figures`` of its result; and ``rank``.
    """
    run = _Run(args.population)
    tqdm = _need("tqdm.auto").tqdm
    progress = tqdm(total=2 * args.steps, desc="PBT, then independent", unit="step",
                    disable=args.no_progress or run.rank != 0, file=sys.stderr)
    try:
        results: dict[str, Any] = {m: _method(args, data, run, exploit=m == "pbt", progress=progress)
                                   for m in METHODS}
    finally:
        progress.close()
    results["rank"] = run.rank
    run.close()
    return results


def table(results: dict[str, Any]) -> str:
    """The side-by-side comparison the demo prints.

    Args:
        results: ``pbt`` and ``independent``, each a dict of ``figures`` (plus ``seconds``).

    Returns:
        The table as text.

    Examples:
        >>> from nytorch_fn.demo import table
        >>> one = {"test_acc": 0.9, "test_ce": 0.5, "val_ce": 0.4, "median_test_acc": 0.8, "lr": 1e-3,
        ...        "weight_decay": 1e-4, "early_stopped": {"test_acc": 0.9, "test_ce": 0.5}, "seconds": 1.0}
        >>> print(table({"pbt": one, "independent": dict(one, test_acc=0.85)}).splitlines()[2])
        held-out test accuracy                        0.900         0.850
    """
    rows = [
        ("held-out test accuracy", "test_acc", "{:.3f}"),
        ("held-out test cross-entropy", "test_ce", "{:.3f}"),
        ("validation cross-entropy", "val_ce", "{:.3f}"),
        ("median test accuracy, all members", "median_test_acc", "{:.3f}"),
        ("chosen member's learning rate", "lr", "{:.2e}"),
        ("chosen member's weight decay", "weight_decay", "{:.2e}"),
    ]
    head = f"{'':38}{_LABELS['pbt']:>9}{_LABELS['independent']:>14}"
    lines = [head, "-" * len(head)]
    for label, key, fmt in rows:
        lines.append(f"{label:38}{fmt.format(results['pbt'][key]):>9}{fmt.format(results['independent'][key]):>14}")
    lines.append("early-stopped (best checkpoint by validation):")
    for label, key in (("  held-out test accuracy", "test_acc"), ("  held-out test cross-entropy", "test_ce")):
        a, b = results["pbt"]["early_stopped"][key], results["independent"]["early_stopped"][key]
        lines.append(f"{label:38}{a:>9.3f}{b:>14.3f}")
    lines.append(f"{'seconds (train + evaluate)':38}{results['pbt']['seconds']:>9.1f}"
                 f"{results['independent']['seconds']:>14.1f}")
    return "\n".join(lines)


def plot(path: Path, results: dict[str, Any]) -> None:
    """Draw both methods against step: validation cross-entropy, test accuracy, the chosen member's learning rate.

    Solid lines follow the chosen member (the lowest validation
    cross-entropy at each generation), dashed lines the population median.

    Args:
        path: the PNG file to write.
        results: ``pbt`` and ``independent`` from ``train``.
    """
    _need("matplotlib").use("Agg")
    plt = _need("matplotlib.pyplot")

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    for m in METHODS:
        steps, h = results[m]["steps"], results[m]["history"]
        chosen = h["val_ce"].argmin(1, keepdim=True)
        color, label = _COLORS[m], _LABELS[m]
        axes[0].plot(steps, h["val_ce"].gather(1, chosen)[:, 0].numpy(), color=color, linewidth=2,
                     label=f"{label}: chosen member")
        axes[0].plot(steps, h["val_ce"].median(1).values.numpy(), color=color, linewidth=1.2, linestyle="--",
                     label=f"{label}: median member")
        axes[1].plot(steps, h["test_acc"].numpy(), color=color, linewidth=2, label=label)
        axes[2].plot(steps, h["lr"].gather(1, chosen)[:, 0].numpy(), color=color, linewidth=2, label=label)
    axes[0].set_ylabel("validation cross-entropy")
    axes[0].set_ylim(top=min(2.5, float(axes[0].get_ylim()[1])))
    axes[1].set_ylabel("held-out test accuracy of the chosen member")
    axes[2].set_ylabel("learning rate of the chosen member")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    n = results["pbt"]["history"]["val_ce"].shape[1]
    fig.suptitle(f"PBT vs the same {n} networks trained independently (digits, noisy training labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_figures(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("member", "val_ce", "val_acc", "test_ce", "test_acc", "median_test_acc", "lr", "weight_decay")
    out = {k: r[k] for k in keys}
    out["early_stopped"] = r["early_stopped"]
    out["train_seconds"] = round(r["seconds"], 3)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo: both methods, print them side by side, write ``accuracy.png`` and ``summary.json``.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``), e.g.
            ``["--population", "16", "--steps", "40", "--out", "demo-out"]``.

    Returns:
        The summary written to ``summary.json``: the settings, and for
        ``pbt`` and ``independent`` the chosen member's figures (``test_acc``,
        ``test_ce``, ``val_ce``, ``lr``, ...), the early-stopped ones and
        the training time (``{}`` on ranks other than 0 under ``torchrun``).
    """
    args = parse(argv)
    torch.set_num_threads(args.threads)
    data = load_digits(args.seed, train_size=args.train_size, val_size=args.val_size, label_noise=args.label_noise)
    results = train(args, data)
    if results["rank"] != 0:  # under torchrun only rank 0 reports
        return {}
    flipped = int(data["flipped"].sum())
    print(
        f"digits: {args.train_size} training examples, {flipped} of their labels redrawn at random "
        f"(--label-noise {args.label_noise}); {args.val_size} validation, {len(data['y_test'])} test (clean).\n"
        f"{args.population} MLPs 64-{args.hidden}-10 per method, Adam with log-uniform learning rate and weight "
        f"decay, {args.steps} steps each; PBT exploits and explores every {args.every} steps.\n"
    )
    print(table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "accuracy.png", results)
    summary: dict[str, Any] = {
        "task": "digits with noisy training labels",
        "population": args.population,
        "steps": args.steps,
        "every": args.every,
        "fraction": args.fraction,
        "seed": args.seed,
        "label_noise": args.label_noise,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "test_size": len(data["y_test"]),
        "train_seconds": round(results["pbt"]["seconds"] + results["independent"]["seconds"], 3),
        **{m: _json_figures(results[m]) for m in METHODS},
    }
    if args.compare_legacy:
        from nytorch_fn._demo_legacy import compare_legacy

        summary.update(compare_legacy(args, data, results["pbt"]["seconds"]))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    p, i = results["pbt"], results["independent"]
    print(
        f"\nheld-out test accuracy {p['test_acc']:.3f} (PBT) vs {i['test_acc']:.3f} (independent), "
        f"cross-entropy {p['test_ce']:.3f} vs {i['test_ce']:.3f}; {args.population} networks x {args.steps} "
        f"steps per method in {summary['train_seconds']:.1f} s; wrote {args.out / 'accuracy.png'}"
    )
    return summary


def cli() -> None:
    """Console-script entry point (``nytorch-fn-demo``)."""
    main()


if __name__ == "__main__":
    main()
