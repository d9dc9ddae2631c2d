"""Model merging side by side with mergekit 0.1.5 (its own code, in bench/.venv-mergekit).

    bash bench/mergekit_env.sh                 # once: builds the mergekit venv
    flock /tmp/nytorch-bench.lock python bench/bench_merge.py [--quick]

1. Per method, our per-tensor result against mergekit's ``merge_tensors`` on
   the same tensors (float32 and bfloat16): max |difference|, ours with
   ``compat="mergekit"`` too, and which rule differs by design.
2. Out of core: 3 models (+ a base) of 6 x nn.Linear(2048, 2048) (96 MiB
   each) as safetensors; ``nytorch-fn-merge`` vs ``mergekit-pytorch`` on the
   same YAML (linear, ties, dare_ties), each in a fresh process, under both
   heap settings: peak RSS above the process's import baseline (VmHWM, reset
   after the imports; anonymous and file-backed pages alike, so mapped
   inputs count), and time.
3. In memory: our particle merges vs a hand-written torch loop over the same tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEAPS = {"glibc": {}, "no-trim": {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}}

CASES = {  # method: (inputs: "base+k" or "k", parameters shared by both libraries)
    "linear": ("3", {"weight": [1.0, 0.5, 0.25]}),
    "slerp": ("base+1", {"t": 0.3}),
    "multislerp": ("3", {"weight": [1.0, 1.0, 1.0]}),
    "nuslerp": ("2", {"weight": [0.4, 0.6]}),
    "karcher": ("3", {}),
    "task_arithmetic": ("base+3", {"weight": [0.5, 0.3, 0.2]}),
    "ties": ("base+3", {"weight": [1.0, 1.0, 1.0], "density": 0.3}),
    "dare_linear": ("base+3", {"weight": [1.0, 0.5, 0.5], "density": 1.0}),
    "dare_ties": ("base+3", {"weight": [1.0, 0.5, 0.5], "density": 1.0}),
    "breadcrumbs": ("base+3", {"weight": [1.0, 1.0, 1.0], "density": 0.8, "gamma": 0.05}),
    "breadcrumbs_ties": ("base+3", {"weight": [1.0, 1.0, 1.0], "density": 0.8, "gamma": 0.05}),
    "della": ("base+3", {"weight": [1.0, 1.0, 1.0], "density": 1.0}),
    "della_linear": ("base+3", {"weight": [1.0, 1.0, 1.0], "density": 1.0}),
    "model_stock": ("base+3", {}),
    "nearswap": ("base+1", {"t": 0.001}),
    "sce": ("base+3", {"select_topk": 0.5}),
    "arcee_fusion": ("base+1", {}),
    "ram": ("base+3", {"epsilon": 0.012}),
    "ramplus_tl": ("base+3", {"epsilon": 0.012}),
    "passthrough": ("1", {"scale": [2.0]}),
}
BY_DESIGN = {
    "linear": "",
    "slerp": "coefficients in float64 (rounding only)",
    "ties": "exact sign ties elect no sign (compat: +)",
    "sce": "exact sign ties elect no sign (compat: +)",
    "breadcrumbs_ties": "exact sign ties elect no sign (compat: +)",
    "arcee_fusion": "exact quantiles (mergekit samples 1M entries of larger tensors)",
    "dare_linear": "random: compared at density 1 (masks differ); rescale 1/density vs L1",
    "dare_ties": "random: compared at density 1; rescale 1/density vs L1",
    "della": "random: compared at density 1; rescale 1/p vs L1",
    "della_linear": "random: compared at density 1; rescale 1/p vs L1",
}

MK_TENSORS = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import load_file, save_file
    from mergekit.merge_methods import merge_tensors
    src, cases, out = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
    t = load_file(src)
    res = {}
    for dtype in ("float32", "bfloat16"):
        dt = getattr(torch, dtype)
        for name, (inputs, params) in cases.items():
            base = inputs.startswith("base")
            k = int(inputs.split("+")[-1])
            xs = ([t["base"]] if base else []) + [t[f"m{i}"] for i in range(k)]
            xs = [x.to(dt) for x in xs]
            p = {}
            for key, v in params.items():
                if isinstance(v, list):
                    ids = range(1, k + 1) if base else range(k)
                    p[key] = {i: w for i, w in zip(ids, v)}
                else:
                    p[key] = v
            try:
                r = merge_tensors(xs, name, parameters=p, base_index=0 if base else None)
                res[f"{dtype}/{name}"] = r.to(dt).contiguous()
            except Exception as e:
                print(f"mergekit {name} {dtype}: {type(e).__name__}: {e}", file=sys.stderr)
    save_file(res, out)
""")

