"""One prepared run on a CUDA machine: a correctness smoke test on the GPU, then the
population and core blend benches with the sizes the issues quote for an H200.

Run there (from the repo root, with pyrsistent and legacy nytorch on PYTHONPATH):
    NYTORCH_LEGACY_PYTHON=python3 python3 bench/gpu.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import nytorch_fn as nf  # noqa: E402
from nytorch_fn import optim  # noqa: E402


def smoke(device: str) -> None:
    """Every core path on the GPU, checked against plain torch on the same device."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).to(device)
    p = nf.particle(m)
    assert p.tensors[0].device.type == "cuda"
    g = torch.Generator(device=device).manual_seed(1)
    q = p.randn(generator=g)
    r = 0.25 * p + 0.75 * q
    assert torch.allclose(r.params["0.weight"], 0.25 * p.params["0.weight"] + 0.75 * q.params["0.weight"])
    x = torch.randn(32, 8, device=device)
    assert torch.allclose(nf.apply(p, x), m(x), atol=1e-5)
    grads = torch.func.grad(lambda w: nf.apply(w, x).pow(2).mean())(r)
    net = nf.to_module(r)
    net(x).pow(2).mean().backward()
    for name, param in net.named_parameters():
        assert torch.allclose(grads.params[name], param.grad, atol=1e-5), name
    s2 = p.species.add_param("0.scale", torch.ones(16))
    assert nf.migrate(p, s2).params["0.scale"].device.type == "cuda"
    pop = nf.init_population(m, 8).to(device)
    ys = nf.vmap_apply(pop, x)
    assert torch.allclose(ys[3], nf.apply(pop[3], x), atol=1e-5)
    out, stats = nf.vmap_apply_with(pop, (x,), training=True)
    assert stats["1.running_mean"].shape == (8, 16) and stats["1.running_mean"].device.type == "cuda"
    w = torch.rand(8, device=device)
    assert torch.allclose((w * pop).params["3.bias"], w[:, None] * pop.params["3.bias"])
    best = nf.best(pop, torch.arange(8.0, device=device))
    fresh = nf.stack(nf.unstack(pop))
    ptr = fresh.tensors[0].data_ptr()
    blended = nf.lerp(fresh, best, 0.5, donate=True)
    assert blended.tensors[0].data_ptr() == ptr
    opt = optim.adam(1e-3)
    pop = nf.init_population(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), 8).to(device)
    state = opt.init(pop)
    gp = torch.func.vmap(torch.func.grad(lambda w, xx: nf.apply(w, xx).pow(2).mean()), in_dims=(0, None))(pop, x)
    updates, state = opt.update(gp, state)
    stepped = optim.apply_updates(pop, updates)
    assert stepped.tensors[0].device.type == "cuda"
    print("smoke: every core path ran on", torch.cuda.get_device_name(), "and matched plain torch")


def main() -> None:
    device = "cuda"
    smoke(device)
    import bench_population as bp

    print(f"\n=== GPU benches: {torch.cuda.get_device_name()}, torch {torch.__version__} ===")
    summary = {}
    summary.update(bp.blend_toward_best(n=256, device=device))
    summary.update(bp.blend_toward_best(n=64, device=device))
    summary.update(bp.forward(n=1024, device=device))
    summary.update(bp.sgd_step(n=256, device=device))
    summary.update(bp.large(n=64, device=device))
    print("\nsummary")
    for k, v in summary.items():
        print(f"  {k:<50} {v:8.3f}")


if __name__ == "__main__":
    main()
