"""Population algorithms: swarm, evolutionary and hybrid search over particles, one protocol for all.

Every algorithm is an immutable object of hyperparameters (``attrs``
frozen, keyword-only, validated at construction) with pure methods over an
immutable ``NamedTuple`` state (a pytree that ``nytorch_fn.checkpoint``
saves), so switching algorithms changes one line (here minimising a loss):

    >>> def loss(pop):                                    # [N]: the squared distance to 1
    ...     return sum(((t - 1) ** 2).flatten(1).sum(1) for t in pop.tensors)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = nf.particle(nn.Linear(2, 1)).randn(generator=g)   # a centre (3 searched values)
    >>> algo = OpenAIES(population_size=64, sigma=0.1, maximize=False)
    >>> state = algo.init(x, generator=g)                 # x: the centre, or the initial population
    >>> pop, state = algo.ask(state, generator=g)         # N members
    >>> state = algo.tell(state, pop, loss(pop), generator=g)   # fitness [N]
    >>> state, fitness = algo.step(state, loss, generator=g)
    >>> state, history = algo.run(state, loss, 100, generator=g)   # progress=True: a progress bar
    >>> state.generation, pop.population_size, fitness.shape, history.best_fitness.shape
    (102, 64, torch.Size([64]), torch.Size([100]))
    >>> bool(state.best_fitness < 0.01)                   # state.best: the best member so far
    True

Conventions shared by all of them:

- **Fitness** is ``[N]`` real (``[N, M]`` multi-objective), **higher is
  better** unless the algorithm was built with ``maximize=False`` (then pass
  a loss). **NaN counts as the worst**: a diverged member is never the best
  nor a parent; NaN everywhere is a ``ValueError``. A fitness of the wrong
  shape is a ``PopulationSizeError`` naming both shapes.
- **Shaping** (``identity``, ``centered_ranks``, ``z_score``,
  ``normalized``, ``compose``) is one composable piece: algorithms that
  shape take ``shaping=``.
- **Search spaces**: ``ravel``/``unravel`` (particle <-> ``[P]``, population
  <-> ``[N, P]``), ``uniform_population`` inside bounds, and ``bounds=`` with
  ``bound_handling="clip" | "reflect"`` in the algorithms that move members.
- **Randomness** comes from an explicit ``generator=`` (torch's global RNG
  when None); equal seeds give equal runs.
- **Config-aware**: only operational floating-point parameters are searched.
- **One collective interface**: ``nytorch_fn.distributed.sharded(algo)``
  runs any of them over ``torch.distributed`` with the single-process results.

``ALGORITHMS`` maps each algorithm's name to its class.
"""

from ._algorithms._apso import APSO as APSO
from ._algorithms._apso import APSOState as APSOState
from ._algorithms._base import Algorithm as Algorithm
from ._algorithms._base import Collective as Collective
from ._algorithms._base import History as History
from ._algorithms._base import LocalCollective as LocalCollective
from ._algorithms._es import ESState as ESState
from ._algorithms._es import OpenAIES as OpenAIES
from ._algorithms._ga import GAState as GAState
from ._algorithms._ga import GeneticAlgorithm as GeneticAlgorithm
from ._algorithms._hybrid import Hybrid as Hybrid
from ._algorithms._hybrid import HybridState as HybridState
from ._algorithms._pbt import PBT as PBT
from ._algorithms._pbt import PBTState as PBTState
from ._algorithms._cem import CEM as CEM
from ._algorithms._cma import CMAES as CMAES
from ._algorithms._cma import CMAESState as CMAESState
from ._algorithms._cma import LMMAES as LMMAES
from ._algorithms._cma import LMMAESState as LMMAESState
from ._algorithms._cma import SepCMAES as SepCMAES
from ._algorithms._cma import SepCMAESState as SepCMAESState
from ._algorithms._cma import cma_population_size as cma_population_size
from ._algorithms._restarts import BIPOP as BIPOP
from ._algorithms._restarts import BIPOPState as BIPOPState
from ._algorithms._restarts import IPOP as IPOP
from ._algorithms._restarts import IPOPState as IPOPState
from ._algorithms._cem import CEMState as CEMState
from ._algorithms._de import DE as DE
from ._algorithms._de import DEState as DEState
from ._algorithms._nes import SNES as SNES
from ._algorithms._nes import SNESState as SNESState
from ._algorithms._nes import XNES as XNES
from ._algorithms._nes import XNESState as XNESState
from ._fitness import nes_utilities as nes_utilities
from ._algorithms._nsga2 import NSGA2 as NSGA2
from ._algorithms._nsga2 import NSGA2State as NSGA2State
from ._algorithms._pgpe import PGPE as PGPE
from ._algorithms._pgpe import PGPEState as PGPEState
from ._algorithms._pso import PSO as PSO
from ._algorithms._pso import PSOState as PSOState
from ._algorithms._space import enforce_bounds as enforce_bounds
from ._algorithms._space import ravel as ravel
from ._algorithms._space import ravel_size as ravel_size
from ._algorithms._space import uniform_population as uniform_population
from ._algorithms._space import unravel as unravel
from ._fitness import centered_ranks as centered_ranks
from ._fitness import compose as compose
from ._fitness import identity as identity
from ._fitness import normalized as normalized
from ._fitness import z_score as z_score

#: name -> class of every algorithm that follows the protocol (one line each).
ALGORITHMS: dict[str, type] = {}
ALGORITHMS["APSO"] = APSO
ALGORITHMS["GeneticAlgorithm"] = GeneticAlgorithm
ALGORITHMS["Hybrid"] = Hybrid
ALGORITHMS["OpenAIES"] = OpenAIES
ALGORITHMS["PBT"] = PBT
ALGORITHMS["SNES"] = SNES
ALGORITHMS["XNES"] = XNES
ALGORITHMS["PGPE"] = PGPE
ALGORITHMS["CEM"] = CEM
ALGORITHMS["DE"] = DE
ALGORITHMS["PSO"] = PSO
ALGORITHMS["NSGA2"] = NSGA2
ALGORITHMS["CMAES"] = CMAES
ALGORITHMS["SepCMAES"] = SepCMAES
ALGORITHMS["LMMAES"] = LMMAES
ALGORITHMS["IPOP"] = IPOP
ALGORITHMS["BIPOP"] = BIPOP

__all__ = [
    "ALGORITHMS",
    "APSO",
    "APSOState",
    "Algorithm",
    "BIPOP",
    "BIPOPState",
    "CEM",
    "CEMState",
    "CMAES",
    "CMAESState",
    "Collective",
    "DE",
    "DEState",
    "ESState",
    "GAState",
    "GeneticAlgorithm",
    "History",
    "IPOP",
    "IPOPState",
    "Hybrid",
    "HybridState",
    "LMMAES",
    "LMMAESState",
    "LocalCollective",
    "NSGA2",
    "NSGA2State",
    "OpenAIES",
    "PBT",
    "PBTState",
    "PGPE",
    "PGPEState",
    "PSO",
    "PSOState",
    "SNES",
    "SNESState",
    "SepCMAES",
    "SepCMAESState",
    "XNES",
    "XNESState",
    "centered_ranks",
    "cma_population_size",
    "compose",
    "enforce_bounds",
    "identity",
    "nes_utilities",
    "normalized",
    "ravel",
    "ravel_size",
    "uniform_population",
    "unravel",
    "z_score",
]
