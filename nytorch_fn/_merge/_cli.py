"""``nytorch-fn-merge CONFIG.yml OUT_DIR``: mergekit's ``mergekit-yaml``, out of core, on safetensors."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ._files import CheckpointError
from ._kernels import MergeInputError
from ._yaml import ConfigError, run_config


def _size(text: str) -> int:
    units = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
    t = text.strip().upper()
    unit = t[-1] if t and t[-1] in units and not t[-1].isdigit() else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 5B, 500M or 1000000, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value * units[unit])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nytorch-fn-merge",
        description="Merge safetensors checkpoints with a mergekit YAML configuration, one tensor at a time.",
    )
    parser.add_argument("config", help="mergekit YAML configuration")
    parser.add_argument("out_path", help="output folder (written atomically)")
    parser.add_argument("--random-seed", type=int, default=None, help="seed of the random methods (dare_*, della*)")
    parser.add_argument("--out-shard-size", type=_size, default=5 * 10**9, help="bytes per output shard (5B)")
    parser.add_argument("--compat", choices=["mergekit"], default=None, help="mergekit 0.1.5's edge rules")
    parser.add_argument("--device", default="cpu", help="where to merge (cpu, cuda, ...)")
    parser.add_argument("--cuda", action="store_true", help="same as --device cuda (mergekit's flag)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-copy-tokenizer", dest="copy_tokenizer", action="store_false")
    parser.add_argument("--copy-tokenizer", dest="copy_tokenizer", action="store_true", default=True)
    for flag in ("--lazy-unpickle", "--allow-crimes", "--low-cpu-memory"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)  # mergekit flags; no effect here
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.random_seed) if args.random_seed is not None else None
    start = time.perf_counter()
    try:
        out = run_config(args.config, args.out_path, generator=generator, compat=args.compat,
                         device="cuda" if args.cuda else args.device, shard_size=args.out_shard_size,
                         overwrite=args.overwrite, copy_tokenizer=args.copy_tokenizer)
    except (ConfigError, CheckpointError, MergeInputError, ValueError, TypeError, FileExistsError, ImportError) as e:
        print(f"nytorch-fn-merge: error: {e}", file=sys.stderr)
        return 1
    print(f"nytorch-fn-merge: wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def cli() -> None:
    sys.exit(main())
