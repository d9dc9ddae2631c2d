"""Model merging on particles: every method against a hand computation on tiny tensors, config, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import PopulationSizeError, SpeciesMismatchError, merge
from tests.helpers import Snapshot, mlp, tensor_equal


class Tiny(nn.Module):
    """Two float parameters and an integer one (which merging copies)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))
        self.v = nn.Parameter(torch.zeros(2))
        self.k = nn.Parameter(torch.tensor([7, 8]), requires_grad=False)


SPECIES = nf.particle(Tiny()).species


def make(w, v, k=(7, 8), species=SPECIES, dtype=torch.float32) -> nf.Particle:
    return nf.Particle(species, {
        "w": torch.tensor(w, dtype=dtype),
        "v": torch.tensor(v, dtype=dtype),
        "k": torch.tensor(k),
    })


def close(p: nf.Particle, name: str, expected, atol=1e-6) -> bool:
    return torch.allclose(p.params[name], torch.tensor(expected, dtype=torch.float32), atol=atol)


def vec(values) -> nf.Particle:
    """A particle of one float vector parameter ``x``."""
    values = torch.tensor(values, dtype=torch.float32)
    return nf.Particle(_vec_species(values.numel()), {"x": values})


_VEC = {}


def _vec_species(n: int):
    if n not in _VEC:
        m = nn.Module()
        m.x = nn.Parameter(torch.zeros(n))
        _VEC[n] = nf.particle(m).species
    return _VEC[n]


def x(p: nf.Particle) -> list[float]:
    return p.params["x"].tolist()


# -- linear --------------------------------------------------------------------------


def test_linear_matches_hand_computation():
    a = make([1.0, 2.0, 3.0, 4.0], [0.0, 4.0])
    b = make([5.0, 6.0, 7.0, 8.0], [4.0, 0.0])
    snap = Snapshot(a, b)
    soup = merge.linear([a, b], weight=[1.0, 3.0])
    assert snap.unchanged()
    assert soup.species is SPECIES and soup.population_size is None
    assert close(soup, "w", [4.0, 5.0, 6.0, 7.0])  # (1 a + 3 b) / 4
    assert close(soup, "v", [3.0, 1.0])
    assert torch.equal(soup.params["k"], torch.tensor([7, 8]))
    assert close(merge.linear([a, b]), "w", [3.0, 4.0, 5.0, 6.0])
    assert close(merge.linear([a, b], weight=[1.0, 3.0], normalize=False), "w", [16.0, 20.0, 24.0, 28.0])
    assert merge.weighted_average is merge.linear


