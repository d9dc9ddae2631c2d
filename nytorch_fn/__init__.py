"""nytorch-fn: arithmetic on whole PyTorch models, functionally.

A model's parameters are an immutable pytree (a ``Particle``); its structure
is an immutable ``Species`` in a persistent version chain; forward passes go
through ``torch.func.functional_call``; a population is one stacked particle
evaluated with ``torch.func.vmap``.
"""

from . import _pytree as _pytree  # registers Particle as a pytree node
from ._config import ParamConfig as ParamConfig
from ._errors import NotAPopulationError as NotAPopulationError
from ._errors import OperandError as OperandError
from ._errors import OperandShapeError as OperandShapeError
from ._errors import OperatorResultError as OperatorResultError
from ._errors import PopulationSizeError as PopulationSizeError
from ._errors import SpeciesMismatchError as SpeciesMismatchError
from ._errors import UnknownNameError as UnknownNameError
from ._migrate import migrate as migrate
from ._module import apply as apply
from ._module import apply_with_buffers as apply_with_buffers
from ._module import particle as particle
from ._module import to_module as to_module
from ._particle import Particle as Particle
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
    "migrate",
    "particle",
    "to_module",
]
