"""migrate: replaying recorded edits; cross-version operations; version chains."""

import operator

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn

import nytorch_fn as nf
from nytorch_fn import migrate, particle, to_module

from ..helpers import Snapshot, fingerprints_equal, mlp, species_fingerprint, tensor_equal, tree_equal


def test_migrate_add_param_gives_each_particle_its_own_copy():
    p = particle(mlp())
    q = p.randn()
    value = torch.arange(3.0)
    s2 = p.species.add_param("0.scale", value)
    value.add_(100)  # the caller's tensor is not the edit's value
    mp, mq = migrate(p, s2), migrate(q, s2)
    assert mp.species is s2 and mq.species is s2
    assert tensor_equal(mp.params["0.scale"], torch.arange(3.0))
    assert tensor_equal(mq.params["0.scale"], torch.arange(3.0))
    assert mp.params["0.scale"].data_ptr() != mq.params["0.scale"].data_ptr()
    assert mp.params["0.scale"].data_ptr() != s2.edit.value.data_ptr()
    # untouched tensors are shared, not copied
    assert all(mp.params[n] is p.params[n] for n in p.species.names)


def test_migrate_to_same_species_is_identity():
    p = particle(mlp())
    assert migrate(p, p.species) is p


def test_migrate_chain_and_never_modifies_input():
    p = particle(mlp())
    snap = Snapshot(p)
    s = (
        p.species.add_module("head", nn.Linear(3, 2))
        .remove("0")
        .with_config("2", operational=False)
        .add_buffer("mask", torch.ones(3))
        .set_none("2.bias")
    )
    m = migrate(p, s)
    assert m.species.names == ("2.weight", "head.weight", "head.bias")
    assert m.params["2.weight"] is p.params["2.weight"]
    assert snap.unchanged()


def test_migrate_refuses_backwards_branches_and_strangers():
    p = particle(mlp())
    s1 = p.species.add_param("x", torch.zeros(1))
    branch = p.species.add_param("y", torch.zeros(1))
    p1 = migrate(p, s1)
    with pytest.raises(ValueError, match="earlier version") as info:
        migrate(p1, p.species)
    assert "species" in str(info.value).lower()
    with pytest.raises(ValueError, match="another branch"):
        migrate(p1, branch)
    with pytest.raises(ValueError, match="another branch"):
        migrate(p, particle(mlp()).species)
    with pytest.raises(TypeError, match="Particle"):
        migrate(mlp(), s1)
    with pytest.raises(TypeError, match="Species"):
        migrate(p, "species")


@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.truediv])
def test_op_across_versions_migrates_the_older_first(op):
    p = particle(mlp())
    s2 = p.species.add_param("2.scale", torch.full((3,), 2.0)).with_config("0", tags={"x": 1})
    q = migrate(p.randn(generator=torch.Generator().manual_seed(0)), s2)
    snap = Snapshot(p, q)
    for out, older_left in ((op(p, q), True), (op(q, p), False)):
        assert out.species is s2
        mp = migrate(p, s2)
        ref = [op(a, b) if older_left else op(b, a) for a, b in zip(mp.tensors, q.tensors)]
        assert all(torch.allclose(a, b) for a, b in zip(out.tensors, ref))
    assert p.species is not s2 and snap.unchanged()
    assert (0.5 * p + 0.5 * q).species is s2
    assert p.zip_with(q, lambda a, b, cfg: a + b).species is s2


def test_op_across_diverging_branches_refused():
    p = particle(mlp())
    left = migrate(p, p.species.add_param("x", torch.zeros(1)))
    right = migrate(p, p.species.add_param("y", torch.zeros(1)))
    for op in (operator.add, operator.mul, lambda a, b: 0.5 * a + 0.5 * b):
        with pytest.raises(ValueError, match="species"):
            op(left, right)


