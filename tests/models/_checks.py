"""The checks every architecture in tests/models goes through (one function per row of the table in docs/guides/architectures.md).

Expected values come from the module itself, plain autograd and plain torch
expressions on the tensors, never from the code under test.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from torch import nn

import nytorch_fn as nf
from nytorch_fn import checkpoint as ck
from tests.helpers import tensor_equal, tree_equal

Get = Callable[[Any], torch.Tensor]


def identity(out: Any) -> torch.Tensor:
    return out


def first(out: Any) -> torch.Tensor:
    return out[0]


def logits(out: Any) -> torch.Tensor:
    return out.logits


def capture(module: nn.Module) -> nf.Particle:
    """``nf.particle``: one entry per distinct Parameter, in ``named_parameters()`` order, values equal."""
    p = nf.particle(module)
    named = dict(module.named_parameters())
    assert p.species.names == tuple(named)
    assert all(tensor_equal(t, named[n].detach()) for n, t in zip(p.species.names, p.tensors))
    return p


def population(p: nf.Particle, n: int = 3, *, scale: float = 0.02, seed: int = 0) -> nf.Particle:
    """``nf.stack`` of ``p`` and ``n - 1`` perturbed copies (noise drawn outside vmap, explicitly)."""
    g = torch.Generator().manual_seed(seed)
    members = [p] + [p + scale * p.randn(generator=g) for _ in range(n - 1)]
    return nf.stack(members)


def apply_matches_module(p: nf.Particle, module: nn.Module, args: tuple, kwargs: dict | None = None,
                         get: Get = identity, *, exact: bool = True) -> None:
    """``nf.apply`` equals the module's own forward: bit for bit against the module with
    ``requires_grad_(False)`` (a particle's tensors do not require grad, and torch picks some CPU
    kernels by that flag: oneDNN RNNs, SDPA), and to rounding against the module as it is."""
    kwargs = kwargs or {}
    got = get(nf.apply(p, *args, **kwargs)).detach()
    frozen = copy.deepcopy(module).requires_grad_(False)
    want = get(frozen(*args, **kwargs)).detach()
    if exact:
        assert tensor_equal(got, want), (got - want).abs().max()
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, get(module(*args, **kwargs)).detach(), rtol=1e-5, atol=1e-6)


def vmap_matches_loop(pop: nf.Particle, args: tuple, kwargs: dict | None = None, get: Get = identity,
                      *, atol: float = 1e-5) -> None:
    kwargs = kwargs or {}
    batched = get(nf.vmap_apply(pop, *args, **kwargs))
    loop = torch.stack([get(nf.apply(q, *args, **kwargs)) for q in nf.unstack(pop)])
    assert batched.shape == loop.shape
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=atol)


def vmap_grad_matches_autograd(pop: nf.Particle, loss: Callable[[Any], torch.Tensor], args: tuple,
                               kwargs: dict | None = None, *, atol: float = 1e-5) -> None:
    """``vmap(grad(loss))`` over the population equals each member's own ``backward()`` on a real module."""
    kwargs = kwargs or {}
    grads = torch.func.vmap(torch.func.grad(lambda q: loss(nf.apply(q, *args, **kwargs))))(pop)
    assert grads.species is pop.species and grads.population_size == pop.population_size
    for i, member in enumerate(nf.unstack(pop)):
        module = nf.to_module(member)
        named = dict(module.named_parameters())
        wanted = torch.autograd.grad(loss(module(*args, **kwargs)), [named[n] for n in pop.species.names],
                                     allow_unused=True)
        for name, g, w in zip(pop.species.names, grads.tensors, wanted):
            w = torch.zeros_like(g[i]) if w is None else w
            torch.testing.assert_close(g[i], w, rtol=1e-4, atol=atol, msg=lambda m: f"{name} member {i}: {m}")


def merges_match_hand_computation(base: nf.Particle, finetuned: list[nf.Particle]) -> None:
    """Soup and TIES against the same formulas written on the tensors."""
    soup = nf.merge.weighted_average(finetuned)  # uniform weights: a plain mean
    for i, name in enumerate(base.species.names):
        want = sum(f.tensors[i] for f in finetuned) / len(finetuned)
        torch.testing.assert_close(soup.tensors[i], want, rtol=1e-6, atol=1e-7, msg=lambda m: f"soup {name}: {m}")
    merged = nf.merge.ties(base, finetuned, density=0.5)
    checked = 0
    for i, name in enumerate(base.species.names):
        b = base.tensors[i]
        if b.numel() % 2 or not b.is_floating_point():
            continue  # keep = numel / 2 exactly, whatever rounding rule: no ambiguity
        taus = []
        for f in finetuned:
            tau = (f.tensors[i] - b).reshape(-1)
            keep = tau.abs().topk(tau.numel() // 2).indices
            trimmed = torch.zeros_like(tau)
            trimmed[keep] = tau[keep]
            taus.append(trimmed)
        tau = torch.stack(taus)
        sign = torch.sign(tau.sum(0))
        agree = (torch.sign(tau) == sign) & (tau != 0)
        count = agree.sum(0)
        mean = torch.where(count > 0, (tau * agree).sum(0) / count.clamp(min=1), torch.zeros_like(sign))
        torch.testing.assert_close(merged.tensors[i], b + mean.reshape(b.shape), rtol=1e-6, atol=1e-7,
                                   msg=lambda m: f"ties {name}: {m}")
        checked += 1
    assert checked > 0


def checkpoint_round_trips(tmp_path, pop: nf.Particle, make_module: Callable[[], nn.Module]) -> None:
    """``checkpoint.save``/``load`` bit for bit (whole and one member), and a ``state_dict`` file that
    a fresh module loads strictly (``load_state_dict(load_file(...))``) and that imports back."""
    path = tmp_path / "pop.safetensors"
    ck.save(path, {"pop": pop, "step": 3})
    back = ck.load(path, like={"pop": pop.species, "step": 0})
    assert tree_equal(back["pop"], pop) and back["step"] == 3
    assert tree_equal(ck.load(path, like=pop.species, at="pop", members=1), pop[1])
    member = pop[2]
    sd_path = tmp_path / "model.safetensors"
    ck.save_state_dict(sd_path, member)
    fresh = make_module()
    fresh.load_state_dict(load_file(str(sd_path)))  # strict
    named = dict(fresh.named_parameters())
    assert all(tensor_equal(named[n].detach(), t) for n, t in zip(pop.species.names, member.tensors))
    imported = ck.load_state_dict(sd_path, like=pop.species)
    assert tree_equal(imported, member.map(lambda t, cfg: t.clone()))


def nyto_wrapping_matches(module: nn.Module, p: nf.Particle, args: tuple, kwargs: dict | None = None,
                          get: Get = identity) -> None:
    """The legacy API on a wrapped module: ``0.5 * w + 0.5 * (w * 1.1)`` holds the particle expression's bits."""
    import nytorch as nyto

    class Wrapped(nyto.NytoModule):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *a: Any, **k: Any) -> Any:
            return self.inner(*a, **k)

    kwargs = kwargs or {}
    w = Wrapped(module)
    mid = 0.5 * w + 0.5 * (w * 1.1)
    q = 0.5 * p + 0.5 * (p * 1.1)
    named = dict(mid.inner.named_parameters())
    assert all(tensor_equal(named[n].detach(), t) for n, t in zip(p.species.names, q.tensors))
    with torch.no_grad():
        torch.testing.assert_close(get(mid(*args, **kwargs)), get(nf.apply(q, *args, **kwargs)), rtol=1e-5, atol=1e-6)
