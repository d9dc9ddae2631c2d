"""Model merging: combine particles of one species into one (soup, SLERP, task arithmetic, TIES, DARE).

Every operator is a pure function returning a new single particle; it works
tensor by tensor on operational floating-point parameters and takes every
other parameter from the first input (``base`` for the task-vector
operators). Inputs of different species raise ``SpeciesMismatchError``.

Example:
    >>> from nytorch_fn import merge
    >>> soup = merge.weighted_average([ft_a, ft_b, ft_c])
    >>> mid = merge.slerp(ft_a, ft_b, 0.5)
    >>> merged = merge.ties(base, [ft_a, ft_b, ft_c], density=0.2)
"""

from ._merge import dare as dare
from ._merge import slerp as slerp
from ._merge import task_arithmetic as task_arithmetic
from ._merge import ties as ties
from ._merge import weighted_average as weighted_average

__all__ = ["dare", "slerp", "task_arithmetic", "ties", "weighted_average"]
