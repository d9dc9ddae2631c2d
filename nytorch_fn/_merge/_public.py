"""The merge methods on particles, one documented function per mergekit method.

Notation, per tensor: ``x_i`` the models' tensors, ``b`` the base's,
``tau_i = x_i - b`` the task vectors, ``w_i`` the per-model weights.
``weight``, ``density``, ``gamma`` and ``epsilon`` take one number for every
model or one per model (a sequence or a ``[K]`` tensor). ``compat="mergekit"``
switches the documented edge rules to mergekit 0.1.5's.
"""

from __future__ import annotations

from typing import Any

import torch

from .._particle import Particle
from ._particles import Compat, merge_particles

Models = Any  # a sequence of single particles, or a population
PerModel = Any  # a number, a sequence of K numbers, or a [K] tensor


def linear(models: Models, *, weight: PerModel = 1.0, normalize: bool = True) -> Particle:
    """Linear merge, a model soup (Wortsman et al. 2022, arXiv:2203.05482).

    ``sum_i w_i x_i / sum_i w_i`` (without the division when ``normalize`` is
    False). Weights are normalised first and the sum is accumulated in float32.

    Args:
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        normalize: divide by the sum of the weights.

    Returns:
        The merged model, a single particle of the inputs' species.

    Raises:
        ValueError: ``normalize`` with weights summing to zero.

    Examples:
        >>> soup = merge.linear([ft_a, ft_b, ft_c], weight=[0.5, 0.25, 0.25])
    """
    return merge_particles("linear", models, weight=weight, normalize=normalize)


weighted_average = linear


def slerp(base: Particle, other: Particle, t: float, *, compat: Compat = None) -> Particle:
    """Spherical linear interpolation, tensor by tensor (Shoemake 1985).

    With ``theta`` the angle between the flattened tensors ``a`` (base) and ``b``:
    ``sin((1-t) theta)/sin(theta) a + sin(t theta)/sin(theta) b``; ``t = 0`` gives
    the base. Nearly parallel tensors (``|cos theta| > 0.9995``) are lerped.

    Edge rule: a tensor of norm ``<= 1e-8`` has no direction; ours lerps.
    mergekit (``compat="mergekit"``) treats its norm as 1, i.e. rotates from a
    zero vector by 90 degrees (``sin(t pi/2) b`` for ``a = 0``).

    Args:
        base: the base model, a single particle.
        other: the other model, a single particle.
        t: the interpolation weight in [0, 1] (0: the base, 1: ``other``).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Raises:
        ValueError: ``t`` outside [0, 1]; more than two models
            (use ``multislerp`` or ``karcher``).

    Examples:
        >>> mid = merge.slerp(p, q, 0.5)
    """
    return merge_particles("slerp", [other], base=base, t=t, compat=compat)


def multislerp(models: Models, *, weight: PerModel = 1.0, base: Particle | None = None,
               normalize: bool = True, eps: float = 1e-8) -> Particle:
    """Barycentric interpolation on the hypersphere for any number of models (Goddard, "multislerp").

    Per tensor (relative to ``base`` when given): unit directions
    ``u_i = x_i / (|x_i| + eps)``; their weighted mean ``m`` (normalised); the
    tangent vectors ``u_i - (u_i . m) m``; their weighted sum ``v``; the result
    ``(cos|v| m + sin|v| v/|v|) * sum_i w_i |x_i|``. Two exactly antipodal
    inputs with cancelling weights are lerped; more are refused.

    Args:
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        base: interpolate the task vectors relative to it (None: the models themselves).
        normalize: normalise the weights to sum 1.
        eps: added to the norms before dividing.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> m = merge.multislerp([a, b, c], weight=[1, 1, 2])
    """
    return merge_particles("multislerp", models, base=base, weight=weight, normalize=normalize, eps=eps)


