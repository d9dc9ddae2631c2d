"""Random edit sequences on random particles of one species (hypothesis stateful test).

After every ``touch()`` all particles agree in structure, and the core's
``migrate`` of each particle's pre-touch core particle gives the same
tensors as the compat layer's update.
"""

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from torch import nn

from nytorch.module import NytoModule
from nytorch_fn import migrate

NAMES = ("a", "b", "c")


class Leaf(NytoModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2))


class Root(NytoModule):
    def __init__(self):
        super().__init__()
        self.base = nn.Parameter(torch.randn(3))
        self.leaf = Leaf()


def _structure(m):
    return (
        [(n, tuple(p.shape), p.requires_grad) for n, p in m.named_parameters()],
        [n for n, _ in m.named_buffers()],
        [(n, type(s).__name__) for n, s in m.named_modules()],
        [(n, m.get_param_id(p)) for n, p in m.named_parameters()],
        sorted(n for mod in m.modules() for n, v in list(mod._parameters.items()) + list(mod._modules.items()) if v is None),
    )


class EditMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        root = Root()
        self.particles = [root, root.clone(), root.randn()]

    def _pick(self, i):
        return self.particles[i % len(self.particles)]

    def _target(self, i, deep):
        p = self._pick(i)
        if deep and isinstance(getattr(p, "leaf", None), NytoModule):
            return p.leaf
        return p

    # -- edits ---------------------------------------------------------------

    @rule(i=st.integers(0, 30), name=st.sampled_from(NAMES), deep=st.booleans(), grad=st.booleans())
    def add_param(self, i, name, deep, grad):
        target = self._target(i, deep)
        param = nn.Parameter(torch.randn(2), requires_grad=grad)
        setattr(target, name, param)
        assert getattr(target, name) is param

    @rule(i=st.integers(0, 30), name=st.sampled_from(NAMES), nyto=st.booleans())
    def add_module(self, i, name, nyto):
        target = self._target(i, False)
        module = Leaf() if nyto else nn.Linear(2, 1)
        if self._refused(target, name, ("_parameters",), TypeError, lambda: setattr(target, name, module)):
            return  # a parameter never becomes a module (the legacy suite)
        setattr(target, name, module)
        assert getattr(target, name) is module

    @rule(i=st.integers(0, 30), name=st.sampled_from(NAMES), deep=st.booleans())
    def add_buffer(self, i, name, deep):
        target = self._target(i, deep)
        buf = torch.randn(2)
        if self._refused(target, name, ("_parameters", "_modules"), KeyError, lambda: target.register_buffer(name, buf)):
            return  # neither a parameter nor a module becomes a buffer (the legacy suite)
        target.register_buffer(name, buf)
        assert getattr(target, name) is buf

    def _refused(self, target, name, tables, error, edit):
        """When ``name`` is in one of ``tables`` (after catching up): ``edit`` raises ``error`` and changes nothing."""
        target.touch()
        if not any(name in getattr(target, table) for table in tables):
            return False
        version, before = target._version_kernel, _structure(target)
        try:
            edit()
        except error:
            pass
        else:
            raise AssertionError(f"expected {error.__name__} for {name!r}")
        assert target._version_kernel is version and version.is_newest and _structure(target) == before
        return True

    def _existing(self, target, name):
        target.touch()
        return name in target._parameters or name in target._modules or name in target._buffers

    @rule(i=st.integers(0, 30), name=st.sampled_from(NAMES + ("leaf",)), deep=st.booleans())
    def delete(self, i, name, deep):
        target = self._target(i, deep)
        if self._existing(target, name):
            delattr(target, name)
            assert not hasattr(target, name)

    @rule(i=st.integers(0, 30), name=st.sampled_from(NAMES + ("leaf", "base")), deep=st.booleans())
    def set_none(self, i, name, deep):
        target = self._target(i, deep)
        if self._existing(target, name):
            setattr(target, name, None)
            assert getattr(target, name) is None

    # -- particles -------------------------------------------------------------

    @precondition(lambda self: len(self.particles) < 8)
    @rule(i=st.integers(0, 30), j=st.integers(0, 30))
    def particle_op(self, i, j):
        a, b = self._pick(i), self._pick(j)
        self.particles.append(0.5 * a + b)

    @precondition(lambda self: len(self.particles) < 8)
    @rule(i=st.integers(0, 30))
    def clone(self, i):
        self.particles.append(self._pick(i).clone())

    @rule(i=st.integers(0, 30))
    def touch_one(self, i):
        self._pick(i).touch()

    @rule()
    def touch_all_and_compare_with_migrate(self):
        before = []
        for p in self.particles:
            kernel = p._particle_kernel
            before.append(kernel.data.particle(kernel.version.data))
        for p in self.particles:
            p.touch()
        newest = self.particles[0]._version_kernel
        species = newest.data.species
        for p, old in zip(self.particles, before):
            assert p._version_kernel is newest
            kernel = p._particle_kernel
            now = kernel.data.particle(newest.data)
            replayed = migrate(old, species)
            assert replayed.species is now.species
            for x, y in zip(replayed.tensors, now.tensors):
                assert torch.equal(x, y)

    @invariant()
    def agree_after_touch(self):
        for p in self.particles:
            p.touch()
        first = _structure(self.particles[0])
        for p in self.particles[1:]:
            assert _structure(p) == first
            assert p._version_kernel is self.particles[0]._version_kernel
        buffers = [dict(p.named_buffers()) for p in self.particles]
        for name in buffers[0]:
            assert all(b[name] is buffers[0][name] for b in buffers)
        ids = [set(map(id, p.parameters())) for p in self.particles]
        for k in range(len(ids)):
            for j in range(k + 1, len(ids)):
                assert not ids[k] & ids[j] or self._shared_by_config()

    def _shared_by_config(self):
        config = self.particles[0]._version_kernel.data.config
        return any(not c.clone for c in config.values())


TestEdits = EditMachine.TestCase
TestEdits.settings = settings(
    max_examples=25, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
