"""Same expressions, same weights: do ours and the legacy nytorch 1.1.0 give the same bits?

Run with the project venv:  python bench/legacy_values.py
The script runs itself twice as a worker (``--worker OUT``): once in the
project venv (our drop-in ``nytorch``, fusion on), once in bench/.venv-legacy
(the original library, built by bench/legacy_env.sh). Both load the same
weights from one file, evaluate the same particle expressions on
NytoModules and on products, and save every result; the parent compares
them tensor by tensor and prints, per expression, whether all parameters are
equal bit for bit (and the largest difference otherwise).

Not a test: the legacy library cannot share the test venv (same import name).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY_PY = os.path.join(HERE, ".venv-legacy", "bin", "python")

EXPRESSIONS = [
    "0.5 * a + 0.5 * b",
    "0.3 * a + 0.7 * b",
    "a + 0.1 * (b - a)",
    "(a + b + c) / 3",
    "2 * a - b * 0.25 + c / 4",
    "0.9 * a + 0.1 * b - 0.05 * c",
    "a * b + 1",
    "1 - 0.5 * a",
    "a ** 2 + b",
    "(0.5 * a.product() + 0.5 * b.product()).module()",
    "(0.3 * a.product() + 0.6 * b.product()).module()",
    "(a.product() + 0.1 * (b.product() - a.product())).module()",
]


def worker(weights: str, out: str) -> None:
    import torch
    from torch import nn

    import nytorch as nyto

    torch.set_num_threads(1)

    class MLP(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(64, 32)
            self.l2 = nn.Linear(32, 10)
            self.scale = nn.Parameter(torch.ones(10, dtype=torch.float64))

    saved = torch.load(weights)
    a = MLP()
    a.load_state_dict(saved["a"])
    b, c = a.clone(), a.clone()
    b.load_state_dict(saved["b"])
    c.load_state_dict(saved["c"])
    results = {}
    for k, source in enumerate(EXPRESSIONS):
        f = eval(f"lambda a, b, c: {source}")  # noqa: S307 - fixed expressions above
        r = f(a, b, c)
        results[k] = {n: p.detach().clone() for n, p in r.named_parameters()}
    torch.save(results, out)


def main() -> None:
    import torch

    if not os.path.exists(LEGACY_PY):
        subprocess.run(["bash", os.path.join(HERE, "legacy_env.sh")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.pt")
        g = torch.Generator().manual_seed(0)

        def state():
            return {
                "l1.weight": torch.randn(32, 64, generator=g),
                "l1.bias": torch.randn(32, generator=g),
                "l2.weight": torch.randn(10, 32, generator=g),
                "l2.bias": torch.randn(10, generator=g),
                "scale": torch.randn(10, generator=g, dtype=torch.float64),
            }

        torch.save({"a": state(), "b": state(), "c": state()}, weights)
        outs = {}
        for who, python in (("ours", sys.executable), ("legacy", LEGACY_PY)):
            outs[who] = os.path.join(tmp, f"{who}.pt")
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            subprocess.run(
                [python, os.path.abspath(__file__), "--worker", weights, outs[who]], check=True, cwd="/", env=env
            )
        ours, legacy = torch.load(outs["ours"]), torch.load(outs["legacy"])
    print("ours (nytorch on nytorch_fn, fusion on) vs legacy nytorch 1.1.0: same expressions, same weights")
    print(f"{'expression':<62}{'bit for bit':>12}{'max |diff|':>14}")
    for k, source in enumerate(EXPRESSIONS):
        mine, theirs = ours[k], legacy[k]
        assert list(mine) == list(theirs), (source, list(mine), list(theirs))
        equal = all(torch.equal(mine[n], theirs[n]) for n in mine)
        diff = max(float((mine[n].double() - theirs[n].double()).abs().max()) for n in mine)
        print(f"{source:<62}{'yes' if equal else 'NO':>12}{diff:>14.3g}")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(sys.argv[i + 1], sys.argv[i + 2])
    else:
        main()
