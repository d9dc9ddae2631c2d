"""Checkpoints: save and load particles, populations and optimiser/algorithm states.

One safetensors file per checkpoint with a JSON manifest in its header
(structure, configs, versions, a SHA-256 per tensor and per block of
population members); written atomically; loading never unpickles, checks
everything against a caller-given template and reads only what it returns:

    from nytorch_fn import checkpoint
    checkpoint.save("step100.safetensors", {"params": pop, "opt": state, "step": 100})
    restored = checkpoint.load("step100.safetensors", like={"params": pop.species, "opt": state, "step": 0})
    member = checkpoint.load("step100.safetensors", like=pop.species, at="params", members=3)
    manifest = checkpoint.read_manifest("step100.safetensors")       # the header only

Plain ``state_dict`` files (``model.safetensors``) for one particle:

    checkpoint.save_state_dict("model.safetensors", soup)   # module.load_state_dict(load_file(...)) reads it
    p = checkpoint.load_state_dict("model.safetensors", like=module)
"""

from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import CheckpointMismatchError as CheckpointMismatchError
from ._checkpoint import load as load
from ._checkpoint import load_state_dict as load_state_dict
from ._checkpoint import load_tensors as load_tensors
from ._checkpoint import read_manifest as read_manifest
from ._checkpoint import save as save
from ._checkpoint import save_state_dict as save_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "load",
    "load_state_dict",
    "load_tensors",
    "read_manifest",
    "save",
    "save_state_dict",
]
