"""Functional optimisers (``init``/``update`` pairs) over particles and populations.

An optimiser is a ``GradientTransformation(init, update)``, as in optax:
``state = opt.init(params)``, ``updates, state = opt.update(grads, state,
params)``, ``params = apply_updates(params, updates)``. ``params`` may be a
single particle or a population of ``N`` (``[N, ...]`` per tensor); a
learning rate may be a Python number or a ``[N]`` tensor, one per member.
States are NamedTuples of particles and tensors (pytrees that
``nytorch_fn.checkpoint`` saves). Non-operational parameters are never
changed.

In place only at a named boundary: ``update(..., donate=True)`` may write
the new state into the old state's buffers and ``apply_updates(params,
updates, donate=True)`` the new parameters into ``params``' (as JAX's
``donate_argnums``); the donated object must not be used afterwards. The
values are the same bits either way.

Numerics: ``adam`` runs ``torch.optim.Adam``'s operations in its order, so
its steps equal torch's bit for bit on float32/float64 CPU tensors. ``sgd``
forms ``-lr * g`` and adds it, where ``torch.optim.SGD`` fuses the multiply
into the add: the two can differ in the last bit.
"""

from ._optim import AdamState as AdamState
from ._optim import ClipUpState as ClipUpState
from ._optim import GradientTransformation as GradientTransformation
from ._optim import SGDState as SGDState
from ._optim import adam as adam
from ._optim import apply_updates as apply_updates
from ._optim import clipup as clipup
from ._optim import sgd as sgd

__all__ = ["AdamState", "ClipUpState", "GradientTransformation", "SGDState", "adam", "apply_updates", "clipup", "sgd"]
