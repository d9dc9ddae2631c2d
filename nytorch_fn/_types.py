"""Type aliases shared by the functional core."""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch

#: A parameter's dotted path inside its module, e.g. ``"layer0.weight"``.
Name = str
#: Anything that may stand beside a particle in arithmetic: a Python real
#: number or a 0-d tensor (and, for populations, a ``[N]`` vector).
Scalar = Union[int, float, bool, torch.Tensor]
#: A mapping from parameter name to tensor.
TensorMap = Mapping[str, torch.Tensor]
#: ``fn(tensor, config) -> tensor``, the custom unary operator of ``Particle.map``.
UnaryFn = Callable[[torch.Tensor, "ParamConfig"], torch.Tensor]  # noqa: F821
#: ``fn(tensor, other, config) -> tensor``, the binary operator of ``Particle.zip_with``.
BinaryFn = Callable[[torch.Tensor, torch.Tensor, "ParamConfig"], torch.Tensor]  # noqa: F821
