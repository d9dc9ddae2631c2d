"""Functional optimisers (``init``/``update`` pairs) over particles and populations."""

from ._optim import AdamState as AdamState
from ._optim import ClipUpState as ClipUpState
from ._optim import GradientTransformation as GradientTransformation
from ._optim import SGDState as SGDState
from ._optim import adam as adam
from ._optim import apply_updates as apply_updates
from ._optim import clipup as clipup
from ._optim import sgd as sgd

__all__ = ["AdamState", "ClipUpState", "GradientTransformation", "SGDState", "adam", "apply_updates", "clipup", "sgd"]
