"""Comparison helpers and small models for the tests.

Never compare records holding tensors with ``==``: these helpers compare
particles tensor by tensor, in ``species.names`` order.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from nytorch_fn import Particle


def same_structure(a: Particle, b: Particle) -> bool:
    """Same parameter names, shapes and dtypes, in the same order."""
    sa, sb = a.species, b.species
    if sa.names != sb.names:
        return False
    return all(
        sa.shapes[n] == sb.shapes[n] and sa.dtypes[n] == sb.dtypes[n] for n in sa.names
    )


def tensor_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Same shape, dtype and values, bit for bit (NaN equals NaN)."""
    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
        return False
    x, y = x.detach(), y.detach()
    if x.is_floating_point() or x.is_complex():
        return torch.equal(x.isnan(), y.isnan()) and torch.equal(_nan0(x), _nan0(y))
    return torch.equal(x, y)


def tree_equal(a: Particle, b: Particle) -> bool:
    """Same species object and bit-identical tensors (NaN equals NaN)."""
    if a.species is not b.species or len(a.tensors) != len(b.tensors):
        return False
    return all(tensor_equal(x, y) for x, y in zip(a.tensors, b.tensors))


def _nan0(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t.isnan(), torch.zeros_like(t), t)


def allclose(a: Particle, b: Particle, *, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Same structure and tensors close elementwise (NaN equals NaN)."""
    if not same_structure(a, b):
        return False
    return all(
        torch.allclose(x.double(), y.double(), rtol=rtol, atol=atol, equal_nan=True)
        for x, y in zip(a.tensors, b.tensors)
    )


def tensors_allclose(xs: Iterable[torch.Tensor], ys: Iterable[torch.Tensor], **kw: Any) -> bool:
    xs, ys = list(xs), list(ys)
    return len(xs) == len(ys) and all(
        x.shape == y.shape and torch.allclose(x, y, equal_nan=True, **kw) for x, y in zip(xs, ys)
    )


class Snapshot:
    """Records the identity and contents of every tensor of some objects, to check later
    that nothing was modified (``assert snap.unchanged()``)."""

    def __init__(self, *objs: Any) -> None:
        self.items = []
        for obj in objs:
            for t in _tensors_of(obj):
                self.items.append((t, t.detach().clone(), t._version))
        self.ids = [id(o) for o in objs]
        self.objs = objs
        self.leaves = [tuple(o.tensors) if isinstance(o, Particle) else None for o in objs]

    def unchanged(self) -> bool:
        for t, copy, version in self.items:
            if t._version != version:
                return False
            if not tensor_equal(t.detach(), copy):
                return False
        for o, leaves in zip(self.objs, self.leaves):
            if leaves is not None and (len(o.tensors) != len(leaves) or any(
                    x is not y for x, y in zip(o.tensors, leaves))):
                return False
        return True


def _tensors_of(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Particle):
        out = list(obj.tensors)
        out += [b for b in obj.species.buffers.values() if b is not None]
        return out
    if isinstance(obj, nn.Module):
        return list(obj.parameters()) + list(obj.buffers())
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors_of(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors_of(v)]
    return []


def mlp(seed: int = 0, sizes: tuple[int, ...] = (4, 8, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class TiedLM(nn.Module):
    """An embedding and an output layer sharing one weight, and a plain attribute."""

    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.scale = 2.0
        self.label = "tied"

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(idx) * self.scale)


def species_fingerprint(species: Any) -> dict:
    """Everything observable about a species, as plain Python values and tensor copies
    (to check later, with ``fingerprints_equal``, that an edit left it as it was)."""
    skel = species.skeleton
    return {
        "names": species.names,
        "config": {n: species.config[n] for n in species.config},
        "shapes": {n: tuple(species.shapes[n]) for n in species.shapes},
        "dtypes": dict(species.dtypes.items()),
        "requires_grad": dict(species.requires_grad.items()),
        "buffer_names": species.buffer_names,
        "buffers": {n: (None if b is None else (b, b.clone(), b._version)) for n, b in species.buffers.items()},
        "nonpersistent": set(species.nonpersistent),
        "tied": dict(species.tied.items()),
        "modules": set(species.modules),
        "skeleton_params": [(n, tuple(t.shape), t.dtype) for n, t in skel.named_parameters(remove_duplicate=False)],
        "skeleton_buffers": [(n, tuple(t.shape)) for n, t in skel.named_buffers(remove_duplicate=False)],
        "skeleton_modules": [(n, id(m)) for n, m in skel.named_modules(remove_duplicate=False)],
        "skeleton_slots": [
            (n, tuple(m._parameters), tuple(m._buffers), tuple(m._modules))
            for n, m in skel.named_modules(remove_duplicate=False)
        ],
        "parent": species.parent,
        "edit": species.edit,
        "version": species.version,
    }


def fingerprints_equal(a: dict, b: dict) -> bool:
    for key in a:
        if key == "buffers":
            if a[key].keys() != b[key].keys():
                return False
            for n in a[key]:
                x, y = a[key][n], b[key][n]
                if (x is None) != (y is None):
                    return False
                if x is not None and (x[0] is not y[0] or x[2] != y[0]._version or not tensor_equal(x[1], y[0])):
                    return False
        elif key in ("parent", "edit"):
            if a[key] is not b[key]:
                return False
        elif a[key] != b[key]:
            return False
    return True