def test_migrate_population_repeats_added_value():
    p = particle(mlp())
    members = [p.randn() for _ in range(3)]
    pop = torch.utils._pytree.tree_map(lambda *ts: torch.stack(ts), *members)
    s2 = p.species.add_param("2.scale", torch.arange(3.0))
    m = migrate(pop, s2)
    assert m.params["2.scale"].shape == (3, 3)
    assert all(tensor_equal(m.params["2.scale"][i], torch.arange(3.0)) for i in range(3))


# -- a state machine over version chains -----------------------------------------------


def make_root():
    torch.manual_seed(0)
    m = nn.Module()
    m.a = nn.Linear(2, 3)
    m.b = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    m.register_buffer("r", torch.ones(2))
    return m


LEAVES = ["u", "v", "weight", "bias", "a", "b", "r"]
SUBMODULES = {
    "linear": lambda: nn.Linear(2, 2),
    "seq_bn": lambda: nn.Sequential(nn.Linear(1, 2), nn.BatchNorm1d(2)),
    "none": lambda: None,
}


def _under(name, prefix):
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _slot(species, path):
    """What the newest skeleton holds at ``path``: (kind, is_none) or (None, None) if free."""
    prefix, _, leaf = path.rpartition(".")
    module = species.skeleton
    for part in prefix.split(".") if prefix else []:
        module = module._modules[part]
    for kind, table in (("param", module._parameters), ("buffer", module._buffers), ("module", module._modules)):
        if leaf in table:
            return kind, table[leaf] is None
    return None, None


