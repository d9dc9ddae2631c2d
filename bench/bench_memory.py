"""Memory: RSS over 10,000 particle operations (issue 6), and checkpoint figures (issue 15).

Run: ``python bench/bench_memory.py`` (both), ``--only ops`` or ``--only checkpoint``.

- ops: RSS after a warm-up and after every 2,000 operations; a leak would
  show as steady growth.
- checkpoint: a 256 MiB population (64 members of 4 MiB) saved once, then
  each figure measured in a fresh subprocess, under glibc's default heap
  settings and under ``MALLOC_MMAP_THRESHOLD_=1073741824
  MALLOC_TRIM_THRESHOLD_=1073741824``: peak RSS above the baseline (the
  process after imports and after building the template, VmHWM reset
  through /proc/self/clear_refs) for ``load``, ``read_manifest`` and
  ``save``; bytes read (/proc/self/io rchar) for one member of 64; and, side
  by side, the same jobs through the format-1 reader (``f.read()`` then
  ``safetensors.torch.load``) and through ``safetensors.safe_open``'s mmap and
  pread backends.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

import torch
from torch import nn

import nytorch_fn as nf


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(ops: int = 10_000) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
    p = nf.particle(net)
    q = p.randn(generator=torch.Generator().manual_seed(1))
    pop = nf.stack([p, q, p * 2, q * 2])
    x = torch.randn(8, 64)
    for _ in range(1_000):  # warm-up
        p = 0.5 * p + 0.5 * q
    gc.collect()
    start = rss_mib()
    print(f"after warm-up: {start:.1f} MiB")
    for i in range(1, ops + 1):
        k = i % 5
        if k == 0:
            p = 0.9 * p + 0.1 * q
        elif k == 1:
            p = (p - q) * 0.5 + q
        elif k == 2:
            p = p.map(lambda t, cfg: t * 0.999)
        elif k == 3:
            pop = 0.5 * pop + 0.5 * p
        else:
            nf.apply(p, x)
        if i % 2_000 == 0:
            print(f"after {i:>6} operations: {rss_mib():.1f} MiB")
    gc.collect()
    end = rss_mib()
    print(f"growth over {ops} operations: {end - start:+.2f} MiB")


# ---------------------------------------------------------------------------
# checkpoints (each figure in a fresh process)
# ---------------------------------------------------------------------------

MEMBERS = 64
BIG_HEAP = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def _net() -> nn.Module:
    # 1024*512 + 512 + 512*1024 + 1024 = 1,050,112 float32 = 4.0 MiB per member
    return nn.Sequential(nn.Linear(1024, 512), nn.Tanh(), nn.Linear(512, 1024))


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    with open("/proc/self/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    out["rchar"] = int(io["rchar"])
    return out


def _job(kind: str, path: str) -> dict:
    """Runs in a fresh process: one checkpoint job, measured from a baseline taken just before it."""
    from nytorch_fn import checkpoint

    species = nf.particle(_net()).species
    pop = None
    if kind == "save":
        pop = nf.random_population(nf.particle(_net()), MEMBERS, generator=torch.Generator().manual_seed(0))
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = _status()
    result = None
    if kind == "load":
        result = checkpoint.load(path, like=species)
    elif kind == "read_manifest":
        result = checkpoint.read_manifest(path)
    elif kind == "member":
        result = checkpoint.load(path, like=species, members=MEMBERS // 2 + 5)
    elif kind == "save":
        checkpoint.save(path + ".again", pop)
    elif kind == "v1-reader":  # what format 1's load did: the whole file, then a second copy
        import safetensors.torch

        with open(path, "rb") as f:
            data = f.read()
        result = safetensors.torch.load(data)
        del data
    elif kind in ("safe_open-mmap", "safe_open-pread"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", backend=kind.split("-")[1]) as f:
            result = {k: f.get_tensor(k).clone() for k in f.keys()}  # an independent copy, as load returns
    elif kind in ("safe_open-mmap-member", "safe_open-pread-member"):
        from safetensors import safe_open

        with safe_open(path, framework="pt", backend=kind.split("-")[1]) as f:
            result = {k: f.get_slice(k)[MEMBERS // 2 + 5].clone() for k in f.keys()}
    end = _status()
    return {"peak_above": end["VmHWM"] - base["VmRSS"], "read": end["rchar"] - base["rchar"], "alive": result is not None}


def _run_job(kind: str, path: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--job", kind, path],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkpoints() -> None:
    from nytorch_fn import checkpoint

    folder = tempfile.mkdtemp(prefix="bench-ckpt-")
    path = os.path.join(folder, "pop.safetensors")
    pop = nf.random_population(nf.particle(_net()), MEMBERS, generator=torch.Generator().manual_seed(0))
    tensor_bytes = sum(t.numel() * t.element_size() for t in pop.tensors)
    checkpoint.save(path, pop)
    del pop
    gc.collect()
    size = os.path.getsize(path)
    mib = 2**20
    print(f"checkpoint: a population of {MEMBERS} x {tensor_bytes / MEMBERS / mib:.2f} MiB = "
          f"{tensor_bytes / mib:.1f} MiB of tensors, file {size / mib:.1f} MiB; each figure in a fresh process")
    settings = (("glibc default", {}), ("MALLOC_*_THRESHOLD_=1 GiB", BIG_HEAP))
    rows = [
        ("load: peak RSS above baseline / tensor bytes", "load", lambda r: f"{r['peak_above'] / tensor_bytes:.3f}x", "<= 1.10x"),
        ("read_manifest: peak RSS above baseline", "read_manifest", lambda r: f"{r['peak_above'] / mib:.1f} MiB", "< 16 MiB"),
        ("read_manifest: bytes read", "read_manifest", lambda r: f"{r['read'] / 1024:.1f} KiB", "header only"),
        ("load 1 of 64 members: bytes read / file", "member", lambda r: f"1/{size / max(r['read'], 1):.1f} ({r['read'] / mib:.2f} MiB)", "about 1/64"),
        ("load 1 of 64 members: peak RSS above baseline", "member", lambda r: f"{r['peak_above'] / mib:.1f} MiB", ""),
        ("save (population in memory): peak RSS above baseline", "save", lambda r: f"{r['peak_above'] / mib:.1f} MiB", "streams"),
        ("format-1 reader (f.read + safetensors.torch.load) / tensor bytes", "v1-reader", lambda r: f"{r['peak_above'] / tensor_bytes:.3f}x", "(before)"),
        ("safe_open mmap, get_tensor + copy / tensor bytes", "safe_open-mmap", lambda r: f"{r['peak_above'] / tensor_bytes:.3f}x", "(peer)"),
        ("safe_open pread, get_tensor + copy / tensor bytes", "safe_open-pread", lambda r: f"{r['peak_above'] / tensor_bytes:.3f}x", "(peer)"),
        ("safe_open pread, get_slice(member): bytes read / file", "safe_open-pread-member", lambda r: f"1/{size / max(r['read'], 1):.1f}", "(peer)"),
        ("safe_open mmap, get_slice(member): peak RSS above baseline", "safe_open-mmap-member", lambda r: f"{r['peak_above'] / mib:.1f} MiB", "(peer)"),
    ]
    cache: dict[tuple[str, str], dict] = {}
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {settings[0][0]:>18}  {settings[1][0]:>26}  target")
    for label, kind, show, target in rows:
        cells = []
        for name, env in settings:
            if (kind, name) not in cache:
                cache[kind, name] = _run_job(kind, path, env)
            cells.append(show(cache[kind, name]))
        print(f"{label:<{width}}  {cells[0]:>18}  {cells[1]:>26}  {target}")
    for f in os.listdir(folder):
        os.unlink(os.path.join(folder, f))
    os.rmdir(folder)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--job":
        print(json.dumps(_job(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("ops", "checkpoint"))
    args = parser.parse_args()
    if args.only in (None, "ops"):
        main()
    if args.only in (None, "checkpoint"):
        checkpoints()
