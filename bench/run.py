"""Run the benches and print side-by-side ratios (ours vs the raw-torch floor vs legacy nytorch).

Usage: python bench/run.py [core|population|values|all] [--processes N]

Each suite runs in N fresh processes (default 3): on glibc, whether a fresh
large allocation page-faults depends on the process's heap history, so one
process can be an outlier for ours or for the floor alike. The first
process's tables are printed in full, then every summary figure as the
median over processes with its range. Single-threaded CPU timing for the
core; the machine's threads for populations. The legacy library runs in
bench/.venv-legacy (built on first use by bench/legacy_env.sh) as a
subprocess of the same run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

#: suite -> (module, torch threads or None for torch's default): the core's
#: figures are single-threaded Python-overhead measurements; populations use
#: the whole machine.
SUITES = {"core": ("bench_core", 1), "population": ("bench_population", None), "values": ("bench_values", 1)}
MARK = "@@summary "


def one(name: str) -> None:
    """Run one suite in this process; print its tables, then its summary as a JSON line."""
    import torch

    module_name, threads = SUITES[name]
    if threads is not None:
        torch.set_num_threads(threads)
    module = __import__(module_name)
    print(f"\n=== {name} (torch {torch.__version__}, {torch.get_num_threads()} thread(s)) ===")
    summary = module.main()
    print(MARK + json.dumps(summary), flush=True)


def main(argv: list[str]) -> None:
    args = argv[1:]
    if args[:1] == ["--one"]:
        one(args[1])
        return
    processes = 3
    if "--processes" in args:
        i = args.index("--processes")
        processes = int(args[i + 1])
        del args[i : i + 2]
    names = list(SUITES) if not args or "all" in args else args
    for name in names:
        runs = []
        for k in range(processes):
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--one", name], capture_output=True, text=True
            )
            if proc.returncode != 0:
                sys.exit(f"bench {name} failed:\n{proc.stderr[-3000:]}")
            lines = proc.stdout.splitlines()
            if k == 0:
                print("\n".join(line for line in lines if not line.startswith(MARK)))
            runs.append(json.loads(next(line for line in lines if line.startswith(MARK))[len(MARK):]))
        print(f"\nsummary of {name}: median over {processes} processes [min - max]")
        for key in runs[0]:
            values = [r[key] for r in runs]
            print(f"  {key:<46} {statistics.median(values):8.3f}   [{min(values):.3f} - {max(values):.3f}]")


if __name__ == "__main__":
    main(sys.argv)