PEAK = textwrap.dedent("""
    import os, sys, time
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    which, cfg, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if which == "ours":
        from nytorch_fn._merge._cli import main
        args = [cfg, out, "--random-seed", "0"]
        run = lambda: main(args)
    else:
        from mergekit.scripts.merge_raw_pytorch import main as mk
        args = [cfg, out, "--random-seed", "0"]
        run = lambda: mk(args, standalone_mode=False)
    import torch
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS (VmHWM) := current RSS: the import baseline
        f.write("5")
    base = status("VmRSS")
    t0 = time.perf_counter()
    run()
    dt = time.perf_counter() - t0
    peak = status("VmHWM")
    print(f"RESULT {base} {peak} {dt}")
""")
# Why VmHWM and not getrusage's ru_maxrss: a child started by subprocess (vfork + exec on Linux)
# inherits the PARENT's high-water mark in ru_maxrss (exec records the old mm's peak in the
# signal struct), so every child reported at least this bench's own RSS (the 4 models it built),
# a constant ~190 MiB above the child's baseline whatever it merged. VmHWM belongs to the new
# address space, and clear_refs resets it after the imports.


def _py(which: str) -> str:
    if which == "ours":
        return sys.executable
    venv = HERE / ".venv-mergekit" / "bin" / "python"
    if not venv.exists():
        subprocess.run(["bash", str(HERE / "mergekit_env.sh")], check=True, stdout=subprocess.DEVNULL)
    return str(venv)


def per_method(work: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file, save_file

    import nytorch_fn as nf
    from nytorch_fn import merge

    g = torch.Generator().manual_seed(0)
    base = torch.randn(256, 256, generator=g) * 0.05
    tensors = {"base": base}
    for i in range(3):
        d = torch.randn(256, 256, generator=g) * 0.01
        d[torch.rand(256, 256, generator=g) < 0.3] = 0  # sparse-ish task vectors (for RAM)
        tensors[f"m{i}"] = base + d
    src = work / "tensors.safetensors"
    save_file(tensors, str(src))
    (work / "cases.json").write_text(json.dumps(CASES))
    mk_out = work / "mk.safetensors"
    script = work / "mk_tensors.py"
    script.write_text(MK_TENSORS)
    subprocess.run([_py("mergekit"), str(script), str(src), str(work / "cases.json"), str(mk_out)], check=True)
    theirs = load_file(str(mk_out))
    lines = ["| method | f32 max abs diff | f32 compat | bf16 max abs diff | bf16 compat | differs by design |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, (inputs, params) in CASES.items():
        row = [name]
        for dtype in (torch.float32, torch.bfloat16):
            m = torch.nn.Module()
            m.x = torch.nn.Parameter(torch.zeros(256, 256, dtype=dtype))
            sp = nf.particle(m).species
            P = lambda t: nf.Particle(sp, {"x": t.to(dtype)})  # noqa: E731
            has_base = inputs.startswith("base")
            k = int(inputs.split("+")[-1])
            models = [P(tensors[f"m{i}"]) for i in range(k)]
            kw = {("lambda_" if a == "lambda" else a): v for a, v in params.items()}
            for compat in (None, "mergekit"):
                extra = {"compat": compat} if name in ("slerp", "nuslerp", "ties", "dare_ties", "dare_linear",
                                                          "breadcrumbs", "breadcrumbs_ties", "della",
                                                          "della_linear", "sce") else {}
                key = f"{str(dtype).split('.')[-1]}/{name}"
                if key not in theirs:
                    row.append("mergekit failed")
                    continue
                ours = merge.merge_particles(name, models, base=P(base) if has_base else None,
                                             generator=torch.Generator().manual_seed(0), **kw, **extra).params["x"]
                diff = float((ours.double() - theirs[key].double()).abs().max())
                row.append(f"{diff:.2e}")
        row.append(BY_DESIGN.get(name, ""))
        lines.append("| " + " | ".join(row) + " |")
    # bf16 correct rounding against the float64 value
    exact = {"linear": (tensors["m0"].bfloat16().double() * (1 / 1.75) + tensors["m1"].bfloat16().double() * (0.5 / 1.75)
                        + tensors["m2"].bfloat16().double() * (0.25 / 1.75))}
    m = torch.nn.Module()
    m.x = torch.nn.Parameter(torch.zeros(256, 256, dtype=torch.bfloat16))
    sp = nf.particle(m).species
    ours = merge.linear([nf.Particle(sp, {"x": tensors[f"m{i}"].bfloat16()}) for i in range(3)],
                        weight=[1.0, 0.5, 0.25]).params["x"]
    e = exact["linear"].bfloat16()
    lines.append("")
    lines.append(f"bf16 linear, entries not correctly rounded: ours {float((ours != e).float().mean()):.2%}, "
                 f"mergekit {float((theirs['bfloat16/linear'] != e).float().mean()):.2%}")
    return lines


def _models(work: Path) -> dict[str, Path]:
    import torch
    from torch import nn

    from safetensors.torch import save_file

    paths = {}
    for i, name in enumerate(["base", "a", "b", "c"]):
        torch.manual_seed(i)
        net = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])
        p = work / name
        p.mkdir()
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(p / "model.safetensors"))
        paths[name] = p
    return paths


def _yaml(method: str, paths: dict[str, Path]) -> str:
    models = "".join(
        f"  - model: {paths[n] / 'model.safetensors'}\n    parameters:\n      weight: {w}\n" + ("      density: 0.5\n" if method != "linear" else "")
        for n, w in (("a", 0.5), ("b", 0.3), ("c", 0.2))
    )
    base = f"base_model: {paths['base'] / 'model.safetensors'}\n" if method != "linear" else ""
    return f"merge_method: {method}\n{base}models:\n{models}"


