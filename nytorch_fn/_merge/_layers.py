"""Layer structure read from tensor names (no architecture files needed).

A tensor's layer is the first all-digit component of its dotted name that is
not the last component: ``model.layers.12.mlp.up_proj.weight`` is layer 12 of
the stack ``model.layers``; ``3.weight`` (an ``nn.Sequential``) is layer 3 of
the stack ``""``. mergekit's architecture tables say the same for the models
it knows; this rule also covers models it does not.
"""

from __future__ import annotations

import re
from typing import Iterable

_EMBED = re.compile(r"(^|\.)(embed[a-z_]*|wte|wpe|tok_embeddings|word_embeddings|embeddings)(\.|$)")


def split_layer(name: str) -> tuple[str, int, str] | None:
    """``(stack, index, rest)`` or None for a tensor outside any stack."""
    parts = name.split(".")
    for j, c in enumerate(parts[:-1]):
        if c.isdigit():
            return ".".join(parts[:j]), int(c), ".".join(parts[j + 1 :])
    return None


def join_layer(stack: str, index: int, rest: str) -> str:
    return f"{stack}.{index}.{rest}" if stack else f"{index}.{rest}"


def is_embedding(name: str) -> bool:
    """Non-layer tensors that sit before the layer stack (taken from the first slice)."""
    return _EMBED.search(name) is not None


def layer_positions(names: Iterable[str]) -> dict[str, float]:
    """mergekit's gradient position ``t`` of every tensor: ``i / (L - 1)`` for layer ``i``
    of a stack of ``L`` layers (1 for a stack of one), 0 outside stacks."""
    counts: dict[str, int] = {}
    for n in names:
        s = split_layer(n)
        if s is not None:
            counts[s[0]] = max(counts.get(s[0], 0), s[1] + 1)
    out = {}
    for n in names:
        s = split_layer(n)
        if s is None:
            out[n] = 0.0
        else:
            L = counts[s[0]]
            out[n] = s[1] / (L - 1) if L > 1 else 1.0
    return out
