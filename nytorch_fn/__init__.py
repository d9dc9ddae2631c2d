"""nytorch-fn: arithmetic on whole PyTorch models, functionally.

A model's parameters are an immutable pytree (a ``Particle``); its structure
is an immutable ``Species`` in a persistent version chain; forward passes go
through ``torch.func.functional_call``; a population is one stacked particle
evaluated with ``torch.func.vmap``.

Examples:
    >>> import nytorch_fn as nf
    >>> p = nf.particle(nn.Linear(4, 2))                 # capture any module
    >>> q = p.randn(generator=torch.Generator().manual_seed(0))
    >>> nf.apply(0.5 * p + 0.5 * q, torch.ones(3, 4)).shape
    torch.Size([3, 2])
    >>> pop = nf.stack([p, q])                            # a population of 2
    >>> nf.vmap_apply(pop, torch.ones(3, 4)).shape
    torch.Size([2, 3, 2])

The documentation site (``mkdocs serve``) has the guides and the API reference.
"""

from . import _pytree as _pytree  # registers Particle as a pytree node
from . import algorithms as algorithms
from . import checkpoint as checkpoint
from . import merge as merge
from . import optim as optim
from ._config import ParamConfig as ParamConfig
from ._errors import NotAPopulationError as NotAPopulationError
from ._errors import OperandError as OperandError
from ._errors import OperandShapeError as OperandShapeError
from ._errors import OperatorResultError as OperatorResultError
from ._errors import PopulationSizeError as PopulationSizeError
from ._errors import SpeciesMismatchError as SpeciesMismatchError
from ._errors import UnknownNameError as UnknownNameError
from ._module import apply as apply
from ._module import apply_with_buffers as apply_with_buffers
from ._module import particle as particle
from ._module import to_module as to_module
from ._particle import Particle as Particle
from ._particle import lerp as lerp
from ._particle import lincomb as lincomb
from ._particle import migrate as migrate
from ._population import best as best
from ._population import concat as concat
from ._population import init_population as init_population
from ._population import mean as mean
from ._population import random_population as random_population
from ._population import stack as stack
from ._population import stack_buffers as stack_buffers
from ._population import stack_modules as stack_modules
from ._population import to_modules as to_modules
from ._population import top_k as top_k
from ._population import unstack as unstack
from ._population import vmap_apply as vmap_apply
from ._population import vmap_apply_with as vmap_apply_with
from ._population import weighted_mean as weighted_mean
from ._species import AddBuffer as AddBuffer
from ._species import AddModule as AddModule
from ._species import AddParam as AddParam
from ._species import Remove as Remove
from ._species import SetConfig as SetConfig
from ._species import SetNone as SetNone
from ._species import Species as Species

__version__ = "0.1.0"

__all__ = [
    "AddBuffer",
    "AddModule",
    "AddParam",
    "NotAPopulationError",
    "OperandError",
    "OperandShapeError",
    "OperatorResultError",
    "ParamConfig",
    "Particle",
    "PopulationSizeError",
    "Remove",
    "SetConfig",
    "SetNone",
    "Species",
    "SpeciesMismatchError",
    "UnknownNameError",
    "apply",
    "apply_with_buffers",
    "best",
    "concat",
    "init_population",
    "lerp",
    "lincomb",
    "mean",
    "migrate",
    "particle",
    "random_population",
    "stack",
    "stack_buffers",
    "stack_modules",
    "to_module",
    "to_modules",
    "top_k",
    "unstack",
    "vmap_apply",
    "vmap_apply_with",
    "weighted_mean",
]
