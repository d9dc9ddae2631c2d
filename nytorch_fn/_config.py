"""Per-parameter configuration of particle operations."""

from __future__ import annotations

from typing import Any, Mapping

import attrs
from pyrsistent import PMap, pmap


def _to_pmap(value: Mapping[str, Any] | None) -> PMap:
    if value is None:
        return pmap()
    if isinstance(value, PMap):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"ParamConfig.tags: expected a mapping of labels, got {type(value).__name__} {value!r}"
        )
    return pmap(value)


def _check_bool(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(
            f"ParamConfig.{attribute.name}: expected a bool, got {type(value).__name__} {value!r}"
        )


@attrs.frozen
class ParamConfig:
    """How particle operations treat one parameter (an ``attrs`` frozen record).

    Changed with ``attrs.evolve`` (or, for a species' parameters,
    ``Species.with_config``); never mutated.

    Attributes:
        operational: take part in arithmetic and random draws (``randn``,
            ``rand``, optimisers, algorithms, merges). When False the result
            takes the parameter from the left operand instead; ``map`` and
            ``zip_with`` see it and decide for themselves.
        clone: for a non-operational parameter, give the result a copy (True)
            or the very same tensor (False).
        tags: user labels (a pyrsistent map; any mapping is converted), e.g.
            ``{"is_weight": True}``.

    Raises:
        TypeError: ``operational`` or ``clone`` is not a bool, ``tags`` not a mapping.

    Examples:
        >>> import attrs
        >>> cfg = attrs.evolve(nf.ParamConfig(), operational=False)
        >>> cfg.operational, cfg.clone
        (False, True)
        >>> nf.ParamConfig(tags={"is_weight": True}).tags["is_weight"]
        True
    """

    operational: bool = attrs.field(default=True, validator=_check_bool)
    clone: bool = attrs.field(default=True, validator=_check_bool)
    tags: PMap = attrs.field(factory=pmap, converter=_to_pmap)


DEFAULT_CONFIG = ParamConfig()