class VersionChain(RuleBasedStateMachine):
    """Random edit sequences on one chain; every particle ever made must migrate to the newest."""

    @initialize()
    def start(self):
        p = particle(make_root())
        sp = p.species
        self.versions = [sp]
        self.fingerprints = [species_fingerprint(sp)]
        self.names = list(sp.names)
        self.buffer_names = list(sp.buffer_names)
        self.config = {n: (True, True) for n in sp.names}
        # each particle with what migrating it to the newest must give: name -> (tensor, own)
        # ``own``: the very tensor of the particle (shared); otherwise an equal, fresh copy
        self.particles = [(p, {n: (t, True) for n, t in p.params.items()})]
        self.generator = torch.Generator().manual_seed(0)

    @property
    def newest(self):
        return self.versions[-1]

    def _push(self, new):
        assert new.parent is self.newest and new.version == self.newest.version + 1
        self.versions.append(new)
        self.fingerprints.append(species_fingerprint(new))

    def _try_add(self, path, kind, do):
        """Run an add edit; check it failed exactly when the slot was taken."""
        old = self.newest
        slot_kind, is_none = _slot(old, path)
        fp = species_fingerprint(old)
        # torch re-registers an empty slot of the same kind; a None buffer that
        # add_buffer registered is a buffer of the species, though, and is refused
        if slot_kind is None or (is_none and slot_kind == kind and path not in old.buffers):
            new = do(old)
            self._push(new)
            return new
        with pytest.raises((ValueError, KeyError)):
            do(old)
        assert fingerprints_equal(fp, species_fingerprint(old))
        return None

    def _paths(self, data):
        return data.draw(st.sampled_from(sorted(self.newest.modules)))

    # -- edits ------------------------------------------------------------------------

    @rule(data=st.data(), leaf=st.sampled_from(LEAVES), size=st.integers(1, 3), operational=st.booleans())
    def add_param(self, data, leaf, size, operational):
        prefix = self._paths(data)
        path = f"{prefix}.{leaf}" if prefix else leaf
        value = torch.randn(size, generator=self.generator)
        cfg = nf.ParamConfig(operational=operational)
        new = self._try_add(path, "param", lambda s: s.add_param(path, value, config=cfg))
        if new is not None:
            self.names.append(path)
            self.config[path] = (operational, True)
            for _, expected in self.particles:
                expected[path] = (value.clone(), False)
            assert new.buffers is new.parent.buffers and new.modules is new.parent.modules

    @rule(data=st.data(), leaf=st.sampled_from(LEAVES), which=st.sampled_from(sorted(SUBMODULES)))
    def add_module(self, data, leaf, which):
        prefix = self._paths(data)
        path = f"{prefix}.{leaf}" if prefix else leaf
        module = SUBMODULES[which]()
        snap = Snapshot(module) if module is not None else None
        new = self._try_add(path, "module", lambda s: s.add_module(path, module))
        if new is not None:
            if module is not None:
                for n, t in module.named_parameters():
                    self.names.append(f"{path}.{n}")
                    self.config[f"{path}.{n}"] = (True, True)
                    for _, expected in self.particles:
                        expected[f"{path}.{n}"] = (t.detach().clone(), False)
                self.buffer_names += [f"{path}.{n}" for n, _ in module.named_buffers()]
            else:
                assert new.names is new.parent.names or new.names == new.parent.names
            assert new.config is new.parent.config or module is not None
        if snap is not None:
            assert snap.unchanged()

    @rule(data=st.data(), leaf=st.sampled_from(LEAVES), none=st.booleans(), persistent=st.booleans())
    def add_buffer(self, data, leaf, none, persistent):
        prefix = self._paths(data)
        path = f"{prefix}.{leaf}" if prefix else leaf
        value = None if none else torch.randn(2, generator=self.generator)
        new = self._try_add(path, "buffer", lambda s: s.add_buffer(path, value, persistent=persistent))
        if new is not None:
            self.buffer_names.append(path)
            assert new.config is new.parent.config and new.names == new.parent.names
            assert (path in new.nonpersistent) is (not persistent)

    def _removable(self):
        sp = self.newest
        empty = {
            f"{prefix}.{leaf}" if prefix else leaf
            for prefix, module in sp.skeleton.named_modules()
            for slots in (module._parameters, module._buffers, module._modules)
            for leaf, value in slots.items()
            if value is None
        }
        return sorted(set(sp.names) | set(sp.buffer_names) | (set(sp.modules) - {""}) | empty)

    def _drop(self, name, kind):
        under = (lambda n: _under(n, name)) if kind == "module" else (lambda n: n == name)
        self.names = [n for n in self.names if not under(n)]
        self.buffer_names = [n for n in self.buffer_names if not under(n)]
        for n in [n for n in self.config if under(n)]:
            del self.config[n]
        for _, expected in self.particles:
            for n in [n for n in expected if under(n)]:
                del expected[n]

    @precondition(lambda self: len(self._removable()) > 0)
    @rule(data=st.data(), to_none=st.booleans())
    def remove_or_set_none(self, data, to_none):
        name = data.draw(st.sampled_from(self._removable()))
        kind = self.newest.kind(name)
        new = self.newest.set_none(name) if to_none else self.newest.remove(name)
        self._push(new)
        self._drop(name, kind)
        assert isinstance(new.edit, nf.SetNone if to_none else nf.Remove) and new.edit.kind == kind
        slot = _slot(new, name)
        assert slot == ((kind, True) if to_none else (None, None))

    @rule(data=st.data(), operational=st.booleans(), clone=st.booleans(), tag=st.integers(0, 3))
    def with_config(self, data, operational, clone, tag):
        sp = self.newest
        target = data.draw(st.sampled_from([None] + sorted(set(sp.names) | set(sp.modules))))
        new = sp.with_config(target, operational=operational, clone=clone, tags={"t": tag})
        self._push(new)
        for n in self.config:
            if target is None or _under(n, target):
                self.config[n] = (operational, clone)
                assert new.config[n].tags["t"] == tag
        assert new.skeleton is sp.skeleton and new.buffers is sp.buffers and new.shapes is sp.shapes

    @rule()
    def new_particle(self):
        p = self.particles[0][0]
        p = migrate(p, self.newest).randn(generator=self.generator)
        self.particles.append((p, {n: (t, True) for n, t in p.params.items()}))

    @precondition(lambda self: len(self.versions) >= 2)
    @rule(data=st.data())
    def diverging_branch_refused(self, data):
        i = data.draw(st.integers(0, len(self.versions) - 2))
        branch = self.versions[i].with_config(tags={"branch": True})
        old_particles = [p for p, _ in self.particles if p.species.version <= i] or [self.particles[0][0]]
        stray = migrate(old_particles[0], branch)
        newest = migrate(self.particles[-1][0], self.newest)
        with pytest.raises(ValueError, match="species"):
            stray + newest
        with pytest.raises(ValueError, match="species"):
            migrate(stray, self.newest)

    @rule(data=st.data())
    def cross_version_op(self, data):
        a = data.draw(st.sampled_from([p for p, _ in self.particles]))
        b = data.draw(st.sampled_from([p for p, _ in self.particles]))
        later = a.species if b.species.is_ancestor_of(a.species) else b.species
        out = a * 0.5 + b
        assert out.species is later
        # the scaled particle is migrated: parameters added since arrive unscaled
        cfg = a.species.config
        half = nf.Particle(a.species, {n: 0.5 * t if cfg[n].operational else t for n, t in a.params.items()})
        ma, mb = migrate(half, later), migrate(b, later)
        for n, x, y, z in zip(later.names, out.tensors, ma.tensors, mb.tensors):
            # a non-operational parameter comes from the left operand
            assert torch.allclose(x, y + z if later.config[n].operational else y), n

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def old_versions_unchanged(self):
        for sp, fp in zip(self.versions, self.fingerprints):
            assert fingerprints_equal(fp, species_fingerprint(sp)), sp

    @invariant()
    def newest_matches_model(self):
        sp = self.newest
        assert list(sp.names) == self.names
        assert list(sp.buffer_names) == self.buffer_names
        assert {n: (c.operational, c.clone) for n, c in sp.config.items()} == self.config

    @invariant()
    def every_particle_migrates_to_newest(self):
        sp = self.newest
        ptrs = []
        added_values = [e.value.data_ptr() for e in (s.edit for s in self.versions[1:]) if isinstance(e, nf.AddParam)]
        for p, expected in self.particles:
            snap = Snapshot(p)
            m = migrate(p, sp)
            assert m.species is sp
            assert list(m.params) == self.names
            for n in sp.names:
                t = m.params[n]
                want, own = expected[n]
                assert t.shape == sp.shapes[n] and t.dtype == sp.dtypes[n]
                if own:
                    assert t is want, n
                else:
                    assert tensor_equal(t, want), n
                    ptrs.append(t.data_ptr())
            assert snap.unchanged()
        assert len(set(ptrs)) == len(ptrs)  # every added parameter is each particle's own copy
        assert not set(ptrs) & set(added_values)

    @invariant()
    def to_module_agrees_with_species(self):
        sp = self.newest
        m = to_module(migrate(self.particles[0][0], sp))
        assert {n for n, _ in m.named_parameters()} == set(sp.names)
        assert {n for n, _ in m.named_buffers()} == {n for n in sp.buffer_names if sp.buffers[n] is not None}

    @invariant()
    def untouched_submodules_shared(self):
        if len(self.versions) < 2:
            return
        new, old = self.versions[-1], self.versions[-2]
        edit = new.edit
        edited = edit.name or ""
        old_modules = dict(old.skeleton.named_modules(remove_duplicate=False))
        new_modules = dict(new.skeleton.named_modules(remove_duplicate=False))
        for path, module in old_modules.items():
            on_path = path == "" or _under(edited, path)
            if isinstance(edit, nf.SetConfig):
                assert new_modules[path] is module
            elif not on_path and path in new_modules and not _under(path, edited):
                assert new_modules[path] is module, path


VersionChain.TestCase.settings = settings(max_examples=20, stateful_step_count=10, deadline=None)
TestVersionChain = VersionChain.TestCase
