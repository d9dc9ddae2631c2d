"""Populations sharded over ``torch.distributed`` (each rank a contiguous block of members).

``sharded(algo)`` runs any algorithm of ``nytorch_fn.algorithms`` over a
process group with the single-process results (one generic wrapper: only the
algorithm's collective changes).

Import it explicitly (``import nytorch_fn.distributed as nfd``); ``import
nytorch_fn`` does not load it. See ``docs/distributed.md``.
"""

from ._distributed import Best as Best
from ._distributed import DistributedCollective as DistributedCollective
from ._distributed import Sharded as Sharded
from ._distributed import sharded as sharded
from ._distributed import CommLog as CommLog
from ._distributed import DistributedError as DistributedError
from ._distributed import NotInitializedError as NotInitializedError
from ._distributed import Record as Record
from ._distributed import Shard as Shard
from ._distributed import World as World
from ._distributed import all_gather as all_gather
from ._distributed import best as best
from ._distributed import best_of as best_of
from ._distributed import block_sizes as block_sizes
from ._distributed import broadcast as broadcast
from ._distributed import check_alive as check_alive
from ._distributed import check_species as check_species
from ._distributed import count_bytes as count_bytes
from ._distributed import fetch as fetch
from ._distributed import fingerprint as fingerprint
from ._distributed import from_local as from_local
from ._distributed import gather as gather
from ._distributed import gather_fitness as gather_fitness
from ._distributed import global_top_k as global_top_k
from ._distributed import init as init
from ._distributed import is_initialized as is_initialized
from ._distributed import launched as launched
from ._distributed import mean as mean
from ._distributed import member as member
from ._distributed import shaped_fitness as shaped_fitness
from ._distributed import shard as shard
from ._distributed import shutdown as shutdown
from ._distributed import take as take
from ._distributed import weighted_mean as weighted_mean
from ._distributed import world as world

__all__ = [
    "Best",
    "DistributedCollective",
    "Sharded",
    "sharded",
    "CommLog",
    "DistributedError",
    "NotInitializedError",
    "Record",
    "Shard",
    "World",
    "all_gather",
    "best",
    "best_of",
    "block_sizes",
    "broadcast",
    "check_alive",
    "check_species",
    "count_bytes",
    "fetch",
    "fingerprint",
    "from_local",
    "gather",
    "gather_fitness",
    "global_top_k",
    "init",
    "is_initialized",
    "launched",
    "mean",
    "member",
    "shaped_fitness",
    "shard",
    "shutdown",
    "take",
    "weighted_mean",
    "world",
]
