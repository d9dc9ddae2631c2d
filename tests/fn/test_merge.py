"""Model merging: each operator against a hand computation on small tensors, config, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError, SpeciesMismatchError, merge
from tests.helpers import Snapshot, mlp, tensor_equal


class Tiny(nn.Module):
    """Two float parameters and an integer one (which merging must skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))
        self.v = nn.Parameter(torch.zeros(2))
        self.k = nn.Parameter(torch.tensor([7, 8]), requires_grad=False)


SPECIES = nf.particle(Tiny()).species


def make(w, v, k=(7, 8), species=SPECIES) -> nf.Particle:
    return nf.Particle(species, {
        "w": torch.tensor(w, dtype=torch.float32),
        "v": torch.tensor(v, dtype=torch.float32),
        "k": torch.tensor(k),
    })


def close(p: nf.Particle, name: str, expected) -> bool:
    return torch.allclose(p.params[name], torch.tensor(expected, dtype=torch.float32), atol=1e-6)


# -- weighted average (model soup) ---------------------------------------------


def test_weighted_average_matches_hand_computation():
    a = make([1.0, 2.0, 3.0, 4.0], [0.0, 4.0], k=(1, 2))
    b = make([5.0, 6.0, 7.0, 8.0], [4.0, 0.0], k=(3, 4))
    snap = Snapshot(a, b)
    soup = merge.weighted_average([a, b], weights=[1.0, 3.0])
    assert snap.unchanged()
    assert soup.species is SPECIES and soup.population_size is None
    assert close(soup, "w", [4.0, 5.0, 6.0, 7.0])  # (1*a + 3*b) / 4
    assert close(soup, "v", [3.0, 1.0])
    assert torch.equal(soup.params["k"], torch.tensor([1, 2]))  # integer: from the first, not averaged
    assert soup.params["k"].data_ptr() != a.params["k"].data_ptr()
    uniform = merge.weighted_average([a, b])
    assert close(uniform, "w", [3.0, 4.0, 5.0, 6.0])


