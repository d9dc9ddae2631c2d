"""nytorch: the legacy particle API, drop-in, on the functional core ``nytorch_fn``.

``import nytorch as nyto`` keeps legacy code running: subclass
``nyto.NytoModule`` and use particle arithmetic (``0.5 * net_a + 0.5 * net_b``),
products, ``touch()``, ``ParamConfig`` and ``ParticleModule`` as before. Each
species' version data lives in pyrsistent maps and a ``nytorch_fn.Species``
version chain; particle arithmetic runs on ``nytorch_fn.Particle``.
"""

from nytorch import kernel
from nytorch import mtype
from nytorch import utils
from nytorch import base
from nytorch import particle_updater
from nytorch import version_updater
from nytorch import module
from nytorch import particle_module
from nytorch.module import NytoModule
from nytorch.particle_module import GetNytoModule, ParticleModule

__all__ = [
    "GetNytoModule",
    "NytoModule",
    "ParticleModule",
    "base",
    "kernel",
    "module",
    "mtype",
    "particle_module",
    "particle_updater",
    "utils",
    "version_updater",
]
