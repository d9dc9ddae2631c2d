"""Checkpoints: round trips, checks against the template, corruption, and a process killed mid-save."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from typing import NamedTuple

import attrs
import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import checkpoint as ck
from nytorch_fn import optim
from tests.helpers import Snapshot, mlp, tensor_equal, tree_equal


def same_values(a: nf.Particle, b: nf.Particle) -> bool:
    return len(a.tensors) == len(b.tensors) and all(tensor_equal(x, y) for x, y in zip(a.tensors, b.tensors))


class Pair(NamedTuple):
    best: nf.Particle
    score: float


@attrs.frozen
class Record:
    pop: nf.Particle
    generation: int
    _sigma: torch.Tensor


def test_particle_round_trip_is_bit_exact_and_takes_the_callers_species(tmp_path):
    p = nf.particle(mlp(0))
    path = tmp_path / "p.safetensors"
    ck.save(path, p)
    for like in (p.species, p, p.randn()):
        q = ck.load(path, like=like)
        assert tree_equal(q, p)
        assert all(x.data_ptr() != y.data_ptr() for x, y in zip(q.tensors, p.tensors))
    # a module as template: a freshly captured species with the same structure
    q = ck.load(path, like=mlp(1))
    assert q.species is not p.species and q.species.names == p.species.names and same_values(q, p)


def test_population_optimiser_state_and_plain_values_round_trip(tmp_path):
    p = nf.particle(mlp(0))
    pop = nf.random_population(p, 6, generator=torch.Generator().manual_seed(0))
    opt = optim.adam(0.1)
    state = opt.init(pop)
    grads = pop.map(lambda t, cfg: torch.ones_like(t))
    _, state = opt.update(grads, state, pop)
    tree = {
        "pop": pop, "adam": state, "sgd": optim.SGDState(None), "step": 7, "lr": float("nan"),
        "flag": True, "name": "run", "extra": [None, (1.5, torch.arange(4))],
        "pair": Pair(p, -1.25), "rec": Record(pop[1:4], 3, torch.tensor(0.5)),
    }
    path = tmp_path / "state.safetensors"
    ck.save(path, tree)
    template = {
        "pop": p.species, "adam": opt.init(pop), "sgd": optim.SGDState(None), "step": 0, "lr": 0.0,
        "flag": False, "name": "", "extra": [None, (0.0, torch.zeros(4, dtype=torch.int64))],
        "pair": Pair(p.species, 0.0), "rec": Record(p.species, 0, torch.tensor(0.0)),
    }
    out = ck.load(path, like=template)
    assert tree_equal(out["pop"], pop)
    assert isinstance(out["adam"], optim.AdamState) and torch.equal(out["adam"].count, torch.tensor(1))
    assert tree_equal(out["adam"].mu, state.mu) and tree_equal(out["adam"].nu, state.nu)
    assert out["sgd"] == optim.SGDState(None)
    assert out["step"] == 7 and type(out["step"]) is int and out["lr"] != out["lr"]
    assert out["flag"] is True and out["name"] == "run"
    assert out["extra"][0] is None and out["extra"][1][0] == 1.5 and torch.equal(out["extra"][1][1], torch.arange(4))
    assert isinstance(out["pair"], Pair) and same_values(out["pair"].best, p) and out["pair"].score == -1.25
    assert isinstance(out["rec"], Record) and out["rec"].generation == 3 and float(out["rec"]._sigma) == 0.5
    assert torch.equal(out["rec"].pop.tensors[0], pop.tensors[0][1:4])


def test_dtypes_views_zero_size_and_shared_tensors(tmp_path):
    with pytest.warns(UserWarning, match="zero-element"):
        net = nn.Sequential(nn.Linear(3, 0), nn.Linear(0, 2))
    p = nf.particle(net)
    s = p.species.add_param("0.count", torch.arange(3)).with_config("0.count", operational=False)
    s = s.add_param("1.h16", torch.ones(2, dtype=torch.bfloat16)).add_param("1.mask", torch.tensor([True, False]))
    s = s.with_config("1.mask", operational=False)
    q = nf.migrate(p, s)
    big = torch.randn(5, 4)
    tree = (q, big.t(), big[1:3], big[1:3], torch.zeros(0, 2, dtype=torch.float64))
    snap = Snapshot(q, big)
    path = tmp_path / "d.safetensors"
    ck.save(path, tree)
    assert snap.unchanged()
    out = ck.load(path, like=(s, big.t(), big[1:3], big[1:3], torch.zeros(0, 2, dtype=torch.float64)))
    assert tree_equal(out[0], q)
    assert torch.equal(out[1], big.t()) and torch.equal(out[2], big[1:3]) and out[2].data_ptr() != out[3].data_ptr()
    assert out[4].shape == (0, 2) and out[4].dtype == torch.float64


def test_manifest_is_json_with_structure_configs_tags_and_versions(tmp_path):
    p = nf.particle(mlp(0))
    s = p.species.with_config("0", operational=False, tags={"is_weight": True, "note": object()})
    path = tmp_path / "m.safetensors"
    ck.save(path, nf.migrate(p, s))
    m = ck.read_manifest(path)
    assert m["format"] == "nytorch_fn.checkpoint" and m["format_version"] == 2 and m["nytorch_fn_version"] == nf.__version__
    (rec,) = m["species"]
    assert rec["names"] == list(p.species.names) and rec["version"] == 1 and rec["module"] == "Sequential"
    assert rec["shapes"][0] == [8, 4] and rec["dtypes"][0] == "float32"
    assert rec["config"][0]["operational"] is False and rec["config"][0]["tags"]["is_weight"] is True
    assert rec["config"][0]["tags"]["note"].startswith("<object object")  # kept as repr, never evaluated
    assert rec["config"][2] == {"operational": True, "clone": True, "tags": {}}


@pytest.mark.parametrize(
    "like, message",
    [
        (lambda p: nf.particle(nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3))).species, "'0.weight' has shape (8, 4)"),
        (lambda p: nf.particle(mlp(0).double()).species, "'0.weight' has dtype float32 in the file, float64"),
        (lambda p: nf.particle(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3, bias=False))).species, "has parameter '2.bias', which the species lacks"),
        (lambda p: p.species.add_param("0.extra", torch.ones(1)), "the species has parameter '0.extra'"),
        (lambda p: nf.particle(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.BatchNorm1d(3))).species, "the species has parameter '3.weight', which the file lacks"),
        (lambda p: p.species.with_config("2.bias", operational=False), "'2.bias' has config"),
        (lambda p: p.species.with_config("2.bias", tags={"x": 1}), "'2.bias' has config"),
        (lambda p: nf.stack([p, p]), "the file has a single particle, `like` a population of 2"),
        (lambda p: torch.zeros(3), "the file has a particle, `like` a tensor"),
        (lambda p: (p.species,), "the file has a particle, `like` a tuple"),
    ],
)
def test_mismatch_names_the_first_difference(tmp_path, like, message):
    p = nf.particle(mlp(0))
    path = tmp_path / "p.safetensors"
    ck.save(path, p)
    with pytest.raises(ck.CheckpointMismatchError) as info:
        ck.load(path, like=like(p))
    assert message in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)


def test_buffer_and_config_checks_and_configs_ignore(tmp_path):
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    p = nf.particle(net)
    path = tmp_path / "b.safetensors"
    ck.save(path, p)
    other = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(ck.CheckpointMismatchError, match="buffer"):
        ck.load(path, like=other)
    s = p.species.with_config("0", operational=False)
    with pytest.raises(ck.CheckpointMismatchError, match="configs='ignore'"):
        ck.load(path, like=s)
    assert ck.load(path, like=s, configs="ignore").species is s
    with pytest.raises(ValueError, match="configs"):
        ck.load(path, like=s, configs="loose")


@pytest.mark.parametrize(
    "saved, like, message",
    [
        ({"a": torch.zeros(2)}, {"a": torch.zeros(3)}, "shape (2,), `like` (3,)"),
        ({"a": torch.zeros(2)}, {"a": torch.zeros(2, dtype=torch.float64)}, "dtype torch.float32, `like` torch.float64"),
        ({"a": 1}, {"b": 1}, "key 'b' of `like` is not in the file"),
        ({"a": 1, "b": 2}, {"a": 1}, "the file has key 'b'"),
        ([1, 2], [1], "2 items, `like` 1"),
        ([1], (1,), "the file has a list, `like` a tuple"),
        (1, 1.0, "the file has a int, `like` a float"),
        (None, 0, "the file has a none"),
        (optim.SGDState(None), Pair(None, 0.0), "the file has a nytorch_fn._optim.SGDState, `like` a tests.fn.test_checkpoint.Pair"),
    ],
)
def test_tree_mismatches(tmp_path, saved, like, message):
    path = tmp_path / "t.safetensors"
    ck.save(path, saved)
    with pytest.raises(ck.CheckpointMismatchError) as info:
        ck.load(path, like=like)
    assert message in str(info.value), str(info.value)


def test_save_refuses_what_it_cannot_write_and_leaves_no_file(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="meta device"):
        ck.save(path, torch.empty(3, device="meta"))
    with pytest.raises(TypeError, match=r"tree\['a'\]"):
        ck.save(path, {"a": object()})
    with pytest.raises(TypeError, match="str keys"):
        ck.save(path, {1: 2})
    with pytest.raises(TypeError, match="sparse|strided"):
        ck.save(path, torch.eye(2).to_sparse())
    with pytest.raises(TypeError, match="dtype"):
        ck.save(path, torch.zeros(2, dtype=torch.complex128))
    with pytest.raises(FileNotFoundError):
        ck.save(tmp_path / "missing" / "x.safetensors", 1)
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="`like`"):
        ck.save(path, 1) or ck.load(path, like=object())


def _fixture(tmp_path):
    p = nf.particle(mlp(0))
    path = tmp_path / "c.safetensors"
    ck.save(path, {"p": p, "opt": optim.sgd(0.1, momentum=0.9).init(p), "step": 3})
    like = {"p": p.species, "opt": optim.sgd(0.1, momentum=0.9).init(p), "step": 0}
    return p, path, like


def test_truncated_files_are_refused_at_every_length(tmp_path):
    p, path, like = _fixture(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for n in sorted({0, 1, 7, 8, 9, 100, len(data) // 2, len(data) - 9, len(data) - 1, *range(0, len(data), 97)}):
        bad.write_bytes(data[:n])
        with pytest.raises(ck.CheckpointError):
            ck.load(bad, like=like)
    bad.write_bytes(data + b"\0")
    with pytest.raises(ck.CheckpointError):
        ck.load(bad, like=like)


def test_every_single_byte_corruption_is_refused(tmp_path):
    p, path, like = _fixture(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    refused = 0
    for i in range(len(data)):
        corrupted = bytearray(data)
        corrupted[i] ^= 0x04
        bad.write_bytes(bytes(corrupted))
        with pytest.raises(ck.CheckpointError):
            ck.load(bad, like=like)
        refused += 1
    assert refused == len(data)
    assert tree_equal(ck.load(path, like=like)["p"], p)


def test_foreign_files_are_refused_and_nothing_is_unpickled(tmp_path):
    p, path, like = _fixture(tmp_path)
    marker = tmp_path / "unpickled"

    class Marker:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"p": Marker()}))
    torch_file = tmp_path / "torch.pt"
    torch.save({"w": torch.zeros(2)}, torch_file)
    plain = tmp_path / "plain.safetensors"
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    plain.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(bytes(range(256)) * 16)
    for f in (evil, torch_file, plain, random_bytes):
        with pytest.raises(ck.CheckpointError):
            ck.load(f, like=like)
        with pytest.raises(ck.CheckpointError):
            ck.read_manifest(f)
    assert not marker.exists()


def test_a_manifest_naming_another_class_is_refused_and_never_imported(tmp_path):
    path = tmp_path / "n.safetensors"
    ck.save(path, optim.SGDState(None))
    with pytest.raises(ck.CheckpointMismatchError, match="SGDState"):
        ck.load(path, like=optim.AdamState(torch.zeros(()), None, None))


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    from nytorch_fn import _checkpoint

    p, path, like = _fixture(tmp_path)
    before = path.read_bytes()

    def fail(written):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(_checkpoint, "_after_chunk", fail)
    with pytest.raises(OSError, match="disk full"):
        ck.save(path, {"p": p * 2, "opt": like["opt"], "step": 4})
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["c.safetensors"]


_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    import nytorch_fn as nf
    from nytorch_fn import checkpoint as ck, _checkpoint
    from torch import nn

    def pause(written):
        if not getattr(pause, "said", False):
            pause.said = True
            print("PAUSED", written, flush=True)
            time.sleep(60)

    _checkpoint._after_chunk = pause
    torch.manual_seed(1)
    p = nf.particle(nn.Linear(1024, 1024))          # 4 MiB: several chunks
    ck.save(sys.argv[1], {"p": p, "step": 2})
    print("DONE", flush=True)
    """
)


