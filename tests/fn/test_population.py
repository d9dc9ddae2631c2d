"""Populations: building, indexing, arithmetic, forward passes, per-member gradients, selection."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nytorch_fn as nf
from nytorch_fn import NotAPopulationError, PopulationSizeError, SpeciesMismatchError
from nytorch_fn import optim
from tests.helpers import Snapshot, mlp, tensor_equal, tree_equal


def _pop(n: int = 5, seed: int = 0) -> nf.Particle:
    return nf.init_population(mlp(seed), n, generator=torch.Generator().manual_seed(seed))


# -- building -----------------------------------------------------------------


def test_stack_unstack_round_trip_and_len():
    p = nf.particle(mlp())
    members = [p.randn(generator=torch.Generator().manual_seed(i)) for i in range(4)]
    pop = nf.stack(members)
    assert len(pop) == 4 and pop.population_size == 4
    for name, t in pop.params.items():
        assert t.shape == (4, *p.species.shapes[name])
    back = nf.unstack(pop)
    assert len(back) == 4
    for m, b in zip(members, back):
        assert b.species is p.species
        assert all(tensor_equal(x, y) for x, y in zip(m.tensors, b.tensors))


def test_stack_empty_and_mixed_species_and_populations_are_refused():
    with pytest.raises(ValueError, match="empty"):
        nf.stack([])
    a, b = nf.particle(mlp(0)), nf.particle(mlp(1))
    with pytest.raises(SpeciesMismatchError, match="species"):
        nf.stack([a, b])
    with pytest.raises(TypeError, match="concat"):
        nf.stack([nf.stack([a, a]), a])
    with pytest.raises(TypeError):
        nf.stack([a, "not a particle"])


def test_stack_migrates_older_versions_to_the_newest():
    p = nf.particle(mlp())
    s2 = p.species.add_param("0.extra", torch.full((2,), 7.0))
    newer = nf.migrate(p, s2)
    pop = nf.stack([p, newer])
    assert pop.species is s2
    assert torch.equal(pop.params["0.extra"], torch.full((2, 2), 7.0))


def test_len_of_a_single_particle_is_a_type_error():
    with pytest.raises(TypeError, match="population"):
        len(nf.particle(mlp()))


def test_indexing_int_negative_slice_tensor_mask():
    pop = _pop(5)
    w = pop.params["0.weight"]
    assert torch.equal(pop[1].params["0.weight"], w[1])
    assert pop[1].population_size is None
    assert torch.equal(pop[-1].params["0.weight"], w[4])
    assert torch.equal(pop[1:4].params["0.weight"], w[1:4]) and len(pop[1:4]) == 3
    idx = torch.tensor([4, 0, 0])
    assert torch.equal(pop[idx].params["0.weight"], w[idx])
    mask = torch.tensor([True, False, True, False, True])
    assert torch.equal(pop[mask].params["0.weight"], w[mask]) and len(pop[mask]) == 3
    assert torch.equal(pop[[0, 2]].params["0.weight"], w[[0, 2]])


@pytest.mark.parametrize("index", [5, -6, torch.tensor([0, 5]), torch.tensor([True, False])])
def test_index_out_of_range_or_wrong_mask_names_the_size(index):
    pop = _pop(5)
    with pytest.raises(IndexError, match="5|\\(5,\\)"):
        pop[index]


def test_indexing_a_single_particle_is_refused():
    with pytest.raises(TypeError, match="population"):
        nf.particle(mlp())[0]


def test_concat_joins_populations_and_singles():
    pop = _pop(3)
    single = pop[0].clone()
    joined = nf.concat([pop, single, pop[1:]])
    assert len(joined) == 3 + 1 + 2
    assert torch.equal(joined.params["2.bias"][3], single.params["2.bias"])
    with pytest.raises(ValueError):
        nf.concat([])


def test_init_population_runs_each_layers_initialiser_reproducibly():
    m = mlp()
    snap = Snapshot(m)
    a = nf.init_population(m, 6, generator=torch.Generator().manual_seed(3))
    b = nf.init_population(m, 6, generator=torch.Generator().manual_seed(3))
    assert snap.unchanged()
    assert all(tensor_equal(x, y) for x, y in zip(a.tensors, b.tensors))
    w = a.params["0.weight"]  # nn.Linear(4, 8): kaiming uniform, bound 1/sqrt(4)
    assert w.abs().max() <= 0.5 + 1e-6
    assert not torch.equal(w[0], w[1])
    state = torch.random.get_rng_state()
    nf.init_population(m, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.random.get_rng_state())


def test_random_population_follows_config():
    p = nf.particle(mlp())
    sp = p.species.with_config("2", operational=False, clone=False)
    p = nf.migrate(p, sp)
    pop = nf.random_population(p, 4, generator=torch.Generator().manual_seed(0))
    assert len(pop) == 4
    assert torch.equal(pop.params["2.weight"], p.params["2.weight"].expand(4, 3, 8))
    assert pop.params["2.weight"].untyped_storage().data_ptr() == p.params["2.weight"].untyped_storage().data_ptr()
    assert not torch.equal(pop.params["0.weight"][0], pop.params["0.weight"][1])


def test_stack_modules_makes_one_species_and_checks_architecture():
    modules = [mlp(i) for i in range(3)]
    pop = nf.stack_modules(modules)
    for i, m in enumerate(modules):
        assert torch.equal(pop.params["0.weight"][i], m[0].weight.detach())
    with pytest.raises(SpeciesMismatchError):
        nf.stack_modules([mlp(0), mlp(1, sizes=(4, 9, 3))])
    with pytest.raises(ValueError):
        nf.stack_modules([])


def test_to_modules_gives_independent_modules_matching_members():
    pop = _pop(3)
    mods = nf.to_modules(pop)
    x = torch.randn(2, 4)
    for i, m in enumerate(mods):
        assert torch.allclose(m(x), nf.apply(pop[i], x))
    with torch.no_grad():
        mods[0][0].weight.add_(1.0)
    assert not torch.allclose(mods[0][0].weight, pop.params["0.weight"][0])


# -- arithmetic ---------------------------------------------------------------


def test_population_with_number_particle_population_and_vector():
    pop = _pop(4)
    best = pop[2].clone()
    w = torch.tensor([0.0, 0.5, 1.0, 2.0])
    W = pop.params["0.weight"]
    assert torch.allclose((0.5 * pop + 0.5 * best).params["0.weight"], 0.5 * W + 0.5 * best.params["0.weight"])
    assert torch.allclose((best - pop).params["0.weight"], best.params["0.weight"] - W)
    assert torch.allclose((pop * pop).params["0.weight"], W * W)
    assert torch.allclose((w * pop).params["0.weight"], w[:, None, None] * W)
    assert torch.allclose((pop / (w + 1)).params["0.bias"], pop.params["0.bias"] / (w + 1)[:, None])
    assert torch.allclose((w - pop).params["0.bias"], w[:, None] - pop.params["0.bias"])


def test_population_arithmetic_keeps_non_operational_from_left():
    pop = _pop(4)
    sp = pop.species.with_config("2.bias", operational=False)
    pop = nf.migrate(pop, sp)
    single = pop[0].clone()
    out = single + pop  # single on the left: its non-operational value, broadcast
    assert torch.equal(out.params["2.bias"], single.params["2.bias"].expand(4, 3))
    out = pop + single
    assert torch.equal(out.params["2.bias"], pop.params["2.bias"])


def test_population_size_errors_name_both_sizes():
    a, b = _pop(4), _pop(3)
    b = nf.Particle(a.species, dict(zip(a.species.names, b.tensors)))
    with pytest.raises(PopulationSizeError, match="4.*3"):
        a + b
    with pytest.raises(PopulationSizeError, match="4"):
        a * torch.ones(3)


def test_bad_vector_dtype_is_refused_and_nothing_changes():
    pop = _pop(3)
    snap = Snapshot(pop)
    with pytest.raises(TypeError, match="dtype"):
        pop * torch.ones(3, dtype=torch.bool)
    assert snap.unchanged()


@settings(max_examples=20, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3), st.integers(1, 6))
def test_fused_blend_matches_unfused_per_member(a, b, n):
    pop = _pop(n)
    best = pop[0].randn(generator=torch.Generator().manual_seed(1))
    snap = Snapshot(pop, best)
    out = a * pop + b * best
    for name in pop.species.names:
        expected = pop.params[name] * a + best.params[name] * b
        assert torch.allclose(out.params[name], expected, atol=1e-5)
    assert snap.unchanged()


# -- donation -----------------------------------------------------------------


def test_lerp_donated_writes_the_blend_into_the_population_storage_with_the_same_bits():
    pop = _pop(4)
    best = pop[1].clone()
    expected = [torch.lerp(t, b, 0.75) for t, b in zip(pop.tensors, best.tensors)]
    fresh = nf.stack(nf.unstack(pop))
    ptrs = [t.data_ptr() for t in fresh.tensors]
    out = nf.lerp(fresh, best, 0.75, donate=True)
    assert [t.data_ptr() for t in out.tensors] == ptrs
    assert all(torch.equal(x, y) for x, y in zip(out.tensors, expected))


def test_donation_is_refused_when_another_argument_shares_the_storage():
    pop = _pop(4)
    snap = Snapshot(pop)
    with pytest.raises(ValueError, match="share no storage"):
        nf.lerp(pop, pop[2], 0.3, donate=True)
    with pytest.raises(ValueError, match="share no storage"):
        optim.apply_updates(pop, pop, donate=True)
    assert snap.unchanged()


def test_donated_update_under_no_grad_writes_in_place_and_with_grad_allocates():
    pop = _pop(3)
    params = nf.Particle(pop.species, {n: t.clone().requires_grad_() for n, t in pop.params.items()})
    target = nf.stack(nf.unstack(pop))
    ptrs = [t.data_ptr() for t in target.tensors]
    updates = params * 0.5
    expected = [(x + u).detach() for x, u in zip(target.tensors, updates.tensors)]
    with torch.no_grad():
        out = optim.apply_updates(target, updates, donate=True)
    assert [t.data_ptr() for t in out.tensors] == ptrs
    assert all(torch.equal(x, y) and not x.requires_grad for x, y in zip(out.tensors, expected))
    # with gradients on, the sum must be recorded: the donated storage is not written
    target = nf.stack(nf.unstack(pop))
    before = [t.clone() for t in target.tensors]
    out = optim.apply_updates(target, updates, donate=True)
    assert all(t.grad_fn is not None for t in out.tensors)
    assert all(torch.equal(t, b) for t, b in zip(target.tensors, before))


def test_donated_sgd_step_equals_the_fresh_one_bit_for_bit():
    pop = _pop(3)
    grads = pop.randn(generator=torch.Generator().manual_seed(5))
    opt = optim.sgd(0.1, momentum=0.9)
    state = opt.init(pop)
    fresh_updates, fresh_state = opt.update(grads, state)
    fresh = optim.apply_updates(pop, fresh_updates)
    own_state = opt.init(pop)
    own = nf.stack(nf.unstack(pop))
    updates, donated_state = opt.update(grads, own_state, donate=True)
    donated = optim.apply_updates(own, updates, donate=True)
    assert tree_equal(fresh, donated)
    assert tree_equal(fresh_state.momentum, donated_state.momentum)
    assert donated_state.momentum.tensors[0].data_ptr() == own_state.momentum.tensors[0].data_ptr()


# -- forward passes -----------------------------------------------------------


def test_vmap_apply_shared_and_per_member_inputs_equal_a_loop():
    pop = _pop(5)
    x = torch.randn(7, 4)
    y = nf.vmap_apply(pop, x)
    assert y.shape == (5, 7, 3)
    for i in range(5):
        assert torch.allclose(y[i], nf.apply(pop[i], x), atol=1e-6)
    xs = torch.randn(5, 7, 4)
    y, _ = nf.vmap_apply_with(pop, (xs,), in_dims=0)
    for i in range(5):
        assert torch.allclose(y[i], nf.apply(pop[i], xs[i]), atol=1e-6)
    y2, _ = nf.vmap_apply_with(pop, (xs,), in_dims=0, chunk_size=2)
    assert torch.allclose(y, y2)


def test_vmap_apply_refuses_wrong_sizes_and_single_particles():
    pop = _pop(5)
    with pytest.raises(PopulationSizeError, match="5"):
        nf.vmap_apply_with(pop, (torch.randn(4, 7, 4),), in_dims=0)
    with pytest.raises(TypeError, match="population"):
        nf.vmap_apply(pop[0], torch.randn(2, 4))


def test_vmap_randomness_policy_is_exposed():
    pop = nf.init_population(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), 3)
    x = torch.ones(2, 4)
    with pytest.raises(RuntimeError):
        nf.vmap_apply_with(pop, (x,), training=True)
    torch.manual_seed(0)
    y, _ = nf.vmap_apply_with(pop, (x,), training=True, randomness="different")
    assert y.shape == (3, 2, 4)


def test_batchnorm_eval_and_train_per_member_statistics():
    module = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    pop = nf.init_population(module, 3, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in pop.species.buffers.items()}
    xs = torch.randn(3, 8, 4)
    out, stats = nf.vmap_apply_with(pop, (xs,), in_dims=0, training=True)
    assert stats["1.running_mean"].shape == (3, 4)
    for i in range(3):
        ref = nf.to_module(pop[i]).train()
        expected = ref(xs[i])
        assert torch.allclose(out[i], expected, atol=1e-5)
        assert torch.allclose(stats["1.running_mean"][i], ref[1].running_mean, atol=1e-6)
        assert int(stats["1.num_batches_tracked"][i]) == 1
    for k, v in pop.species.buffers.items():
        assert torch.equal(v, before[k])
    # eval mode with the per-member statistics just returned
    out_eval, _ = nf.vmap_apply_with(pop, (xs,), in_dims=0, buffers=stats, training=False)
    ref = nf.to_module(pop[1]).eval()
    ref[1].running_mean.copy_(stats["1.running_mean"][1])
    ref[1].running_var.copy_(stats["1.running_var"][1])
    assert torch.allclose(out_eval[1], ref(xs[1]), atol=1e-5)


def test_per_member_gradients_equal_a_loop():
    pop = _pop(4)
    x, target = torch.randn(6, 4), torch.randn(6, 3)

    def loss(p, xx):
        return (nf.apply(p, xx) - target).pow(2).mean()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(0, None))(pop, x)
    assert grads.species is pop.species and len(grads) == 4
    for i in range(4):
        net = nf.to_module(pop[i])
        ((net(x) - target).pow(2).mean()).backward()
        for name, param in net.named_parameters():
            assert torch.allclose(grads.params[name][i], param.grad, atol=1e-6)


# -- selection and reductions -------------------------------------------------


def test_best_top_k_with_nan_policy():
    pop = _pop(5)
    fit = torch.tensor([0.1, 0.9, float("nan"), 0.5, 0.2])
    assert torch.equal(nf.best(pop, fit).params["0.bias"], pop.params["0.bias"][1])
    assert torch.equal(nf.best(pop, fit, maximize=False).params["0.bias"], pop.params["0.bias"][0])
    top = nf.top_k(pop, fit, 3)
    assert torch.equal(top.params["0.bias"], pop.params["0.bias"][torch.tensor([1, 3, 4])])
    with pytest.raises(ValueError, match="NaN"):
        nf.best(pop, torch.full((5,), float("nan")))
    with pytest.raises(PopulationSizeError, match="5"):
        nf.best(pop, torch.ones(4))
    with pytest.raises(ValueError, match="k"):
        nf.top_k(pop, fit, 6)
    with pytest.raises(TypeError, match="single"):
        nf.best(pop[0], torch.ones(1))


def test_mean_and_weighted_mean():
    pop = _pop(4)
    w = torch.tensor([1.0, 0.0, 3.0, 0.0])
    assert torch.allclose(nf.mean(pop).params["0.weight"], pop.params["0.weight"].mean(0))
    expected = (pop.params["0.weight"][0] + 3 * pop.params["0.weight"][2]) / 4
    assert torch.allclose(nf.weighted_mean(pop, w).params["0.weight"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="zero"):
        nf.weighted_mean(pop, torch.zeros(4))
    with pytest.raises(PopulationSizeError):
        nf.weighted_mean(pop, torch.ones(3))
