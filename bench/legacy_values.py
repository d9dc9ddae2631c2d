"""Same expressions, same weights: do ours and the legacy nytorch 1.1.0 give the same bits?

Run with the project venv:  python bench/legacy_values.py
The script runs itself twice as a worker (``--worker OUT``): once in the
project venv (our drop-in ``nytorch``), once in bench/.venv-legacy
(the original library, built by bench/legacy_env.sh). Both load the same
weights from one file, evaluate the same particle expressions on
NytoModules and on products, and save every result; the parent compares
them tensor by tensor and prints, per expression, whether all parameters are
equal bit for bit (and the largest difference otherwise). Then, for every
conversion of an attribute from one kind to another (parameter, module,
buffer, plain value, None), whether both libraries refuse or accept it
alike: the exception, the version kept, where the names end up in the
module and in another particle after ``touch()``.

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


# Conversions of an attribute from one kind to another (the legacy suite's test_convert_attar_type.py).
CONVERSIONS = [
    ("param -> module", "param0", "module"),
    ("param -> buffer", "param0", "buffer"),
    ("param -> value", "param0", "value"),
    ("param -> None", "param0", "none"),
    ("module -> param", "lin", "param"),
    ("module -> buffer", "lin", "buffer"),
    ("module -> value", "lin", "value"),
    ("module -> None", "lin", "none"),
    ("buffer -> module", "buffer0", "module"),
    ("buffer -> param", "buffer0", "param"),
    ("buffer -> value", "buffer0", "value"),
    ("buffer -> None", "buffer0", "none"),
    ("value -> module", "data0", "module"),
    ("value -> param", "data0", "param"),
    ("value -> buffer", "data0", "buffer"),
]


def conversions() -> dict:
    """Per conversion: the exception's class names (or None), whether the version stayed, and where names live."""
    import torch
    from torch import nn

    import nytorch as nyto

    class Holder(nyto.NytoModule):
        def __init__(self):
            super().__init__()
            self.param0 = nn.Parameter(torch.zeros(2))
            self.lin = nn.Linear(2, 3)
            self.register_buffer("buffer0", torch.zeros(1))
            self.data0 = "user data"

    def tables(m):
        return {t: sorted(getattr(m, t)) for t in ("_parameters", "_modules", "_buffers")} | {
            "data0": "data0" in m.__dict__
        }

    out = {}
    for label, name, to in CONVERSIONS:
        m = Holder()
        other = m.clone()
        version = m._version_kernel
        error = None
        try:
            if to == "module":
                setattr(m, name, nn.Linear(1, 1))
            elif to == "param":
                setattr(m, name, nn.Parameter(torch.ones(1)))
            elif to == "buffer":
                m.register_buffer(name, torch.ones(1))
            elif to == "value":
                setattr(m, name, object())
            else:
                setattr(m, name, None)
        except Exception as e:  # noqa: BLE001 - the outcome is what is compared
            error = [c.__name__ for c in type(e).__mro__]
        out[label] = {
            "error": error,
            "version kept": m._version_kernel is version,
            "tables": tables(m),
            "other after touch": tables(other.touch()),
        }
    return out


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
    results["conversions"] = conversions()
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
    print("ours (nytorch on nytorch_fn) vs legacy nytorch 1.1.0: same expressions, same weights")
    print(f"{'expression':<62}{'bit for bit':>12}{'max |diff|':>14}")
    for k, source in enumerate(EXPRESSIONS):
        mine, theirs = ours[k], legacy[k]
        assert list(mine) == list(theirs), (source, list(mine), list(theirs))
        equal = all(torch.equal(mine[n], theirs[n]) for n in mine)
        diff = max(float((mine[n].double() - theirs[n].double()).abs().max()) for n in mine)
        print(f"{source:<62}{'yes' if equal else 'NO':>12}{diff:>14.3g}")
    print()
    print("conversions of an attribute (the legacy suite's test_convert_attar_type.py), same outcome:")
    print(f"{'conversion':<20}{'legacy':<46}{'ours':<46}{'same':>6}")
    for label, _, _ in CONVERSIONS:
        mine, theirs = ours["conversions"][label], legacy["conversions"][label]
        # the same exception where the legacy one's class is among ours' (ours may add TypeError to an assert)
        raised = (mine["error"] is None) == (theirs["error"] is None) and (
            mine["error"] is None or theirs["error"][0] in mine["error"]
        )
        same = raised and all(mine[k] == theirs[k] for k in ("version kept", "tables", "other after touch"))

        def outcome(r):
            if r["error"] is None:
                return "works, new version" if not r["version kept"] else "works, same version"
            public = [c for c in r["error"] if c in ("TypeError", "AssertionError", "KeyError")] or r["error"][:1]
            return f"raises {'+'.join(public)}, " + ("version kept" if r["version kept"] else "new version")

        print(f"{label:<20}{outcome(theirs):<46}{outcome(mine):<46}{'yes' if same else 'NO':>6}")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(sys.argv[i + 1], sys.argv[i + 2])
    else:
        main()