def test_weighted_average_of_a_population_equals_that_of_its_members():
    pop = nf.init_population(mlp(), 4, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    from_pop = merge.weighted_average(pop, w)
    from_list = merge.weighted_average(nf.unstack(pop), w)
    for name in pop.species.names:
        expected = sum(w[i] * pop.params[name][i] for i in range(4))
        assert torch.allclose(from_pop.params[name], expected, atol=1e-6)
        assert torch.allclose(from_list.params[name], expected, atol=1e-6)


def test_weighted_average_bad_weights():
    a, b = make([1.0] * 4, [1.0, 1.0]), make([2.0] * 4, [2.0, 2.0])
    with pytest.raises(PopulationSizeError, match=r"2 values.*\(3,\)"):
        merge.weighted_average([a, b], weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-negative"):
        merge.weighted_average([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="positive sum"):
        merge.weighted_average([a, b], weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        merge.weighted_average([])
    with pytest.raises(TypeError, match="element 1"):
        merge.weighted_average([a, "b"])


# -- SLERP -------------------------------------------------------------------------


def test_slerp_matches_hand_computation():
    # w: orthogonal unit directions (theta = pi/2) with norms 1 and 2; v: parallel -> lerp
    a = make([1.0, 0.0, 0.0, 0.0], [1.0, 1.0], k=(1, 1))
    b = make([0.0, 2.0, 0.0, 0.0], [3.0, 3.0], k=(2, 2))
    snap = Snapshot(a, b)
    mid = merge.slerp(a, b, 0.5)
    assert snap.unchanged()
    s = math.sin(math.pi / 4)  # sin(0.5 * pi/2) / sin(pi/2)
    assert close(mid, "w", [s, 2 * s, 0.0, 0.0])
    assert close(mid, "v", [2.0, 2.0])
    assert torch.equal(mid.params["k"], torch.tensor([1, 1]))
    t = 0.25
    quarter = merge.slerp(a, b, t)
    c0, c1 = math.sin(0.75 * math.pi / 2), math.sin(0.25 * math.pi / 2)
    assert close(quarter, "w", [c0, 2 * c1, 0.0, 0.0])
    assert close(merge.slerp(a, b, 0.0), "w", [1.0, 0.0, 0.0, 0.0])
    assert close(merge.slerp(a, b, 1.0), "w", [0.0, 2.0, 0.0, 0.0])


def test_slerp_with_a_zero_tensor_falls_back_to_lerp():
    a = make([0.0, 0.0, 0.0, 0.0], [1.0, 0.0])
    b = make([4.0, 0.0, 0.0, 0.0], [0.0, 1.0])
    mid = merge.slerp(a, b, 0.25)
    assert close(mid, "w", [1.0, 0.0, 0.0, 0.0])
    assert close(mid, "v", [math.sin(0.75 * math.pi / 2), math.sin(0.25 * math.pi / 2)])


@pytest.mark.parametrize("t", [-0.1, 1.5])
def test_slerp_t_out_of_range(t):
    a = make([1.0] * 4, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\].*" + str(t)):
        merge.slerp(a, a, t)


def test_slerp_refuses_populations_and_non_numbers():
    pop = nf.stack([make([1.0] * 4, [1.0, 0.0])] * 2)
    with pytest.raises(TypeError, match="single"):
        merge.slerp(pop, pop, 0.5)
    with pytest.raises(TypeError):
        merge.slerp(pop[0], pop[1], "half")


# -- task arithmetic ---------------------------------------------------------------


def test_task_arithmetic_matches_hand_computation():
    base = make([1.0, 1.0, 1.0, 1.0], [0.0, 0.0], k=(5, 5))
    ft1 = make([3.0, 1.0, 1.0, 1.0], [2.0, 0.0], k=(6, 6))
    ft2 = make([1.0, 0.0, 1.0, 5.0], [0.0, -2.0], k=(7, 7))
    snap = Snapshot(base, ft1, ft2)
    out = merge.task_arithmetic(base, [ft1, ft2], weights=[0.5, 2.0])
    assert snap.unchanged()
    # base + 0.5 * (ft1 - base) + 2 * (ft2 - base)
    assert close(out, "w", [2.0, -1.0, 1.0, 9.0])
    assert close(out, "v", [1.0, -4.0])
    assert torch.equal(out.params["k"], torch.tensor([5, 5]))  # from base
    negated = merge.task_arithmetic(base, [ft1], weights=-1.0)  # forgetting a task
    assert close(negated, "w", [-1.0, 1.0, 1.0, 1.0])
    as_population = merge.task_arithmetic(base, nf.stack([ft1, ft2]), weights=torch.tensor([0.5, 2.0]))
    assert close(as_population, "w", [2.0, -1.0, 1.0, 9.0])


def test_task_arithmetic_needs_finetuned_and_weights_of_the_right_length():
    base = make([1.0] * 4, [0.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        merge.task_arithmetic(base, [])
    with pytest.raises(PopulationSizeError, match=r"1 values.*\(2,\)"):
        merge.task_arithmetic(base, [base], weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="base"):
        merge.task_arithmetic(nf.stack([base, base]), [base])
    with pytest.raises(ValueError, match="finite"):
        merge.task_arithmetic(base, [base], weights=float("nan"))


# -- TIES ------------------------------------------------------------------------------

TAUS = ([1.0, -2.0, 3.0, 0.5], [-1.0, -1.0, 2.0, 4.0], [2.0, 0.5, -1.0, -0.2])


def _ties_inputs():
    base = make([1.0, 1.0, 1.0, 1.0], [0.0, 0.0], k=(9, 9))
    fts = [make([1.0 + x for x in tau], [1.0 * (i + 1), -1.0], k=(i, i)) for i, tau in enumerate(TAUS)]
    return base, fts


def test_ties_without_trimming_matches_hand_computation():
    base, fts = _ties_inputs()
    snap = Snapshot(base, *fts)
    out = merge.ties(base, fts, density=1.0)
    assert snap.unchanged()
    # signs of the sum [2, -2.5, 4, 4.3] are (+, -, +, +); mean of the agreeing entries:
    # [(1+2)/2, (-2-1)/2, (3+2)/2, (0.5+4)/2]
    assert close(out, "w", [1.0 + 1.5, 1.0 - 1.5, 1.0 + 2.5, 1.0 + 2.25])
    # v: taus [1,-1], [2,-1], [3,-1]: every one agrees
    assert close(out, "v", [2.0, -1.0])
    assert torch.equal(out.params["k"], torch.tensor([9, 9]))


def test_ties_with_trimming_matches_hand_computation():
    base, fts = _ties_inputs()
    out = merge.ties(base, fts, density=0.5)
    # keep 2 of 4 per task: [0,-2,3,0], [0,0,2,4], [2,0,-1,0]; signs of the sum (+,-,+,+)
    assert close(out, "w", [1.0 + 2.0, 1.0 - 2.0, 1.0 + 2.5, 1.0 + 4.0])
    # v keeps int(0.5 * 2) = 1 entry per task: [1,0], [2,0], [3,0]
    assert close(out, "v", [2.0, 0.0])


def test_ties_with_weights_and_scale_matches_hand_computation():
    base, fts = _ties_inputs()
    out = merge.ties(base, fts, weights=[1.0, 2.0, 1.0], density=1.0, scale=0.5)
    # weighted taus: t1, 2*t2, t3; sums [1, -3.5, 6, 8.3]: (+, -, +, +)
    merged = [(1.0 + 2.0) / 2, (-2.0 - 2.0) / 3, (3.0 + 4.0) / 3, (0.5 + 8.0) / 3]
    assert close(out, "w", [1.0 + 0.5 * m for m in merged])


def test_ties_bad_hyperparameters():
    base, fts = _ties_inputs()
    with pytest.raises(ValueError, match=r"\(0, 1\].*1.5"):
        merge.ties(base, fts, density=1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\].*0"):
        merge.ties(base, fts, density=0)
    with pytest.raises(ValueError, match="positive"):
        merge.ties(base, fts, weights=[1.0, 0.0, 1.0])


# -- DARE ------------------------------------------------------------------------------


def test_dare_matches_masks_drawn_with_plain_torch():
    base = make([1.0, 1.0, 1.0, 1.0], [0.0, 0.0])
    ft1 = make([2.0, 3.0, 4.0, 5.0], [1.0, 1.0])
    ft2 = make([0.0, 0.0, 0.0, 0.0], [-1.0, 2.0])
    snap = Snapshot(base, ft1, ft2)
    out = merge.dare(base, [ft1, ft2], weights=[1.0, 0.5], density=0.5, generator=torch.Generator().manual_seed(3))
    assert snap.unchanged()
    g = torch.Generator().manual_seed(3)
    expected = {}
    for name in ("w", "v"):  # species.names order, one [K, *shape] draw per tensor
        b = base.params[name]
        tau = torch.stack([ft1.params[name] - b, ft2.params[name] - b])
        keep = torch.rand(tau.shape, generator=g) < 0.5
        tau = tau * keep / 0.5
        expected[name] = b + tau[0] * 1.0 + tau[1] * 0.5
    assert torch.allclose(out.params["w"], expected["w"]) and torch.allclose(out.params["v"], expected["v"])
    assert torch.equal(out.params["k"], base.params["k"])
    again = merge.dare(base, [ft1, ft2], weights=[1.0, 0.5], density=0.5, generator=torch.Generator().manual_seed(3))
    assert tensor_equal(again.params["w"], out.params["w"])


def test_dare_with_density_one_is_task_arithmetic_and_rescale_keeps_the_mean():
    base = make([1.0, 1.0, 1.0, 1.0], [0.0, 0.0])
    ft = make([2.0, 3.0, 4.0, 5.0], [1.0, 1.0])
    full = merge.dare(base, [ft], density=1.0, generator=torch.Generator().manual_seed(0))
    assert close(full, "w", [2.0, 3.0, 4.0, 5.0])
    big_sp = nf.particle(nn.Linear(100, 100)).species
    zero = nf.Particle(big_sp, {n: torch.zeros(big_sp.shapes[n]) for n in big_sp.names})
    one = nf.Particle(big_sp, {n: torch.ones(big_sp.shapes[n]) for n in big_sp.names})
    out = merge.dare(zero, [one], density=0.25, generator=torch.Generator().manual_seed(0))
    w = out.params["weight"]
    assert set(w.unique().tolist()) == {0.0, 4.0}  # dropped, or kept and rescaled by 1/0.25
    assert abs(float(w.mean()) - 1.0) < 0.05
    unscaled = merge.dare(zero, [one], density=0.25, rescale=False, generator=torch.Generator().manual_seed(0))
    assert set(unscaled.params["weight"].unique().tolist()) == {0.0, 1.0}


def test_dare_bad_input():
    base = make([1.0] * 4, [0.0, 0.0])
    with pytest.raises(ValueError, match=r"\(0, 1\].*-0.5"):
        merge.dare(base, [base], density=-0.5)
    with pytest.raises(TypeError, match="Generator"):
        merge.dare(base, [base], generator=3)


# -- across operators --------------------------------------------------------------------


def _calls(a, b):
    return [
        lambda: merge.weighted_average([a, b]),
        lambda: merge.slerp(a, b, 0.5),
        lambda: merge.task_arithmetic(a, [b]),
        lambda: merge.ties(a, [b]),
        lambda: merge.dare(a, [b], generator=torch.Generator().manual_seed(0)),
    ]


@pytest.mark.parametrize("which", range(5))
def test_merging_particles_of_different_species_is_refused(which):
    a = make([1.0] * 4, [0.0, 0.0])
    other = nf.particle(Tiny())  # same architecture, another species
    with pytest.raises(SpeciesMismatchError, match="species"):
        _calls(a, other)[which]()


@pytest.mark.parametrize("which", range(5))
def test_non_operational_parameters_come_from_the_first_input(which):
    sp = SPECIES.with_config("v", operational=False)
    a = make([1.0] * 4, [10.0, 20.0], species=sp)
    b = make([3.0] * 4, [30.0, 40.0], species=sp)
    out = _calls(a, b)[which]()
    assert out.species is sp
    assert torch.equal(out.params["v"], torch.tensor([10.0, 20.0]))
    assert out.params["v"].data_ptr() != a.params["v"].data_ptr()  # clone=True: a copy
    assert not torch.equal(out.params["w"], a.params["w"]) or which == 3  # w is merged


def test_clone_false_non_operational_parameters_are_shared_with_the_first_input():
    sp = SPECIES.with_config("v", operational=False, clone=False)
    a = make([1.0] * 4, [10.0, 20.0], species=sp)
    b = make([3.0] * 4, [30.0, 40.0], species=sp)
    out = merge.weighted_average([a, b])
    assert out.params["v"] is a.params["v"]


def test_merging_migrates_an_older_version():
    a = make([1.0] * 4, [0.0, 0.0])
    sp2 = SPECIES.add_param("extra", torch.full((3,), 2.0))
    b = nf.migrate(make([3.0] * 4, [2.0, 2.0]), sp2)
    out = merge.weighted_average([a, b])
    assert out.species is sp2
    assert close(out, "w", [2.0] * 4) and close(out, "extra", [2.0, 2.0, 2.0])