def test_a_process_killed_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    torch.manual_seed(0)
    net = nn.Linear(1024, 1024)
    old = nf.particle(net)
    path = tmp_path / "run.safetensors"
    ck.save(path, {"p": old, "step": 1})
    before = path.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("PAUSED"), (line, proc.stderr.read() if proc.poll() is not None else "")
        temps = [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
        assert len(temps) == 1 and 0 < (tmp_path / temps[0]).stat().st_size < len(before)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    out = ck.load(path, like={"p": old.species, "step": 0})
    assert tree_equal(out["p"], old) and out["step"] == 1
    # the stray temporary file is harmless: the next save replaces the checkpoint
    ck.save(path, {"p": old * 2, "step": 3})
    assert ck.load(path, like={"p": old.species, "step": 0})["step"] == 3


def test_algorithm_state_with_an_optional_particle_loads_against_a_fresh_init(tmp_path):
    from nytorch_fn import algorithms

    p = nf.particle(mlp(0))
    es = algorithms.OpenAIES(population_size=4, sigma=0.1, optimizer=optim.adam(0.01))
    state = es.init(p)
    pop, state = es.ask(state, generator=torch.Generator().manual_seed(0))
    assert state.noise is not None
    path = tmp_path / "es.safetensors"
    ck.save(path, state)
    out = ck.load(path, like=es.init(p))  # noise is None in the template, a particle in the file
    assert type(out) is type(state) and tree_equal(out.noise, state.noise) and tree_equal(out.mean, state.mean)
    assert torch.equal(out.best_fitness, state.best_fitness) and out.generation == state.generation