def nuslerp(models: Models, *, weight: PerModel = 1.0, base: Particle | None = None,
            row_wise: bool = False, flatten: bool = True, compat: Compat = None) -> Particle:
    """SLERP of two models with ``t = w_2 / (w_1 + w_2)``, optionally of task vectors (mergekit's NuSLERP).

    With ``base``, the task vectors are interpolated and added to it. With
    ``flatten`` False, every vector along the last dimension (``row_wise``: the
    first) is interpolated on its own. Colinear vectors
    (``1 - cos^2 <= 1e-16``) are lerped; so are zero vectors (ours; mergekit
    rotates from them by 90 degrees, ``compat="mergekit"``).

    Args:
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        base: interpolate the task vectors relative to it (None: the models themselves).
        row_wise: with ``flatten`` False, interpolate along the first dimension instead of the last.
        flatten: interpolate whole flattened tensors (False: every vector on its own).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> m = merge.nuslerp([a, b], weight=[0.3, 0.7], base=base)
    """
    return merge_particles("nuslerp", models, base=base, weight=weight, row_wise=row_wise, flatten=flatten,
                           compat=compat)


def karcher(models: Models, *, weight: PerModel = None, max_iter: int = 10, tol: float = 1e-5) -> Particle:
    """Karcher (Riemannian) mean on the unit hypersphere, scaled back (arXiv:2603.04972).

    Per tensor: directions ``u_i = x_i/|x_i|``; starting from their normalised
    weighted mean ``u``, repeat ``max_iter`` times
    ``T = sum_i a_i theta_i/sin(theta_i) (u_i - cos(theta_i) u)``,
    ``u <- cos|T| u + sin|T| T/|T|`` (stop when ``|T| < tol``); the result is
    ``u * sum_i a_i |x_i|`` with ``a`` the weights normalised to sum 1 (uniform by default).

    Args:
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model (None: uniform).
        max_iter: iterations, >= 1.
        tol: stop when ``|T| < tol``.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> m = merge.karcher([a, b, c])
    """
    return merge_particles("karcher", models, weight=weight, max_iter=max_iter, tol=tol)


def task_arithmetic(base: Particle, models: Models, *, weight: PerModel = 1.0, lambda_: float = 1.0,
                    normalize: bool = False) -> Particle:
    """Task arithmetic (Ilharco et al. 2023, arXiv:2212.04089).

    ``b + lambda_ * sum_i w_i tau_i`` (divided by ``sum_i w_i`` with
    ``normalize``). A negative weight forgets a task.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        lambda_: the scale of the merged task vector.
        normalize: divide by ``sum_i w_i``.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.task_arithmetic(base, [ft_math, ft_code], weight=[0.7, 0.5])
    """
    return merge_particles("task_arithmetic", models, base=base, weight=weight, lambda_=lambda_, normalize=normalize)


def ties(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0, lambda_: float = 1.0,
         normalize: bool = True, rescale: bool = False, compat: Compat = None) -> Particle:
    """TIES-merging: trim, elect sign, disjoint merge (Yadav et al. 2023, arXiv:2306.01708).

    1. trim: keep the ``max(1, int(density * n))`` largest-magnitude entries
       of each ``tau_i`` (ties in magnitude: the lower flat index first);
       with ``rescale``, scale the kept entries back to ``tau_i``'s L1 norm;
    2. elect: per entry, ``s = sign(sum_i w_i tau_i)``;
    3. disjoint merge: ``sum_i w_i tau_i [sign(w_i tau_i) = s]``, divided by
       ``sum_i w_i [sign(w_i tau_i) = s]`` with ``normalize`` (the disjoint
       mean; without it, TIES without the mean);

    result ``b + lambda_ * merged``.

    Edge rules: an exact tie of the sum elects no sign (the base is kept;
    mergekit elects ``+``: ``compat="mergekit"``). Trimming keeps at least one
    entry of a non-empty tensor (as mergekit), so a positive density never
    silently erases a small tensor's task vector (biases, norms).

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.ties(base, [ft_a, ft_b, ft_c], density=0.2, weight=[1, 1, 0.5])
    """
    return merge_particles("ties", models, base=base, weight=weight, density=density, lambda_=lambda_,
                           normalize=normalize, rescale=rescale, compat=compat)


