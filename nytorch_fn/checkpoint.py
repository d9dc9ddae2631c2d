"""Checkpoints: save and load particles, populations and optimiser/algorithm states.

One safetensors file per checkpoint (tensors) with a JSON manifest in its
header (structure, configs, versions, checksum); written atomically; loading
never unpickles and checks everything against a caller-given template::

    from nytorch_fn import checkpoint
    checkpoint.save("step100.safetensors", {"params": pop, "opt": state, "step": 100})
    restored = checkpoint.load("step100.safetensors", like={"params": pop.species, "opt": state, "step": 0})
"""

from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import CheckpointMismatchError as CheckpointMismatchError
from ._checkpoint import load as load
from ._checkpoint import read_manifest as read_manifest
from ._checkpoint import save as save

__all__ = ["CheckpointError", "CheckpointMismatchError", "load", "read_manifest", "save"]
