"""Exceptions of the functional core.

Each one subclasses the built-in exception a caller would reach for first, so
``except ValueError`` / ``except KeyError`` keep working. Two of them are
both a ``ValueError`` and a ``TypeError`` (as numpy's ``AxisError`` is both a
``ValueError`` and an ``IndexError``): an operand of the right kind but the
wrong species or shape is fairly described by either.
"""

from __future__ import annotations


class SpeciesMismatchError(ValueError, TypeError):
    """Two particles of different (or diverging) species met in one operation."""


class PopulationSizeError(ValueError):
    """Two populations, or a population and a ``[N]`` vector, differ in size."""


class OperandError(TypeError):
    """An operand is neither a number, a 0-d tensor nor a particle."""


class OperandShapeError(ValueError, TypeError):
    """A tensor operand has a shape the operation cannot take."""


class OperatorResultError(ValueError, TypeError):
    """A custom operator (``map``/``zip_with``) returned the wrong thing."""


class UnknownNameError(KeyError):
    """A parameter name or edit path that the species does not have.

    ``KeyError`` quotes its message with ``repr``; this one prints it as is.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotAPopulationError(TypeError):
    """A population-only operation met a single particle."""


def describe(value: object) -> str:
    """A short description of ``value`` for error messages."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