def _random(name: str, base: Particle | None, models: Any, **kw: Any) -> Particle:
    return merge_particles(name, models, base=base, **kw)


def dare_linear(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0,
                lambda_: float = 1.0, normalize: bool = False, rescale: bool = True,
                generator: torch.Generator | None = None, compat: Compat = None) -> Particle:
    """DARE: drop and rescale, then task arithmetic (Yu et al. 2024, arXiv:2311.03099).

    Each entry of each ``tau_i`` is kept with probability ``density_i``; with
    ``rescale`` the kept entries are divided by ``density_i``, so the expected
    task vector is unchanged (the paper's rule). mergekit instead scales the
    kept entries back to ``tau_i``'s L1 norm (``compat="mergekit"``; biased on
    small tensors). Result ``b + lambda_ * sum_i w_i tau_i'`` (``/ sum w`` with ``normalize``).

    Masks: per tensor, a generator seeded from one draw of ``generator`` and
    the tensor's name; one draw of ``K`` masks in model order.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        generator: draws the random masks' seed (torch's global RNG when None).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.dare_linear(base, [a, b], density=0.3, generator=torch.Generator().manual_seed(0))
    """
    return _random("dare_linear", base, models, weight=weight, density=density, lambda_=lambda_,
                   normalize=normalize, rescale=rescale, generator=generator, compat=compat)


def dare_ties(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0,
              lambda_: float = 1.0, normalize: bool = False, rescale: bool = True,
              generator: torch.Generator | None = None, compat: Compat = None) -> Particle:
    """DARE's drop and rescale, then TIES' sign election and merge (arXiv:2311.03099, 2306.01708).

    As ``dare_linear`` for the sparsification and ``ties`` for the election
    (``normalize`` off by default, as mergekit).

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        generator: draws the random masks' seed (torch's global RNG when None).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.dare_ties(base, [a, b], density=0.5, generator=torch.Generator().manual_seed(0))
    """
    return _random("dare_ties", base, models, weight=weight, density=density, lambda_=lambda_,
                   normalize=normalize, rescale=rescale, generator=generator, compat=compat)


def breadcrumbs(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0,
                gamma: PerModel = 0.01, lambda_: float = 1.0, normalize: bool = False, rescale: bool = False,
                compat: Compat = None) -> Particle:
    """Model Breadcrumbs: drop the largest and the smallest task-vector entries (Davari & Belilovsky 2023, arXiv:2312.06795).

    Per ``tau_i`` of ``n`` entries: the ``int(gamma n)`` largest magnitudes are
    outliers, and of the rest the ``max(1, int(density n))`` largest are kept
    (so ``density`` is the fraction kept; if ``gamma`` is too large, fewer
    outliers are dropped). Then task arithmetic (``breadcrumbs_ties``: TIES'
    election). Ours keeps at least one entry; mergekit may keep none
    (``compat="mergekit"``).

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        gamma: per model, the fraction of largest magnitudes dropped as outliers.
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.breadcrumbs(base, [a, b], density=0.9, gamma=0.01)
    """
    return merge_particles("breadcrumbs", models, base=base, weight=weight, density=density, gamma=gamma,
                           lambda_=lambda_, normalize=normalize, rescale=rescale, compat=compat)


def breadcrumbs_ties(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0,
                     gamma: PerModel = 0.01, lambda_: float = 1.0, normalize: bool = False, rescale: bool = False,
                     compat: Compat = None) -> Particle:
    """Model Breadcrumbs' sparsification with TIES' sign election (arXiv:2312.06795). See ``breadcrumbs``.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        gamma: per model, the fraction of largest magnitudes dropped as outliers.
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.
    """
    return merge_particles("breadcrumbs_ties", models, base=base, weight=weight, density=density, gamma=gamma,
                           lambda_=lambda_, normalize=normalize, rescale=rescale, compat=compat)


