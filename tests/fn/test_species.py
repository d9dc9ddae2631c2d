"""Species: immutable structure, a persistent version chain of edits."""

import pytest
import torch
from pyrsistent import PMap
from torch import nn

import nytorch_fn as nf
from nytorch_fn import ParamConfig, Species, particle

from ..helpers import TiedLM, fingerprints_equal, mlp, species_fingerprint


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.register_buffer("scale", torch.tensor(3.0))
        self.register_buffer("cache", torch.zeros(2), persistent=False)

    def forward(self, x):
        return self.bn(self.lin(x)) * self.scale


def test_capture_names_shapes_dtypes_in_named_parameters_order():
    net = mlp()
    sp = particle(net).species
    expected = [(n, p.shape, p.dtype) for n, p in net.named_parameters()]
    assert sp.names == tuple(n for n, _, _ in expected)
    assert isinstance(sp.names, tuple)
    for n, shape, dtype in expected:
        assert sp.shapes[n] == shape
        assert sp.dtypes[n] == dtype
        assert sp.config[n] == ParamConfig()
    assert isinstance(sp.config, PMap)
    assert sp.parent is None and sp.edit is None and sp.version == 0


def test_buffers_captured_with_persistence():
    m = WithBuffers()
    sp = particle(m).species
    assert sp.buffer_names == tuple(n for n, _ in m.named_buffers())
    assert set(sp.nonpersistent) == {"cache"}
    assert torch.equal(sp.buffers["scale"], torch.tensor(3.0))
    assert sp.buffers["scale"] is not m.scale


def test_species_compare_by_identity():
    a, b = particle(mlp(0)).species, particle(mlp(0)).species
    assert a != b
    assert a == a
    assert len({a, b}) == 2


def test_skeleton_holds_no_data():
    sp = particle(mlp()).species
    assert all(t.device.type == "meta" for t in sp.skeleton.parameters())


def test_tied_parameter_is_one_entry():
    sp = particle(TiedLM()).species
    assert sp.names == ("embed.weight",)
    assert sp.tied["out.weight"] == "embed.weight"


def test_requires_grad_false_is_recorded():
    net = mlp()
    net[0].bias.requires_grad_(False)
    sp = particle(net).species
    assert sp.requires_grad["0.bias"] is False
    assert sp.requires_grad["0.weight"] is True


# -- edits ---------------------------------------------------------------------


def _edits():
    return [
        ("add_param", lambda s: s.add_param("0.scale", torch.ones(3))),
        ("add_param_root", lambda s: s.add_param("gain", torch.tensor(2.0))),
        ("add_module", lambda s: s.add_module("extra", nn.Linear(3, 3))),
        ("add_module_none", lambda s: s.add_module("slot", None)),
        ("add_buffer", lambda s: s.add_buffer("0.mask", torch.ones(8))),
        ("add_buffer_np", lambda s: s.add_buffer("tmp", torch.ones(2), persistent=False)),
        ("remove_param", lambda s: s.remove("0.bias")),
        ("remove_module", lambda s: s.remove("2")),
        ("set_none_param", lambda s: s.set_none("2.bias")),
        ("set_none_module", lambda s: s.set_none("0")),
        ("with_config", lambda s: s.with_config("0", operational=False)),
        ("with_config_all", lambda s: s.with_config(tags={"x": 1})),
    ]


@pytest.mark.parametrize("label,edit", _edits(), ids=[e[0] for e in _edits()])
def test_every_edit_returns_new_version_and_leaves_old(label, edit):
    sp = particle(mlp()).species
    before = species_fingerprint(sp)
    new = edit(sp)
    assert isinstance(new, Species)
    assert new is not sp
    assert new.parent is sp
    assert new.version == sp.version + 1
    assert new.edit is not None
    if label.startswith("with_config"):
        assert new.skeleton is sp.skeleton  # a config edit shares the structure
    else:
        assert new.skeleton is not sp.skeleton
    assert fingerprints_equal(before, species_fingerprint(sp))