def out_of_core(work: Path, repeats: int) -> list[str]:
    paths = _models(work)
    size = sum(f.stat().st_size for f in paths["a"].glob("*.safetensors"))
    script = work / "peak.py"
    script.write_text(PEAK)
    lines = [f"one model: {size / 2**20:.0f} MiB; peak RSS (VmHWM) above the import baseline (MiB), time (s); "
             f"median of {repeats} fresh processes per figure, the two sides alternating; "
             f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", "",
             "| method | heap | ours peak | mergekit peak | ratio | ours time | mergekit time | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in ("linear", "ties", "dare_ties"):
        cfg = work / f"{method}.yml"
        cfg.write_text(_yaml(method, paths))
        for heap, env_extra in HEAPS.items():
            runs: dict[str, list] = {"ours": [], "mergekit": []}
            for r in range(repeats):  # the two sides alternate, so a change in the machine's load hits both
                for which in ("ours", "mergekit"):
                    out = work / f"out-{which}-{method}-{heap}-{r}"
                    env = {**os.environ, **env_extra, "OMP_NUM_THREADS": "1"}
                    env["PYTHONPATH"] = str(ROOT) if which == "ours" else ""
                    p = subprocess.run([_py(which), str(script), which, str(cfg), str(out)], env=env,
                                       capture_output=True, text=True)
                    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
                    if line is None:
                        raise RuntimeError(f"{which} {method} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
                    base, peak, dt = line.split()[1:]
                    runs[which].append(((int(peak) - int(base)) / 2**20, float(dt)))
                    subprocess.run(["rm", "-rf", str(out)])
            res = {}
            for which, rs in runs.items():
                res[which] = (sorted(r[0] for r in rs)[len(rs) // 2], sorted(r[1] for r in rs)[len(rs) // 2])
            o, k = res["ours"], res["mergekit"]
            lines.append(f"| {method} | {heap} | {o[0]:.0f} | {k[0]:.0f} | {o[0] / k[0]:.2f}x | {o[1]:.2f} | {k[1]:.2f} | "
                         f"{o[1] / k[1]:.2f}x |")
    return lines


def in_memory(repeats: int) -> list[str]:
    import torch
    from torch import nn

    import nytorch_fn as nf
    from nytorch_fn import merge

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])
    base = nf.particle(net)
    g = torch.Generator().manual_seed(1)
    fts = [base + 0.01 * base.randn(generator=g) for _ in range(3)]
    names = base.species.names
    w = [0.5, 0.3, 0.2]

    def loop_linear():
        return {n: sum(wi * f.params[n] for wi, f in zip(w, fts)) / sum(w) for n in names}

    def loop_task():
        return {n: base.params[n] + sum(wi * (f.params[n] - base.params[n]) for wi, f in zip(w, fts)) for n in names}

    def loop_ties(density=0.5):
        out = {}
        for n in names:
            b = base.params[n]
            taus = []
            for f in fts:
                t = (f.params[n] - b).flatten()
                k = max(1, int(density * t.numel()))
                mask = torch.zeros_like(t, dtype=torch.bool)
                mask[t.abs().topk(k).indices] = True
                taus.append((t * mask).view(b.shape))
            tw = torch.stack([wi * t for wi, t in zip(w, taus)])
            sign = tw.sum(0).sign()
            agree = tw.sign() == sign
            num = (tw * agree).sum(0)
            den = (torch.tensor(w).view(-1, *[1] * b.dim()) * agree).sum(0)
            out[n] = b + num / torch.where(den == 0, torch.ones_like(den), den)
        return out

    cases = [
        ("linear", loop_linear, lambda: merge.linear(fts, weight=w)),
        ("task_arithmetic", loop_task, lambda: merge.task_arithmetic(base, fts, weight=w)),
        ("ties (density 0.5)", loop_ties, lambda: merge.ties(base, fts, weight=w, density=0.5)),
    ]
    lines = ["| merge | ours (s) | torch loop (s) | ratio |", "| --- | --- | --- | --- |"]
    for name, loop, ours in cases:
        def best(fn):
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return sorted(times)[len(times) // 2]
        a, b = best(ours), best(loop)
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one process per configuration")
    ap.add_argument("--only", choices=["methods", "disk", "memory"], default=None)
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as d:
        work = Path(d)
        if args.only in (None, "methods"):
            print("## Per method: ours vs mergekit 0.1.5's merge_tensors (256x256, 3 models + base)\n")
            print("\n".join(per_method(work)))
        if args.only in (None, "disk"):
            print("\n## Out of core: nytorch-fn-merge vs mergekit-pytorch (3 x 96 MiB + base, 1 thread)\n")
            print("\n".join(out_of_core(work, repeats)))
        if args.only in (None, "memory"):
            print("\n## In memory: particle merges vs a hand-written torch loop (3 x 96 MiB, 1 thread)\n")
            print("\n".join(in_memory(repeats)))


if __name__ == "__main__":
    main()
