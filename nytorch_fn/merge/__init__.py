"""Model merging: every mergekit method, on particles in memory and on checkpoints on disk.

Methods (mergekit's names): ``linear`` (alias ``weighted_average``),
``slerp``, ``multislerp``, ``nuslerp``, ``karcher``, ``task_arithmetic``,
``ties``, ``dare_linear``, ``dare_ties``, ``breadcrumbs``,
``breadcrumbs_ties``, ``della``, ``della_linear``, ``model_stock``,
``nearswap``, ``sce``, ``arcee_fusion``, ``ram``, ``ramplus_tl``,
``passthrough``. Each function's docstring gives its paper and formula.

- On particles of one species: config-aware (non-operational parameters
  follow their ``ParamConfig``, taken from the base or first model), integer
  and bool tensors copied (refused if the inputs disagree).
- Numerics: bf16/fp16 (and float32) tensors are merged in float32, float64
  ones in float64, and rounded once to the parameter's dtype.
- Where mergekit 0.1.5 and the papers differ, ours follow the papers and
  ``compat="mergekit"`` gives mergekit's rules: SLERP/NuSLERP of a zero-norm
  tensor (ours: lerp; mergekit: rotate from it as if of norm 1), sign ties in
  TIES/SCE (ours: no sign elected, the base is kept; mergekit: +), the DARE
  and DELLA rescale (ours: divide by the keep probability, unbiased;
  mergekit: match the L1 norm), breadcrumbs keeping zero entries of a tiny
  tensor (ours keep at least one, as mergekit's TIES trim does).
- ``merge_files`` merges safetensors checkpoints on disk (files or Hugging
  Face sharded folders) tensor by tensor, with positioned reads into a few
  buffers allocated once (nothing stays mapped; 3 models of 96 MiB merge
  within 30-70 MiB above the import baseline); ``run_config`` and the
  ``nytorch-fn-merge CONFIG.yml OUT_DIR`` command (also ``python -m
  nytorch_fn.merge``) run mergekit's YAML configurations.
- ``merge_grouped`` takes per-group coefficients (``layer_groups``: one per
  layer), with a leading population dimension for many recipes at once;
  ``evolve`` searches them with CMA-ES on a fitness (evolutionary model
  merging, Akiba et al. 2024), every generation's candidates merged and
  evaluated together; ``python -m nytorch_fn.merge.evolve_demo`` runs it on
  digits experts.

Examples:
    >>> from nytorch_fn import merge
    >>> soup = merge.linear([ft_a, ft_b, ft_c])
    >>> mid = merge.slerp(ft_a, ft_b, 0.5)
    >>> merged = merge.ties(base, [ft_a, ft_b, ft_c], density=0.2)
    >>> best = merge.evolve("dare_ties", [ft_a, ft_b, ft_c], fitness_fn, base=base, generations=60)
"""

from .._merge._files import Checkpoint as Checkpoint
from .._merge._files import CheckpointError as CheckpointError
from .._merge._files import merge_files as merge_files
from .._merge._kernels import MergeInputError as MergeInputError
from .._merge._yaml import ConfigError as ConfigError
from .._merge._yaml import run_config as run_config
from .._merge._methods import NAMES as METHODS
from .._merge._evolve import EvolvedMerge as EvolvedMerge
from .._merge._evolve import evolve as evolve
from .._merge._grouped import layer_groups as layer_groups
from .._merge._grouped import merge_grouped as merge_grouped
from .._merge._particles import merge_particles as merge_particles
from .._merge._public import arcee_fusion as arcee_fusion
from .._merge._public import breadcrumbs as breadcrumbs
from .._merge._public import breadcrumbs_ties as breadcrumbs_ties
from .._merge._public import dare_linear as dare_linear
from .._merge._public import dare_ties as dare_ties
from .._merge._public import della as della
from .._merge._public import della_linear as della_linear
from .._merge._public import karcher as karcher
from .._merge._public import linear as linear
from .._merge._public import model_stock as model_stock
from .._merge._public import multislerp as multislerp
from .._merge._public import nearswap as nearswap
from .._merge._public import nuslerp as nuslerp
from .._merge._public import passthrough as passthrough
from .._merge._public import ram as ram
from .._merge._public import ramplus_tl as ramplus_tl
from .._merge._public import sce as sce
from .._merge._public import slerp as slerp
from .._merge._public import task_arithmetic as task_arithmetic
from .._merge._public import ties as ties
from .._merge._public import weighted_average as weighted_average

__all__ = [
    "METHODS",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "EvolvedMerge",
    "MergeInputError",
    "arcee_fusion",
    "breadcrumbs",
    "breadcrumbs_ties",
    "dare_linear",
    "dare_ties",
    "della",
    "della_linear",
    "evolve",
    "karcher",
    "layer_groups",
    "linear",
    "merge_files",
    "merge_grouped",
    "merge_particles",
    "model_stock",
    "multislerp",
    "nearswap",
    "nuslerp",
    "passthrough",
    "ram",
    "ramplus_tl",
    "run_config",
    "sce",
    "slerp",
    "task_arithmetic",
    "ties",
    "weighted_average",
]