def test_add_param_appends_name_with_config():
    sp = particle(mlp()).species
    cfg = ParamConfig(operational=False)
    new = sp.add_param("0.scale", torch.ones(3, dtype=torch.float64), config=cfg)
    assert new.names == sp.names + ("0.scale",)
    assert new.shapes["0.scale"] == (3,)
    assert new.dtypes["0.scale"] == torch.float64
    assert new.config["0.scale"] is cfg
    assert isinstance(new.edit, nf.AddParam)
    assert "scale" in dict(new.skeleton[0].named_parameters())
    assert "scale" not in dict(sp.skeleton[0].named_parameters())


def test_add_param_keeps_private_copy_of_value():
    sp = particle(mlp()).species
    value = torch.ones(3)
    new = sp.add_param("0.scale", value)
    value.add_(5)
    assert torch.equal(new.edit.value, torch.ones(3))


def test_add_module_appends_its_parameters_and_buffers():
    sp = particle(mlp()).species
    sub = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    before = [t.clone() for t in sub.state_dict().values()]
    new = sp.add_module("head", sub)
    assert new.names == sp.names + tuple(f"head.{n}" for n, _ in sub.named_parameters())
    assert set(new.buffer_names) >= {f"head.{n}" for n, _ in sub.named_buffers()}
    assert {"head", "head.0", "head.1"} <= set(new.modules)
    assert all(torch.equal(a, b) for a, b in zip(before, sub.state_dict().values()))
    assert new.buffers["head.1.running_mean"] is not sub[1].running_mean


def test_add_buffer_copy_and_share():
    sp = particle(mlp()).species
    t = torch.ones(2)
    copied = sp.add_buffer("b", t)
    shared = sp.add_buffer("b", t, copy=False)
    assert copied.buffers["b"].data_ptr() != t.data_ptr()
    assert shared.buffers["b"].data_ptr() == t.data_ptr()
    assert "b" not in copied.nonpersistent
    assert "b" in sp.add_buffer("b", t, persistent=False).nonpersistent


def test_remove_module_drops_everything_under_it():
    sp = particle(mlp()).species
    new = sp.remove("0")
    assert new.names == ("2.weight", "2.bias")
    assert "0" not in new.modules
    assert "0" not in new.skeleton._modules
    assert isinstance(new.edit, nf.Remove) and new.edit.kind == "module"


def test_set_none_keeps_the_slot_empty():
    sp = particle(mlp()).species
    new = sp.set_none("2.bias")
    assert "2.bias" not in new.names
    assert "bias" in new.skeleton[2]._parameters
    assert new.skeleton[2]._parameters["bias"] is None


def test_remove_buffer():
    sp = particle(WithBuffers()).species
    new = sp.remove("scale")
    assert "scale" not in new.buffers and "scale" not in new.buffer_names
    assert "scale" in sp.buffers


def test_with_config_name_prefix_and_all():
    sp = particle(mlp()).species.with_config("0.weight", tags={"a": 1})
    one = sp.with_config("0.weight", operational=False, tags={"b": 2})
    assert one.config["0.weight"].operational is False
    assert dict(one.config["0.weight"].tags) == {"a": 1, "b": 2}
    assert one.config["0.bias"].operational is True
    prefix = sp.with_config("2", clone=False)
    assert [prefix.config[n].clone for n in prefix.names] == [True, True, False, False]
    everything = sp.with_config(operational=False)
    assert all(not everything.config[n].operational for n in everything.names)
    # tags were kept through the config edits
    assert everything.config["0.weight"].tags["a"] == 1
    assert isinstance(one.edit, nf.SetConfig)


def test_config_tags_survive_structural_edits():
    sp = particle(mlp()).species.with_config("0.weight", tags={"is_weight": True})
    new = sp.add_param("x", torch.zeros(1)).remove("2").add_module("m", nn.Linear(1, 1))
    assert new.config["0.weight"].tags["is_weight"] is True


