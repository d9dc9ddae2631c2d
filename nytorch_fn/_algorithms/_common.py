"""Small pieces the algorithm kernels share: validators, draws on the generator's device, per-tensor rebuilding."""

from __future__ import annotations

from typing import Any, Callable

import attrs
import torch

from .._checks import check_bool, check_int, check_real
from .._errors import describe
from .._particle import Particle, assemble, build, operational, writable


# -- attrs validators (each names the class and the field) ---------------------------


def _name(instance: Any, attribute: attrs.Attribute) -> str:
    return f"{type(instance).__name__}: {attribute.name}"


def v_flag(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_bool(value, _name(instance, attribute))


def v_positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, _name(instance, attribute), low=0.0, low_open=True)


def v_nonneg(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, _name(instance, attribute), low=0.0)


def v_unit(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, _name(instance, attribute), low=0.0, high=1.0)


def v_decay(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    check_real(value, _name(instance, attribute), low=0.0, high=1.0, low_open=True)


def v_int(low: int) -> Callable:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        check_int(value, _name(instance, attribute), low=low)

    return check


def v_choice(choices: tuple[str, ...]) -> Callable:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{_name(instance, attribute)} expects one of {list(choices)}, got {value!r}")

    return check


def v_callable(what: str) -> Callable:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not callable(value):
            raise TypeError(f"{_name(instance, attribute)} expects {what}, got {describe(value)}")

    return check


def v_optional_callable(what: str) -> Callable:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not callable(value):
            raise TypeError(f"{_name(instance, attribute)} expects {what} or None, got {describe(value)}")

    return check


def maximize_field() -> Any:
    """``maximize: bool = True``, keyword-only, validated."""
    return attrs.field(default=True, kw_only=True, validator=v_flag)


# -- tensors -------------------------------------------------------------------------


def rebuild(
    pop: Particle, fn: Callable[[int, torch.Tensor], torch.Tensor], *, population: int | None = None
) -> Particle:
    """A particle like ``pop`` with ``fn(position, tensor)`` for every operational
    parameter; non-operational ones are taken from ``pop`` as their config says."""
    sp = pop.species
    leaves = pop.tensors
    results = [fn(i, leaves[i]) for i in sp.layout().op]
    return build(sp, assemble(sp, leaves, results, population))


def in_place_ok(p: Particle, donate: bool, *others: Any) -> bool:
    """Whether ``p``'s operational tensors may be written in place (donation granted and possible)."""
    if not donate:
        return False
    xs = operational(p)
    return writable(xs, [x.shape for x in xs], [list(others)])


def member_view(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A ``[N]`` vector shaped to broadcast against a ``[N, ...]`` tensor, in its dtype."""
    return v.to(device=t.device, dtype=t.dtype).view(v.shape[0], *([1] * (t.dim() - 1)))


def device_of(p: Particle) -> torch.device:
    return p.tensors[0].device if p.tensors else torch.device("cpu")


def draw(kind: str, shape: Any, generator: torch.Generator | None, *, device: Any, dtype: Any = None,
         high: int = 0) -> torch.Tensor:
    """``torch.rand``/``randn``/``randint``/``randperm`` on the generator's device (so a CPU
    generator drives a CUDA population reproducibly), then moved to ``device``."""
    gdev = generator.device if generator is not None else device
    if kind == "rand":
        out = torch.rand(shape, generator=generator, dtype=dtype, device=gdev)
    elif kind == "randn":
        out = torch.randn(shape, generator=generator, dtype=dtype, device=gdev)
    elif kind == "randint":
        out = torch.randint(0, high, shape, generator=generator, device=gdev)
    elif kind == "randperm":
        out = torch.randperm(high, generator=generator, device=gdev)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return out.to(device)