def test_linear_of_a_population_equals_that_of_its_members():
    pop = nf.init_population(mlp(), 4, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    from_pop = merge.linear(pop, weight=w)
    from_list = merge.linear(nf.unstack(pop), weight=w)
    for name in pop.species.names:
        expected = sum(w[i] * pop.params[name][i] for i in range(4))
        assert torch.allclose(from_pop.params[name], expected, atol=1e-6)
        assert tensor_equal(from_list.params[name], from_pop.params[name])


def test_bf16_is_merged_in_float32_and_rounded_once():
    g = torch.Generator().manual_seed(0)
    m = nn.Module()
    m.x = nn.Parameter(torch.zeros(20000, dtype=torch.bfloat16))
    sp = nf.particle(m).species
    a = torch.randn(20000, generator=g).bfloat16()
    b = torch.randn(20000, generator=g).bfloat16()
    out = merge.linear([nf.Particle(sp, {"x": a}), nf.Particle(sp, {"x": b})], weight=[0.3, 0.7]).params["x"]
    exact = (0.3 * a.double() + 0.7 * b.double()).bfloat16()
    assert out.dtype == torch.bfloat16
    assert float((out == exact).float().mean()) > 0.99  # float32 arithmetic, one rounding to bf16
    naive = 0.3 * a + 0.7 * b  # computed in bf16
    assert float((naive == exact).float().mean()) < 0.9


# -- SLERP family ---------------------------------------------------------------------


def test_slerp_matches_hand_computation():
    a = make([1.0, 0.0, 0.0, 0.0], [1.0, 1.0], k=(1, 1))
    b = make([0.0, 2.0, 0.0, 0.0], [3.0, 3.0], k=(1, 1))
    snap = Snapshot(a, b)
    mid = merge.slerp(a, b, 0.5)
    assert snap.unchanged()
    s = math.sin(math.pi / 4)  # sin(0.5 * pi/2) / sin(pi/2)
    assert close(mid, "w", [s, 2 * s, 0.0, 0.0])
    assert close(mid, "v", [2.0, 2.0])  # parallel: lerp
    c0, c1 = math.sin(0.75 * math.pi / 2), math.sin(0.25 * math.pi / 2)
    assert close(merge.slerp(a, b, 0.25), "w", [c0, 2 * c1, 0.0, 0.0])
    assert close(merge.slerp(a, b, 0.0), "w", [1.0, 0.0, 0.0, 0.0])
    assert close(merge.slerp(a, b, 1.0), "w", [0.0, 2.0, 0.0, 0.0])


def test_slerp_zero_tensor_lerps_and_mergekit_rotates_from_it():
    a, b = vec([0.0, 0.0]), vec([4.0, 0.0])
    assert x(merge.slerp(a, b, 0.25)) == pytest.approx([1.0, 0.0])
    # mergekit: the zero vector's norm is taken as 1, its "direction" orthogonal: sin(t pi/2) b
    assert x(merge.slerp(a, b, 0.25, compat="mergekit")) == pytest.approx([4 * math.sin(0.25 * math.pi / 2), 0.0])


@pytest.mark.parametrize("t", [-0.1, 1.5])
def test_slerp_t_out_of_range(t):
    a = vec([1.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\].*" + str(t)):
        merge.slerp(a, a, t)


def test_slerp_with_more_than_two_models_is_refused():
    a, b, c = vec([1.0, 0.0]), vec([0.0, 1.0]), vec([1.0, 1.0])
    with pytest.raises(ValueError, match="exactly 1 model besides the base, got 2.*multislerp"):
        merge.merge_particles("slerp", [b, c], base=a, t=0.5)
    with pytest.raises(TypeError, match="single"):
        merge.slerp(nf.stack([a, b]), c, 0.5)


def test_multislerp_of_two_orthogonal_directions_is_their_geodesic_midpoint():
    out = merge.multislerp([vec([1.0, 0.0]), vec([0.0, 1.0])])
    h = 1 / math.sqrt(2)
    assert x(out) == pytest.approx([h, h], abs=1e-6)
    with_base = merge.multislerp([vec([2.0, 1.0]), vec([1.0, 2.0])], base=vec([1.0, 1.0]))
    assert x(with_base) == pytest.approx([1 + h, 1 + h], abs=1e-6)


def test_nuslerp_interpolates_at_w2_over_the_sum():
    out = merge.nuslerp([vec([1.0, 0.0]), vec([0.0, 1.0])], weight=[1.0, 3.0])  # t = 3/4
    assert x(out) == pytest.approx([math.cos(0.75 * math.pi / 2), math.sin(0.75 * math.pi / 2)], abs=1e-6)
    rows = merge.nuslerp([vec([1.0, 0.0]), vec([0.0, 1.0])], weight=[1.0, 1.0], base=vec([0.0, 0.0]))
    assert x(rows) == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)], abs=1e-6)


def test_karcher_of_two_orthogonal_unit_vectors_is_the_midpoint():
    out = merge.karcher([vec([1.0, 0.0]), vec([0.0, 1.0])])
    h = 1 / math.sqrt(2)
    assert x(out) == pytest.approx([h, h], abs=1e-5)
    scaled = merge.karcher([vec([2.0, 0.0]), vec([0.0, 4.0])])  # scale = mean norm 3
    assert x(scaled) == pytest.approx([3 * h, 3 * h], abs=1e-5)


# -- task vectors ---------------------------------------------------------------------


