"""Pytree registration of our own types (and only ours), in one place."""

from __future__ import annotations

from typing import Any

import torch.utils._pytree as pytree

from ._particle import Particle, build
from ._species import Species


def _flatten(p: Particle) -> tuple[list[Any], Species]:
    return list(p.tensors), p.species


def _unflatten(leaves: Any, species: Species) -> Particle:
    return build(species, leaves)


def _flatten_with_keys(p: Particle) -> tuple[list[tuple[Any, Any]], Species]:
    return [(pytree.MappingKey(n), t) for n, t in zip(p.species.names, p.tensors)], p.species


pytree.register_pytree_node(
    Particle,
    _flatten,
    _unflatten,
    serialized_type_name="nytorch_fn.Particle",
    flatten_with_keys_fn=_flatten_with_keys,
)
