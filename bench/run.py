"""Run the benches and print side-by-side ratios (ours vs the raw-torch floor vs legacy nytorch).

Usage: python bench/run.py [core|population|all]
Single-threaded CPU timing; the legacy library runs in bench/.venv-legacy
(built on first use by bench/legacy_env.sh) as a subprocess of the same run.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402

ALL_THREADS = torch.get_num_threads()

#: suite -> (module, torch threads): the core's figures are single-threaded
#: Python-overhead measurements; populations use the whole machine.
SUITES = {"core": ("bench_core", 1), "population": ("bench_population", ALL_THREADS)}


def main(argv: list[str]) -> None:
    chosen = argv[1:] or ["all"]
    names = list(SUITES) if "all" in chosen else chosen
    summary = {}
    for name in names:
        module_name, threads = SUITES[name]
        torch.set_num_threads(threads)
        module = __import__(module_name)
        print(f"\n=== {name} (torch {torch.__version__}, {torch.get_num_threads()} thread(s)) ===")
        summary.update({f"{name}: {k}": v for k, v in module.main().items()})
    print("\nsummary")
    for k, v in summary.items():
        print(f"  {k:<50} {v:8.3f}")


if __name__ == "__main__":
    main(sys.argv)