def test_task_arithmetic_matches_hand_computation():
    base = make([1.0, 1.0, 1.0, 1.0], [0.0, 0.0], k=(5, 5))
    ft1 = make([3.0, 1.0, 1.0, 1.0], [2.0, 0.0], k=(5, 5))
    ft2 = make([1.0, 0.0, 1.0, 5.0], [0.0, -2.0], k=(5, 5))
    snap = Snapshot(base, ft1, ft2)
    out = merge.task_arithmetic(base, [ft1, ft2], weight=[0.5, 2.0])
    assert snap.unchanged()
    assert close(out, "w", [2.0, -1.0, 1.0, 9.0])  # base + 0.5 tau1 + 2 tau2
    assert close(out, "v", [1.0, -4.0])
    assert close(merge.task_arithmetic(base, [ft1], weight=-1.0), "w", [-1.0, 1.0, 1.0, 1.0])
    assert close(merge.task_arithmetic(base, [ft1, ft2], weight=[0.5, 2.0], lambda_=0.5), "w", [1.5, 0.0, 1.0, 5.0])
    assert close(merge.task_arithmetic(base, [ft1, ft2], weight=[1.0, 3.0], normalize=True), "w",
                 [1.5, 0.25, 1.0, 4.0])  # base + (tau1 + 3 tau2) / 4


TAUS = ([1.0, -2.0, 3.0, 0.5], [-1.0, -1.0, 2.0, 4.0], [2.0, 0.5, -1.0, -0.2])


def _ties_inputs():
    base = make([1.0, 1.0, 1.0, 1.0], [0.0, 0.0], k=(9, 9))
    fts = [make([1.0 + v for v in tau], [1.0 * (i + 1), -1.0], k=(9, 9)) for i, tau in enumerate(TAUS)]
    return base, fts


def test_ties_without_trimming_matches_hand_computation():
    base, fts = _ties_inputs()
    snap = Snapshot(base, *fts)
    out = merge.ties(base, fts)
    assert snap.unchanged()
    # signs of the sum [2, -2.5, 4, 4.3]: (+, -, +, +); disjoint mean of the agreeing entries
    assert close(out, "w", [1.0 + 1.5, 1.0 - 1.5, 1.0 + 2.5, 1.0 + 2.25])
    assert close(out, "v", [2.0, -1.0])
    no_mean = merge.ties(base, fts, normalize=False)  # TIES without the disjoint mean: the agreeing sum
    assert close(no_mean, "w", [1.0 + 3.0, 1.0 - 3.0, 1.0 + 5.0, 1.0 + 4.5])


def test_ties_with_trimming_weights_and_lambda_matches_hand_computation():
    base, fts = _ties_inputs()
    out = merge.ties(base, fts, density=0.5)
    # keep 2 of 4 per task: [0,-2,3,0], [0,0,2,4], [2,0,-1,0]; signs (+,-,+,+)
    assert close(out, "w", [1.0 + 2.0, 1.0 - 2.0, 1.0 + 2.5, 1.0 + 4.0])
    assert close(out, "v", [2.0, 0.0])  # max(1, int(0.5 * 2)) = 1 entry per task
    tiny = merge.ties(base, fts, density=0.1)  # int(0.1 * 4) = 0, but at least one entry is kept
    # kept [0,0,3,0], [0,0,0,4], [2,0,0,0]; sums [2,0,3,4]: the tie at index 1 keeps the base
    assert close(tiny, "w", [1.0 + 2.0, 1.0, 1.0 + 3.0, 1.0 + 4.0])
    out = merge.ties(base, fts, weight=[1.0, 2.0, 1.0], lambda_=0.5)
    merged = [(1.0 + 2.0) / 2, (-2.0 - 2.0) / 3, (3.0 + 4.0) / 3, (0.5 + 8.0) / 3]
    assert close(out, "w", [1.0 + 0.5 * m for m in merged])
    per_model = merge.ties(base, fts, density=[0.25, 1.0, 1.0])  # task 1 keeps only its 3
    # taus [0,0,3,0], [-1,-1,2,4], [2,.5,-1,-.2]; sums [1,-.5,4,3.8]: (+,-,+,+)
    assert close(per_model, "w", [1.0 + 2.0, 1.0 - 1.0, 1.0 + 2.5, 1.0 + 4.0])


def test_ties_sign_tie_keeps_the_base_and_mergekit_elects_plus():
    base = vec([0.0, 0.0])
    a, b = vec([1.0, 2.0]), vec([-1.0, 1.0])  # sums [0, 3]
    assert x(merge.ties(base, [a, b])) == pytest.approx([0.0, 1.5])
    assert x(merge.ties(base, [a, b], compat="mergekit")) == pytest.approx([1.0, 1.5])