def test_history_and_edits_since():
    s0 = particle(mlp()).species
    s1 = s0.add_param("a", torch.zeros(1))
    s2 = s1.remove("0")
    assert list(s2.history()) == [s2, s1, s0]
    assert s2.edits_since(s0) == [s1.edit, s2.edit]
    assert s0.is_ancestor_of(s2) and not s2.is_ancestor_of(s0)
    branch = s0.add_param("b", torch.zeros(1))
    assert not branch.is_ancestor_of(s2) and not s2.is_ancestor_of(branch)


def test_structure_sharing_of_untouched_parts():
    sp = particle(mlp()).species
    new = sp.add_param("2.scale", torch.ones(3))
    assert new.skeleton[0] is sp.skeleton[0]      # untouched submodule shared
    assert new.skeleton[2] is not sp.skeleton[2]  # the path to the edit is copied
    assert new.buffers is sp.buffers
    assert new.modules is sp.modules


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.remove("nope"),
        lambda s: s.remove("0.nope"),
        lambda s: s.set_none("9"),
        lambda s: s.add_param("9.w", torch.ones(1)),
        lambda s: s.add_module("x.y", nn.Linear(1, 1)),
        lambda s: s.add_buffer("nope.b", torch.ones(1)),
        lambda s: s.with_config("nope", operational=False),
        lambda s: s.index("nope"),
        lambda s: s.kind("nope"),
    ],
)
def test_unknown_path_is_keyerror_naming_it(edit):
    sp = particle(mlp()).species
    before = species_fingerprint(sp)
    with pytest.raises(KeyError) as info:
        edit(sp)
    msg = str(info.value)
    assert "expected" in msg and ("nope" in msg or "'9'" in msg or "'x'" in msg)
    assert fingerprints_equal(before, species_fingerprint(sp))


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.add_param("0.weight", torch.ones(1)),
        lambda s: s.add_module("0", nn.Linear(1, 1)),
        lambda s: s.add_buffer("2.bias", torch.ones(1)),
    ],
)
def test_existing_name_refused(edit):
    with pytest.raises(ValueError, match="already"):
        edit(particle(mlp()).species)


def test_bad_values_refused():
    sp = particle(mlp()).species
    with pytest.raises(TypeError, match="tensor"):
        sp.add_param("x", [1.0])
    with pytest.raises(TypeError, match="Module"):
        sp.add_module("x", "linear")
    with pytest.raises(TypeError, match="operational"):
        sp.with_config(operational=1)
    with pytest.raises(TypeError, match="expected keys"):
        sp.with_config(bogus=True)
    with pytest.raises(TypeError, match="mapping"):
        sp.with_config(tags=["x"])


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s.set_none("0.bias"),
        lambda s: s.set_none("2"),
        lambda s: s.add_buffer("m", torch.ones(1)).set_none("m"),
        lambda s: s.add_module("slot", None),
    ],
)
def test_empty_slot_can_be_removed_or_refilled_as_in_torch(make):
    sp = make(particle(mlp()).species)
    name = sp.edit.name
    kind = sp.kind(name)
    gone = sp.remove(name)  # torch: ``del module.x`` after ``module.x = None``
    assert isinstance(gone.edit, nf.Remove) and gone.edit.kind == kind
    prefix, _, leaf = name.rpartition(".")
    owner = gone.skeleton.get_submodule(prefix)
    assert leaf not in owner._parameters and leaf not in owner._buffers and leaf not in owner._modules
    assert gone.names == sp.names
    refill = {
        "param": lambda s: s.add_param(name, torch.ones(2)),
        "buffer": lambda s: s.add_buffer(name, torch.ones(2)),
        "module": lambda s: s.add_module(name, nn.Linear(1, 1)),
    }[kind]
    assert refill(sp).kind(name) == kind  # torch re-registers an empty slot of the same kind
