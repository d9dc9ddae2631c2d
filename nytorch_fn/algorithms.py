"""Population algorithms: swarm, evolutionary and hybrid gradient/swarm search, vectorised.

Every algorithm is an immutable object holding only hyperparameters
(validated at construction, keyword-only) with pure methods over an
immutable ``NamedTuple`` state (a pytree)::

    algo = APSO(alpha=0.3, beta=0.5, maximize=False)
    state = algo.init(population)
    population = algo.ask(state)                  # OpenAIES.ask also returns a state
    state = algo.tell(state, fitness, generator=g)
    # or: state, fitness = algo.step(state, fitness_fn, generator=g)

Conventions shared by all of them:

- **Fitness** is a ``[N]`` real tensor, one value per member; **higher is
  better** (as ``nytorch_fn.best``) unless the algorithm was built with
  ``maximize=False`` (then pass a loss). **NaN counts as the worst value**:
  a diverged member is never the best nor a parent, and is the first to be
  replaced; NaN everywhere is a ``ValueError``. A fitness of the wrong shape
  is a ``PopulationSizeError`` (a ``ValueError``) naming both shapes.
- **Randomness** comes from an explicit ``generator=`` (a ``torch.Generator``;
  torch's global RNG when None); equal seeds give equal runs. Draws are made
  on the generator's device and moved to the population's, so a CPU
  generator drives a CUDA population (with the same draws as on CPU).
- **Config-aware**: only operational floating-point parameters are moved,
  bred or copied; non-operational ones are left as they are (per their
  ``clone`` setting).
- **Vectorised**: one stacked op (or one ``vmap``) per tensor, never a
  Python loop over members. Inputs are never modified.
"""

from ._algorithms._apso import APSO as APSO
from ._algorithms._apso import APSOState as APSOState
from ._algorithms._es import ESState as ESState
from ._algorithms._es import OpenAIES as OpenAIES
from ._fitness import centered_ranks as centered_ranks
from ._algorithms._ga import GAState as GAState
from ._algorithms._ga import GeneticAlgorithm as GeneticAlgorithm
from ._algorithms._hybrid import Hybrid as Hybrid
from ._algorithms._hybrid import HybridState as HybridState
from ._algorithms._pbt import PBT as PBT
from ._algorithms._pbt import PBTState as PBTState

__all__ = [
    "APSO",
    "APSOState",
    "ESState",
    "GAState",
    "GeneticAlgorithm",
    "Hybrid",
    "HybridState",
    "OpenAIES",
    "PBT",
    "PBTState",
    "centered_ranks",
]