def test_dare_keeps_or_drops_and_rescales_by_the_density():
    big = _vec_species(10000)
    zero = nf.Particle(big, {"x": torch.zeros(10000)})
    one = nf.Particle(big, {"x": torch.ones(10000)})
    g = torch.Generator().manual_seed(0)
    out = merge.dare_linear(zero, [one], density=0.25, generator=g).params["x"]
    assert set(out.unique().tolist()) == {0.0, 4.0}  # dropped, or kept and divided by 0.25
    assert abs(float(out.mean()) - 1.0) < 0.05
    again = merge.dare_linear(zero, [one], density=0.25, generator=torch.Generator().manual_seed(0)).params["x"]
    assert tensor_equal(again, out)
    plain = merge.dare_linear(zero, [one], density=0.25, rescale=False, generator=torch.Generator().manual_seed(0))
    assert set(plain.params["x"].unique().tolist()) == {0.0, 1.0}
    l1 = merge.dare_linear(zero, [one], density=0.25, compat="mergekit", generator=torch.Generator().manual_seed(0))
    assert float(l1.params["x"].abs().sum()) == pytest.approx(10000.0)  # mergekit: the L1 norm is kept
    full = merge.dare_ties(vec([1.0, 1.0]), [vec([2.0, 0.0]), vec([3.0, -1.0])], density=1.0)
    assert x(full) == pytest.approx([4.0, -2.0])  # taus [1,-1], [2,-2]; no normalisation: 1 + 3, 1 - 3


def test_breadcrumbs_drops_the_largest_and_smallest():
    base = vec([0.0] * 10)
    ft = vec([float(i) for i in range(1, 11)])
    out = merge.breadcrumbs(base, [ft], density=0.5, gamma=0.1)
    # 1 outlier (10) dropped, the next 5 kept (9..5), the 4 smallest dropped
    assert x(out) == [0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0]
    ties_variant = merge.breadcrumbs_ties(base, [ft, vec([-1.0] * 10)], density=0.5, gamma=0.1)
    assert x(ties_variant)[4:9] == [5.0, 6.0, 7.0, 8.0, 9.0]


def test_della_keeps_entries_with_rank_probabilities_and_divides_by_them():
    m = 50
    base = vec([0.0] * m)
    ft = vec([float(i + 1) for i in range(m)])  # magnitude rank i
    out = x(merge.della(base, [ft], density=0.5, epsilon=0.2, generator=torch.Generator().manual_seed(1)))
    for i, value in enumerate(out):
        p = 0.3 + 0.4 * i / (m - 1)
        assert value == 0.0 or value == pytest.approx((i + 1) / p, rel=1e-6)
    assert 0 < sum(v != 0 for v in out) < m
    with pytest.raises(ValueError, match="density - epsilon > 0"):
        merge.della(base, [ft], density=0.1, epsilon=0.2)


def test_sce_matches_hand_computation():
    base = vec([0.0, 0.0, 0.0])
    a, b = vec([1.0, -1.0, 2.0]), vec([3.0, 1.0, 0.0])
    # c = mean(tau^2): a 2, b 10/3; normalised 0.375, 0.625; signs of the sum (+, 0, +)
    ca, cb = 0.375, 0.625
    out = x(merge.sce(base, [a, b]))
    assert out == pytest.approx([(ca * 1 + cb * 3) / (ca + cb), 0.0, 2.0], abs=1e-6)
    assert x(merge.sce(base, [a, b], compat="mergekit"))[1] == pytest.approx(1.0)  # the tie elects +: b's entry
    top = x(merge.sce(base, [a, b], select_topk=0.5))  # variances [1, 1, 1]: keep 1 of 3 (the first)
    # selected taus [1,0,0], [3,0,0]: c = (1/3, 3) normalised (0.1, 0.9)
    assert top == pytest.approx([0.1 * 1 + 0.9 * 3, 0.0, 0.0], abs=1e-6)