def della(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0,
          epsilon: PerModel = 0.15, lambda_: float = 1.0, normalize: bool = True, rescale: bool = True,
          generator: torch.Generator | None = None, compat: Compat = None) -> Particle:
    """DELLA: magnitude-ranked random drop (MAGPRUNE), then TIES (Deep et al. 2024, arXiv:2406.11617).

    In each row of ``tau_i`` (its first dimension; a 1-d tensor is one row) of
    ``m`` entries, the entry of magnitude rank ``r`` (0 = smallest) is kept with
    probability ``p = density - epsilon + 2 epsilon r/(m-1)`` (``density`` for a
    one-entry row) and, with ``rescale``, divided by its own ``p`` (the paper's
    unbiased rule; mergekit matches the L1 norm instead, ``compat="mergekit"``).
    Then TIES' election (``della_linear``: task arithmetic).

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        epsilon: per model, the spread of the keep probabilities around ``density``.
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        generator: draws the random masks' seed (torch's global RNG when None).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Raises:
        ValueError: ``density - epsilon <= 0`` or ``density + epsilon >= 1`` (density < 1).

    Examples:
        >>> merged = merge.della(base, [a, b], density=0.5, epsilon=0.1, generator=torch.Generator().manual_seed(0))
    """
    return _random("della", base, models, weight=weight, density=density, epsilon=epsilon, lambda_=lambda_,
                   normalize=normalize, rescale=rescale, generator=generator, compat=compat)


def della_linear(base: Particle, models: Models, *, weight: PerModel = 1.0, density: PerModel = 1.0,
                 epsilon: PerModel = 0.15, lambda_: float = 1.0, normalize: bool = False, rescale: bool = True,
                 generator: torch.Generator | None = None, compat: Compat = None) -> Particle:
    """DELLA's MAGPRUNE drop, then task arithmetic (arXiv:2406.11617). See ``della``.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        weight: per model: a number, ``K`` numbers or a ``[K]`` tensor.
        density: per model, the fraction of entries kept, in (0, 1].
        epsilon: per model, the spread of the keep probabilities around ``density``.
        lambda_: the scale of the merged task vector.
        normalize: divide by the sum of the (agreeing) weights.
        rescale: rescale the kept entries (see above).
        generator: draws the random masks' seed (torch's global RNG when None).
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.
    """
    return _random("della_linear", base, models, weight=weight, density=density, epsilon=epsilon, lambda_=lambda_,
                   normalize=normalize, rescale=rescale, generator=generator, compat=compat)


def model_stock(base: Particle, models: Models, *, filter_wise: bool = False) -> Particle:
    """Model Stock (Jang et al. 2024, arXiv:2403.19522).

    With ``c`` the mean pairwise cosine of the task vectors (per row with
    ``filter_wise``) and ``N`` models: ``t = N c / (1 + (N-1) c)`` (0 where the
    denominator vanishes) and the result ``b + t (mean_i x_i - b)``.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        filter_wise: the cosine per row instead of per tensor.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.model_stock(base, [ft_1, ft_2, ft_3])
    """
    return merge_particles("model_stock", models, base=base, filter_wise=filter_wise)


def nearswap(base: Particle, other: Particle, t: float) -> Particle:
    """NearSwap: take the other model's values where they are near the base's (alchemonaut, QuartetAnemoi).

    Per entry ``w = clamp(t / max(|b - x|, 1e-6), 0, 1)`` and the result ``w x + (1 - w) b``.

    Args:
        base: the base model, a single particle.
        other: the other model, a single particle.
        t: the similarity threshold, >= 0.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.nearswap(base, other, 1e-4)
    """
    return merge_particles("nearswap", [other], base=base, t=t)


