"""Bringing particles of an older version up to a newer one."""

from __future__ import annotations

from ._errors import SpeciesMismatchError, describe
from ._particle import Particle, _population_size
from ._species import Species


def migrate(particle: Particle, species: Species) -> Particle:
    """``particle`` brought up to ``species``, a later version of its own species.

    Replays the recorded edits (the legacy ``touch()``): each added
    parameter arrives as this particle's own copy of the value the edit
    carried (repeated along the population dimension for a population);
    removed or None-d ones disappear; config and buffer edits change no
    tensor. Tensors that no edit touched are shared with ``particle``.

    Raises:
        TypeError: ``particle`` is not a Particle or ``species`` not a Species.
        SpeciesMismatchError: ``species`` is not ``particle.species`` or a
            later version of it (an earlier version, another branch or
            another species).

    Example:
        >>> s2 = p.species.add_param("scale", torch.ones(1))
        >>> migrate(p, s2).params["scale"]
        tensor([1.])
    """
    if not isinstance(particle, Particle):
        raise TypeError(f"migrate: expected a Particle, got {describe(particle)}")
    if not isinstance(species, Species):
        raise TypeError(f"migrate: expected a Species, got {describe(species)}")
    old = particle.species
    if old is species:
        return particle
    if not old.is_ancestor_of(species):
        relation = (
            "it is an earlier version of the particle's species (migration only goes forward)"
            if species.is_ancestor_of(old)
            else "it is on another branch or of another species"
        )
        raise SpeciesMismatchError(
            f"migrate: expected {old!r} or a later version of it, got {species!r}: {relation}"
        )
    leaves = particle.tensors
    population = _population_size(particle)
    device = leaves[0].device if leaves else None
    tensors = dict(zip(old.names, leaves))
    for edit in species.edits_since(old):
        edit.replay(tensors, population, device)
    return Particle._make(species, [tensors[n] for n in species.names])