def test_ram_and_ramplus_match_hand_computation():
    base = vec([0.0, 0.0, 0.0, 0.0])
    a, b = vec([1.0, 0.0, 2.0, 0.0]), vec([0.0, 0.0, 4.0, 3.0])
    assert x(merge.ram(base, [a, b])) == pytest.approx([1.0, 0.0, 3.0, 3.0])  # unique kept, shared averaged
    # rho = 1 shared / 1 unique for each, clamped to alpha 0.2: unique entries scaled by 1.02
    assert x(merge.ramplus_tl(base, [a, b])) == pytest.approx([1.02, 0.0, 3.0, 3.06])


# -- specialised ----------------------------------------------------------------------


def test_model_stock_matches_hand_computation():
    base = vec([1.0, 1.0])
    orth = merge.model_stock(base, [vec([2.0, 1.0]), vec([1.0, 2.0])])  # cos 0: t = 0, the base
    assert x(orth) == pytest.approx([1.0, 1.0])
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    out = merge.model_stock(base, [vec([2.0, 1.0]), vec([2.0, 2.0])])  # offsets (1,0), (1,1)
    assert x(out) == pytest.approx([1 + t * 1.0, 1 + t * 0.5], abs=1e-6)


def test_nearswap_matches_hand_computation():
    base, other = vec([0.0, 0.0, 0.0]), vec([1e-5, 0.5, 2.0])
    w = [1.0, 1e-4 / 0.5, 1e-4 / 2.0]
    assert x(merge.nearswap(base, other, 1e-4)) == pytest.approx([wi * o for wi, o in zip(w, [1e-5, 0.5, 2.0])], rel=1e-5)


def test_arcee_fusion_takes_only_the_outstanding_change():
    base = vec([0.0] * 8)
    other = vec([0.0, 0.01, 0.0, 0.01, 0.0, 3.0, 0.01, 0.0])
    # importance |d| * KL (one row): large only at index 5; median + 1.5 IQR lies below it
    assert x(merge.arcee_fusion(base, other)) == pytest.approx([0.0] * 5 + [3.0] + [0.0] * 2)


def test_passthrough_copies_one_model_and_refuses_several():
    a = vec([1.0, 2.0])
    out = merge.passthrough(a, scale=2.0)
    assert x(out) == [2.0, 4.0]
    assert x(merge.passthrough(a)) == [1.0, 2.0] and out.params["x"].data_ptr() != a.params["x"].data_ptr()
    with pytest.raises(TypeError, match="layer stacking"):
        merge.passthrough([a, a])


# -- across methods ---------------------------------------------------------------------


def _calls(a, b, c=None):
    c = c if c is not None else b
    return [
        lambda: merge.linear([a, b]),
        lambda: merge.slerp(a, b, 0.5),
        lambda: merge.task_arithmetic(a, [b]),
        lambda: merge.ties(a, [b, c]),
        lambda: merge.dare_ties(a, [b], density=0.5, generator=torch.Generator().manual_seed(0)),
        lambda: merge.model_stock(a, [b, c]),
        lambda: merge.karcher([a, b]),
    ]


@pytest.mark.parametrize("which", range(7))
def test_merging_particles_of_different_species_is_refused(which):
    a = make([1.0] * 4, [0.0, 0.0])
    other = nf.particle(Tiny())  # same architecture, another species
    with pytest.raises(SpeciesMismatchError, match="species"):
        _calls(a, other)[which]()


@pytest.mark.parametrize("which", range(7))
def test_non_operational_parameters_come_from_the_first_input(which):
    sp = SPECIES.with_config("v", operational=False)
    a = make([1.0] * 4, [10.0, 20.0], species=sp)
    b = make([3.0, 2.0, 1.0, 0.5], [30.0, 40.0], species=sp)
    c = make([2.0, 4.0, 1.0, 3.0], [50.0, 60.0], species=sp)
    out = _calls(a, b, c)[which]()
    assert out.species is sp
    assert torch.equal(out.params["v"], torch.tensor([10.0, 20.0]))
    assert out.params["v"].data_ptr() != a.params["v"].data_ptr()  # clone=True: a copy