def sce(base: Particle, models: Models, *, select_topk: float = 1.0, compat: Compat = None) -> Particle:
    """SCE: select, calculate, erase (FuseChat, Wan et al. 2024, arXiv:2408.07990).

    Select: keep the entries whose variance across the ``tau_i`` is among the
    top ``select_topk`` fraction of the non-zero variances. Calculate: per model
    ``c_i = mean(tau_i^2) / sum_j mean(tau_j^2)``. Erase: TIES' sign election on
    ``sum_i tau_i``. Result ``b + sum_i c_i tau_i [agree] / max(sum_i c_i [agree], 1e-6)``.
    Sign ties as in ``ties``.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        select_topk: the fraction of highest-variance entries kept, in (0, 1].
        compat: None (our rules) or ``"mergekit"`` (mergekit 0.1.5's where they differ).

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.sce(base, [a, b, c], select_topk=0.5)
    """
    return merge_particles("sce", models, base=base, select_topk=select_topk, compat=compat)


def arcee_fusion(base: Particle, other: Particle) -> Particle:
    """Arcee Fusion: keep the other model's most important changes (Arcee, mergekit 0.1).

    Importance ``|x - b| * KL(softmax(x) || softmax(b))`` (softmax and KL along
    the last dimension); the entries whose importance is at least
    ``median + 1.5 IQR`` take ``x``, the others keep ``b``. Quantiles are the
    exact order statistics at ``floor(q (n-1))`` (mergekit samples a million
    entries of larger tensors at random).

    Args:
        base: the base model, a single particle.
        other: the other model, a single particle.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.arcee_fusion(base, other)
    """
    return merge_particles("arcee_fusion", [other], base=base)


def ram(base: Particle, models: Models, *, epsilon: float = 1e-5) -> Particle:
    """RAM, reinforced agent merging (arXiv:2601.13572).

    An entry is changed by model ``i`` when ``|tau_i| > epsilon``. Entries
    changed by one model take its change; entries changed by several take the
    mean of their changes; the others keep the base.

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        epsilon: the change threshold, >= 0.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.ram(base, [agent_a, agent_b])
    """
    return merge_particles("ram", models, base=base, epsilon=epsilon)


def ramplus_tl(base: Particle, models: Models, *, r: float = 0.1, alpha: float = 0.2,
               epsilon: float = 1e-5) -> Particle:
    """RAM+ (tensor-local): RAM with unique changes of model ``i`` scaled by ``1 + r clamp(rho_i, 0, alpha)``.

    ``rho_i`` is, within the tensor, the number of model ``i``'s shared changed
    entries over its unique ones (arXiv:2601.13572).

    Args:
        base: the base model, a single particle.
        models: the (non-base) models: a sequence of single particles of one species, or a population.
        r: the scale of the shared-change ratio, >= 0.
        alpha: the clamp of ``rho_i``, >= 0.
        epsilon: the change threshold, >= 0.

    Returns:
        The merged model, a single particle of the inputs' species.

    Examples:
        >>> merged = merge.ramplus_tl(base, [agent_a, agent_b], r=0.1)
    """
    return merge_particles("ramplus_tl", models, base=base, r=r, alpha=alpha, epsilon=epsilon)


def passthrough(model: Particle, *, scale: float | None = None) -> Particle:
    """Passthrough: one model's tensors, optionally scaled.

    mergekit uses it for layer stacking ("frankenmerges", ``slices`` in YAML),
    which builds a model with a different number of layers: a different
    architecture, so no particle of the inputs' species can hold it. On
    particles it is therefore the identity (a copy, times ``scale``); stack
    layers with ``merge_files`` / ``nytorch-fn-merge`` on checkpoints.

    Args:
        model: the model, a single particle.
        scale: a factor for every tensor (None: 1).

    Returns:
        A copy of ``model`` (times ``scale``).

    Raises:
        TypeError: more than one model (layer stacking needs checkpoints on disk).
    """
    if not isinstance(model, Particle):
        raise TypeError(
            "merge.passthrough: expects one particle; layer stacking from several models (mergekit's "
            "slices) changes the architecture, so it works on checkpoints: merge_files or nytorch-fn-merge"
        )
    return merge_particles("passthrough", [model], scale=scale)
