"""Exceptions of the functional core.

Each one subclasses the built-in exception a caller would reach for first, so
``except ValueError`` / ``except KeyError`` keep working. Two of them are
both a ``ValueError`` and a ``TypeError`` (as numpy's ``AxisError`` is both a
``ValueError`` and an ``IndexError``): an operand of the right kind but the
wrong species or shape is fairly described by either.
"""

from __future__ import annotations


class SpeciesMismatchError(ValueError, TypeError):
    """Two particles of different (or diverging) species met in one operation.

    Both a ``ValueError`` and a ``TypeError``. Particles of two versions of
    one species are not a mismatch: the older one is migrated first.

    Examples:
        >>> p, q = nf.particle(nn.Linear(2, 1)), nf.particle(nn.Linear(2, 1))
        >>> try:
        ...     p + q                         # two captures: two species
        ... except nf.SpeciesMismatchError as error:
        ...     print("species" in str(error))
        True
    """


class PopulationSizeError(ValueError):
    """Two populations, or a population and a ``[N]`` vector, differ in size.

    The message names both sizes.
    """


class OperandError(TypeError):
    """An operand is neither a number, a 0-d tensor nor a particle (e.g. None, a str, a list)."""


class OperandShapeError(ValueError, TypeError):
    """A tensor operand has a shape the operation cannot take.

    A single particle takes 0-d tensors; a population also takes ``[N]``
    vectors. Both a ``ValueError`` and a ``TypeError``.
    """


class OperatorResultError(ValueError, TypeError):
    """A custom operator (``map``/``zip_with``) returned the wrong thing.

    Not a tensor, or another shape or dtype than the parameter it was given;
    the message names the parameter.
    """


class UnknownNameError(KeyError):
    """A parameter name or edit path that the species does not have (a ``KeyError``).

    ``KeyError`` quotes its message with ``repr``; this one prints it as is.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotAPopulationError(TypeError):
    """A population-only operation met a single particle, or a single-particle one a population.

    ``len()``, indexing, ``vmap_apply``, ``best``, ... need a population;
    ``apply`` and ``to_module`` need a single particle (the message names the
    population counterpart).
    """


def describe(value: object) -> str:
    """A short description of ``value`` for error messages."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