def test_clone_false_shares_and_integers_must_agree():
    sp = SPECIES.with_config("v", operational=False, clone=False)
    a = make([1.0] * 4, [10.0, 20.0], species=sp)
    b = make([3.0] * 4, [30.0, 40.0], species=sp)
    assert merge.linear([a, b]).params["v"] is a.params["v"]
    c = make([1.0] * 4, [0.0, 0.0], k=(1, 2))
    d = make([1.0] * 4, [0.0, 0.0], k=(3, 4))
    with pytest.raises(ValueError, match="'k' is not floating point"):
        merge.linear([c, d])


def test_merging_migrates_an_older_version():
    a = make([1.0] * 4, [0.0, 0.0])
    sp2 = SPECIES.add_param("extra", torch.full((3,), 2.0))
    b = nf.migrate(make([3.0] * 4, [2.0, 2.0]), sp2)
    out = merge.linear([a, b])
    assert out.species is sp2
    assert close(out, "w", [2.0] * 4) and close(out, "extra", [2.0, 2.0, 2.0])


def test_bad_parameters_are_refused_with_clear_messages():
    base, fts = _ties_inputs()
    with pytest.raises(ValueError, match=r"density.*\(0, 1\].*1.5"):
        merge.ties(base, fts, density=1.5)
    with pytest.raises(ValueError, match=r"density.*\(0, 1\].*0"):
        merge.dare_ties(base, fts, density=[0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="non-zero sum"):
        merge.linear(fts[:2], weight=[1.0, -1.0])
    with pytest.raises(PopulationSizeError, match=r"3 values.*got 2"):
        merge.ties(base, fts, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="unknown merge method 'soup'"):
        merge.merge_particles("soup", fts)
    with pytest.raises(TypeError, match="unexpected parameter.*'densty'"):
        merge.merge_particles("ties", fts, base=base, densty=0.5)
    with pytest.raises(TypeError, match="needs a base"):
        merge.merge_particles("ties", fts)
    with pytest.raises(TypeError, match="Generator"):
        merge.dare_linear(base, fts, density=0.5, generator=3)
    with pytest.raises(ValueError, match="compat"):
        merge.ties(base, fts, compat="yes")
    with pytest.raises(ValueError, match="at least 2 models"):
        merge.model_stock(base, fts[:1])


def test_merge_grouped_sets_a_parameter_per_group():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    a = nf.particle(net)
    b = a + 1.0
    groups = merge.layer_groups(a.species)
    assert groups == (("0.weight", "0.bias"), ("2.weight", "2.bias"))
    out = merge.merge_grouped("linear", [a, b], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), groups=groups)
    assert tensor_equal(out.params["0.weight"], a.params["0.weight"])
    assert tensor_equal(out.params["2.bias"], b.params["2.bias"])
    pop = merge.merge_grouped("slerp", [b], torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), groups=groups,
                              parameter="t", base=a)
    assert pop.population_size == 3
    assert tensor_equal(pop.params["2.weight"][1], b.params["2.weight"])
    assert tensor_equal(pop.params["0.bias"][2], a.params["0.bias"])
    with pytest.raises(ValueError, match=r"expects shape \[2, 2\] \(2 groups, 2 models"):
        merge.merge_grouped("linear", [a, b], torch.ones(3, 2), groups=groups)


def _experts(k=3, seed=1, sizes=(5, 4, 3)):
    base = nf.particle(mlp(0, sizes))
    g = torch.Generator().manual_seed(seed)
    return base, [base + 0.1 * base.randn(generator=g) for _ in range(k)]


