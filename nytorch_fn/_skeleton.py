"""Module skeletons: the structure of a module with its tensors on ``meta``.

A skeleton is captured once and never mutated afterwards. Structural edits
build a new skeleton by copying only the modules on the path to the edit
(``copy_path``) and sharing every other submodule with the old one, so an
edit costs the depth of the path, not the size of the model.
"""

from __future__ import annotations

import copy
from typing import Iterable, overload

import torch
from torch import nn


@overload
def meta_like(tensor: torch.Tensor) -> torch.Tensor: ...


@overload
def meta_like(tensor: None) -> None: ...


def meta_like(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A ``meta`` tensor with the shape and dtype of ``tensor`` (a Parameter stays one)."""
    if tensor is None:
        return None
    meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(meta, requires_grad=tensor.requires_grad)
    return meta


def capture_skeleton(module: nn.Module) -> nn.Module:
    """Deep-copy ``module`` with every parameter and buffer replaced by a meta tensor.

    No tensor data is copied: the memo maps each parameter and buffer to its
    meta counterpart before ``copy.deepcopy`` sees it, so references to them
    from anywhere in the module (tied weights, an LSTM's ``_flat_weights``)
    point at the same meta tensor in the copy.
    """
    memo: dict[int, object] = {}
    for sub in module.modules():
        for tensor in list(sub._parameters.values()) + list(sub._buffers.values()):
            if tensor is not None and id(tensor) not in memo:
                memo[id(tensor)] = meta_like(tensor)
    try:
        return copy.deepcopy(module, memo)
    except Exception as error:  # pragma: no cover - depends on user modules
        raise TypeError(
            f"cannot capture {type(module).__name__}: copy.deepcopy of its structure failed ({error})"
        ) from error


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing children and tensors but owning its containers."""
    new = copy.copy(module)
    state = new.__dict__
    for key, value in list(state.items()):
        if isinstance(value, (dict, list, set)):
            state[key] = copy.copy(value)
    return new


def split(path: str) -> tuple[str, str]:
    """``"a.b.c"`` -> ``("a.b", "c")``; ``"c"`` -> ``("", "c")``."""
    prefix, _, leaf = path.rpartition(".")
    return prefix, leaf


def copy_path(root: nn.Module, prefix: str) -> tuple[nn.Module, nn.Module]:
    """Copy the modules from ``root`` down to ``prefix``; return (new root, new module at prefix)."""
    new_root = _shallow_copy(root)
    current = new_root
    if prefix:
        for part in prefix.split("."):
            child = current._modules[part]
            if child is None:
                raise KeyError(part)
            copied = _shallow_copy(child)
            current._modules[part] = copied
            current = copied
    return new_root, current


def get_module(root: nn.Module, prefix: str) -> nn.Module:
    """The submodule at ``prefix`` ("" is the root); ``KeyError`` if there is none."""
    current = root
    if prefix:
        for part in prefix.split("."):
            child = current._modules.get(part)
            if child is None:
                raise KeyError(prefix)
            current = child
    return current


def module_paths(module: nn.Module) -> Iterable[str]:
    """Every submodule path of ``module`` (the root is ``""``), duplicates removed."""
    for name, _ in module.named_modules(remove_duplicate=True):
        yield name