@pytest.mark.parametrize("method,search,kw,broadcast", [
    ("linear", ("weight",), {}, True),
    ("linear", ("weight",), {"normalize": False}, True),
    ("task_arithmetic", ("weight", "lambda_"), {}, True),
    ("task_arithmetic", ("weight",), {"normalize": True}, True),
    ("ties", ("weight", "density"), {}, True),
    ("ties", ("density", "lambda_"), {"compat": "mergekit"}, True),
    ("dare_ties", ("weight", "density"), {}, True),
    ("dare_linear", ("density",), {"rescale": False}, True),
    ("breadcrumbs_ties", ("weight", "density"), {"gamma": 0.1}, True),
    ("breadcrumbs", ("density", "gamma"), {"compat": "mergekit"}, True),
    ("dare_ties", ("weight", "density"), {"compat": "mergekit"}, False),  # L1 rescale: member by member
    ("della", ("weight",), {"density": 0.5, "epsilon": 0.1}, False),
    ("slerp", ("t",), {}, False),
])
def test_a_population_of_recipes_equals_its_members_merged_one_by_one(monkeypatch, method, search, kw, broadcast):
    from nytorch_fn._merge import _grouped

    base, fts = _experts(1 if method == "slerp" else 3, sizes=(40, 30, 3))  # 1200 entries: radix selection
    g = torch.Generator().manual_seed(2)
    groups = merge.layer_groups(base.species)
    n, G, K = 5, len(groups), len(fts)
    shapes = {"weight": (n, G, K), "density": (n, G, K), "lambda_": (n, G), "t": (n, G), "gamma": (n, G, K)}
    coeffs = {p: torch.rand(shapes[p], generator=g, dtype=torch.float64) * 0.9 + 0.05 for p in search}
    if "density" in coeffs:
        coeffs["density"][0] = 1.0  # a member that keeps everything
        coeffs["density"][1, 0, 0] = 1.0
    if "gamma" in coeffs:
        coeffs["gamma"] *= 0.1
    if "weight" in coeffs:
        coeffs["weight"][2] = 1.0
    snap = Snapshot(base, fts, coeffs)
    b = None if method == "linear" else base
    calls = []
    real = _grouped.merge_particles
    monkeypatch.setattr(_grouped, "merge_particles", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr("nytorch_fn._merge._select.SMALL", 100)
    pop = merge.merge_grouped(method, fts, coeffs, groups=groups, base=b, generator=torch.Generator().manual_seed(3),
                              **kw)
    assert pop.population_size == n
    assert (len(calls) == 1) == broadcast  # one merge for the tensors outside the groups, or one per member
    for i in range(n):
        one = merge.merge_grouped(method, fts, {p: c[i] for p, c in coeffs.items()}, groups=groups, base=b,
                                  generator=torch.Generator().manual_seed(3), **kw)
        for name in base.species.names:
            assert tensor_equal(pop.params[name][i], one.params[name]), (i, name)
    assert snap.unchanged()


def test_grouped_recipes_by_hand_and_group_shorthands():
    base, fts = _experts(2)
    w = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    one = merge.merge_grouped("linear", fts, w, groups="all")
    for name in base.species.names:
        a, b = fts[0].params[name], fts[1].params[name]
        assert tensor_equal(one.params[name], (a * 0.25 + b * 0.75) / 1.0)
    per_tensor = merge.merge_grouped("task_arithmetic", fts, torch.ones(4, 2), groups="tensors", base=base)
    assert tensor_equal(per_tensor.params["2.bias"], base.params["2.bias"] + ((fts[0].params["2.bias"] - base.params["2.bias"])
                                                                            + (fts[1].params["2.bias"] - base.params["2.bias"])))


def test_bad_grouped_recipes_are_refused_by_name():
    base, fts = _experts(2)
    groups = merge.layer_groups(base.species)
    w = torch.ones(2, 2)
    with pytest.raises(ValueError, match="'9.weight', which is not a parameter"):
        merge.merge_grouped("linear", fts, w, groups=[["0.weight"], ["9.weight"]])
    with pytest.raises(ValueError, match="in groups 0 and 1"):
        merge.merge_grouped("linear", fts, w, groups=[["0.weight"], ["0.weight"]])
    with pytest.raises(ValueError, match="groups expects 'layers'"):
        merge.merge_grouped("linear", fts, w, groups="rows")
    with pytest.raises(TypeError, match="no numeric parameter 'normalize'"):
        merge.merge_grouped("linear", fts, {"normalize": w}, groups=groups)
    with pytest.raises(ValueError, match="disagree on the population size"):
        merge.merge_grouped("ties", fts, {"weight": torch.ones(3, 2, 2), "density": torch.ones(2, 2)}, groups=groups,
                            base=base)
    with pytest.raises(ValueError, match="density.*expects a value in \\(0, 1\\]"):
        merge.merge_grouped("ties", fts, {"density": torch.zeros(3, 2, 2)}, groups=groups, base=base)
    with pytest.raises(ValueError, match="non-zero sum"):
        merge.merge_grouped("linear", fts, torch.zeros(3, 2, 2), groups=groups)
