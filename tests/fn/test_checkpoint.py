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


# ---------------------------------------------------------------------------
# format 2: valid safetensors, partial loads, per-tensor digests, modes, interop
# ---------------------------------------------------------------------------

# A checkpoint written by nytorch_fn 0.1.0 (format 1): {"pop": stack([p, 2p, 3p]) of
# nn.Linear(3, 2) made after torch.manual_seed(0), "step": 5, "t": arange(3)}.
_V1_FILE = (
    "cAMAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJueXRvcmNoX2ZuIjoie1wiZm9ybWF0XCI6XCJueXRv"
    "cmNoX2ZuLmNoZWNrcG9pbnRcIixcImZvcm1hdF92ZXJzaW9uXCI6MSxcIm55dG9yY2hfZm5fdmVy"
    "c2lvblwiOlwiMC4xLjBcIixcInNwZWNpZXNcIjpbe1wibW9kdWxlXCI6XCJMaW5lYXJcIixcInZl"
    "cnNpb25cIjowLFwibmFtZXNcIjpbXCJ3ZWlnaHRcIixcImJpYXNcIl0sXCJzaGFwZXNcIjpbWzIs"
    "M10sWzJdXSxcImR0eXBlc1wiOltcImZsb2F0MzJcIixcImZsb2F0MzJcIl0sXCJjb25maWdcIjpb"
    "e1wib3BlcmF0aW9uYWxcIjp0cnVlLFwiY2xvbmVcIjp0cnVlLFwidGFnc1wiOnt9fSx7XCJvcGVy"
    "YXRpb25hbFwiOnRydWUsXCJjbG9uZVwiOnRydWUsXCJ0YWdzXCI6e319XSxcImJ1ZmZlcnNcIjpb"
    "XX1dLFwidHJlZVwiOntcImtpbmRcIjpcImRpY3RcIixcImtleXNcIjpbXCJwb3BcIixcInN0ZXBc"
    "IixcInRcIl0sXCJpdGVtc1wiOlt7XCJraW5kXCI6XCJwYXJ0aWNsZVwiLFwic3BlY2llc1wiOjAs"
    "XCJwb3B1bGF0aW9uXCI6MyxcInRlbnNvcnNcIjpbXCIwXCIsXCIxXCJdfSx7XCJraW5kXCI6XCJp"
    "bnRcIixcInZhbHVlXCI6NX0se1wia2luZFwiOlwidGVuc29yXCIsXCJrZXlcIjpcIjJcIn1dfX0i"
    "LCJueXRvcmNoX2ZuLnNoYTI1NiI6Ijg2Nzk4ZGZiNGU2M2IyYTk5ZjNkMGNiZDY5OWQwZTc5M2U5"
    "OWJiZmU2ZDVjNWUxNzQwNzgxNWQ2NWYwYjk5YTcifSwiMCI6eyJkdHlwZSI6IkYzMiIsInNoYXBl"
    "IjpbMywyLDNdLCJkYXRhX29mZnNldHMiOlswLDcyXX0sIjEiOnsiZHR5cGUiOiJGMzIiLCJzaGFw"
    "ZSI6WzMsMl0sImRhdGFfb2Zmc2V0cyI6WzcyLDk2XX0sIjIiOnsiZHR5cGUiOiJJNjQiLCJzaGFw"
    "ZSI6WzNdLCJkYXRhX29mZnNldHMiOls5NiwxMjBdfX0g6KONuxOTnj5+S/O+yYvZvrG0Y75TiR4+"
    "6KMNvBOTHj9+S3O/yYtZv7G0475TiZ4+3HVUvJzcbT+eeLa/1yijv4XHKr/8ze0+QGs7vHph6j5A"
    "a7u8emFqP3CQDL0cya8/AAAAAAAAAAABAAAAAAAAAAIAAAAAAAAA"
)


def _population(n: int, sizes=(4, 8, 3), seed: int = 0) -> nf.Particle:
    p = nf.particle(mlp(seed, sizes))
    return nf.random_population(p, n, generator=torch.Generator().manual_seed(seed))


def _entry(path, name) -> dict:
    (e,) = [t for t in ck.read_manifest(path)["tensors"] if t["name"] == name]
    return e


def _data_start(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))


def _rchar() -> int | None:
    try:
        with open("/proc/self/io") as f:
            return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])
    except (OSError, KeyError, ValueError):  # pragma: no cover - not Linux
        return None


def test_a_checkpoint_is_a_valid_safetensors_file_with_names_from_the_tree(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    pop = _population(3)
    opt = optim.adam(0.1)
    state = opt.init(pop)
    tree = {"pop": pop, "adam": state, "t": torch.arange(5).t(), "list": [torch.ones(2, dtype=torch.bfloat16)]}
    path = tmp_path / "c.safetensors"
    ck.save(path, tree)
    expected = {f"pop/{n}": t for n, t in pop.params.items()}
    expected |= {f"adam/mu/{n}": t for n, t in state.mu.params.items()}
    expected |= {f"adam/nu/{n}": t for n, t in state.nu.params.items()}
    expected |= {"adam/count": state.count, "t": tree["t"], "list/0": tree["list"][0]}
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(expected)
        assert set(f.metadata()) == {"nytorch_fn", "nytorch_fn.manifest_sha256"}
        for name, t in expected.items():
            assert tensor_equal(f.get_tensor(name), t), name
    plain = load_file(str(path))
    assert all(tensor_equal(plain[n], t) for n, t in expected.items())
    # a particle saved alone is named by its parameters
    ck.save(path, pop[0])
    assert sorted(load_file(str(path))) == sorted(pop.species.names)


def test_read_manifest_reads_the_header_only(tmp_path):
    pop = _population(4, sizes=(64, 256, 64))
    path = tmp_path / "big.safetensors"
    ck.save(path, pop)
    before = _rchar()
    m = ck.read_manifest(path)
    after = _rchar()
    assert m["digest"] == "sha256" and [t["name"] for t in m["tensors"]] == list(pop.species.names)
    if before is not None:
        assert after - before < _data_start(path) + 4096 < path.stat().st_size // 10
    # a flipped tensor byte is not its business (it reads no tensor) ...
    _flip(path, path.stat().st_size - 3)
    ck.read_manifest(path)
    # ... but load refuses it
    with pytest.raises(ck.CheckpointError, match="'2.bias' is corrupted"):
        ck.load(path, like=pop.species)


def test_members_of_a_population_and_its_optimiser_state(tmp_path):
    pop = _population(6)
    opt = optim.adam(0.1)
    state = opt.init(pop)
    _, state = opt.update(pop.map(lambda t, cfg: torch.ones_like(t)), state, pop)
    path = tmp_path / "pbt.safetensors"
    ck.save(path, {"pop": pop, "adam": state, "fitness": torch.arange(6.0)})
    like = {"pop": pop.species, "adam": opt.init(pop), "fitness": torch.zeros(6)}
    one = ck.load(path, like=like, members=4)
    assert one["pop"].population_size is None and tree_equal(one["pop"], pop[4])
    assert same_values(one["adam"].mu, state.mu[4]) and same_values(one["adam"].nu, state.nu[4])
    assert torch.equal(one["fitness"], torch.arange(6.0))  # not a population's tensor: whole
    for members, index in ((-1, 5), (slice(1, 6, 2), [1, 3, 5]), ([5, 0, 5], [5, 0, 5]),
                           (torch.tensor([2, 1]), [2, 1]), (range(3), [0, 1, 2]), (torch.tensor(3), 3)):
        got = ck.load(path, like=pop.species, at="pop", members=members)
        want = pop[torch.tensor(index)] if isinstance(index, list) else pop[index]
        assert tree_equal(got, want), members
    assert ck.load(path, like=pop.species, at="pop", members=[]).population_size == 0
    assert tree_equal(ck.load(path, like=opt.init(pop).mu, at=("adam", "mu")), state.mu)
    assert torch.equal(ck.load(path, like=torch.zeros(6), at="fitness"), torch.arange(6.0))


def test_load_tensors_by_name(tmp_path):
    pop = _population(5)
    path = tmp_path / "t.safetensors"
    ck.save(path, {"pop": pop, "step": 1})
    out = ck.load_tensors(path, ["pop/2.bias", "pop/0.weight"], members=[4, 1])
    assert list(out) == ["pop/2.bias", "pop/0.weight"]
    assert torch.equal(out["pop/0.weight"], pop.params["0.weight"][torch.tensor([4, 1])])
    assert torch.equal(ck.load_tensors(path, "pop/0.bias", members=2)["pop/0.bias"], pop.params["0.bias"][2])
    assert sorted(ck.load_tensors(path)) == sorted(f"pop/{n}" for n in pop.species.names)
    with pytest.raises(KeyError, match="no tensor 'pop/9.weight'; it has"):
        ck.load_tensors(path, ["pop/0.weight", "pop/9.weight"])


def test_one_member_of_64_reads_about_a_64th_of_the_file(tmp_path):
    pop = _population(64, sizes=(128, 256, 128))  # ~257 KiB per member
    path = tmp_path / "pop64.safetensors"
    ck.save(path, pop)
    size = path.stat().st_size
    reads = []
    from nytorch_fn import _checkpoint

    real = _checkpoint._readinto

    def counting(f, view, offset):
        reads.append(len(view))
        return real(f, view, offset)

    before = _rchar()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_checkpoint, "_readinto", counting)
        one = ck.load(path, like=pop.species, members=37)
    after = _rchar()
    assert tree_equal(one, pop[37])
    # one member, plus at most one 64 KiB digest block per tensor whose members are smaller (the biases)
    bound = size / 64 + len(pop.species.names) * (64 << 10)
    assert size / 64 <= sum(reads) <= bound < 2.5 * size / 64, (sum(reads), size)
    if before is not None:  # the kernel's count agrees (the header is read too)
        assert after - before <= bound + _data_start(path) + 4096, (after - before, size)


def test_a_corrupted_member_is_named_and_the_others_still_load(tmp_path):
    pop = _population(8, sizes=(128, 128, 4))  # 64 KiB of 0.weight per member: one digest each
    path = tmp_path / "c.safetensors"
    ck.save(path, {"pop": pop})
    e = _entry(path, "pop/0.weight")
    assert e["rows_per_digest"] == 1 and len(e["digests"]) == 8
    row = (e["offsets"][1] - e["offsets"][0]) // 8
    _flip(path, _data_start(path) + e["offsets"][0] + 5 * row + 17)
    corrupted = path.read_bytes()
    like = {"pop": pop.species}
    assert tree_equal(ck.load(path, like=like, members=[0, 3, 7])["pop"], pop[torch.tensor([0, 3, 7])])
    for call in (lambda: ck.load(path, like=like, members=5), lambda: ck.load(path, like=like),
                 lambda: ck.load(path, like=like, members=slice(4, 8)),
                 lambda: ck.load_tensors(path, ["pop/0.weight"], members=5)):
        with pytest.raises(ck.CheckpointError, match=r"tensor 'pop/0\.weight' is corrupted \(member 5: its SHA-256"):
            call()
    assert path.read_bytes() == corrupted
    # small members share a digest block: the message names the block
    small = _population(8)
    ck.save(path, small)
    e = _entry(path, "0.weight")
    assert e["rows_per_digest"] >= 8 and len(e["digests"]) == 1
    _flip(path, _data_start(path) + e["offsets"][0] + 3)
    with pytest.raises(ck.CheckpointError, match=r"'0\.weight' is corrupted \(members 0\.\.7"):
        ck.load(path, like=small.species, members=6)


def test_bad_members_at_and_device_are_clear_and_change_nothing(tmp_path):
    pop = _population(4)
    path = tmp_path / "b.safetensors"
    ck.save(path, {"pop": pop, "step": 2})
    before = path.read_bytes()
    like = {"pop": pop, "step": 0}
    snap = Snapshot(pop)
    cases = [
        (dict(members=4), IndexError, "member 4 is out of range for the population of 4 at tree\\['pop'\\]"),
        (dict(members=[0, -5]), IndexError, "member -5 is out of range"),
        (dict(members=True), TypeError, "got bool"),
        (dict(members=1.0), TypeError, "members expects"),
        (dict(members=[0.5]), TypeError, "expected ints|expects ints"),
        (dict(members=torch.tensor([True])), TypeError, "integer tensor"),
        (dict(device="bogus"), ValueError, "device expects a torch device"),
        (dict(device="meta"), ValueError, "holds no values"),
        (dict(at="popp"), KeyError, "has no 'popp'"),
        (dict(at="pop/0"), KeyError, "a particle"),
    ]
    if not torch.cuda.is_available():
        cases.append((dict(device="cuda:0"), ValueError, "'cuda:0' is not available here"))
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            ck.load(path, like=like, **kwargs)
    with pytest.raises(ValueError, match="has none at tree\\['step'\\]"):
        ck.load(path, like=0, at="step", members=0)
    with pytest.raises(ValueError, match="has none"):
        ck.save(tmp_path / "s.safetensors", nf.particle(mlp(0))) or ck.load(tmp_path / "s.safetensors", like=pop.species, members=0)
    with pytest.raises(ValueError, match="not available|device expects"):
        ck.load_tensors(path, device="nowhere:3")
    assert path.read_bytes() == before and snap.unchanged()
    # a template population must match the saved size; members then picks from it
    assert tree_equal(ck.load(path, like=like, members=1, device="cpu")["pop"], pop[1])
    with pytest.raises(ck.CheckpointMismatchError, match="a population of 4, `like` a population of 2"):
        ck.load(path, like={"pop": pop[:2], "step": 0}, members=1)


def test_a_structural_mismatch_is_found_before_any_tensor_is_read(tmp_path, monkeypatch):
    from nytorch_fn import _checkpoint

    pop = _population(4)
    path = tmp_path / "s.safetensors"
    ck.save(path, {"pop": pop, "step": 2})
    reads = []
    real = _checkpoint._readinto
    monkeypatch.setattr(_checkpoint, "_readinto", lambda f, v, o: reads.append(len(v)) or real(f, v, o))
    with pytest.raises(ck.CheckpointMismatchError, match="the file has a int, `like` a str"):
        ck.load(path, like={"pop": pop.species, "step": ""})
    assert reads == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        for name, write in (("c.safetensors", lambda p: ck.save(p, {"step": 1})),
                            ("m.safetensors", lambda p: ck.save_state_dict(p, nf.particle(mlp(0))))):
            path = tmp_path / name
            write(path)
            assert stat_mode(path) == 0o666 & ~umask
            with open(tmp_path / ("ref-" + name), "w"):
                pass
            assert stat_mode(path) == stat_mode(tmp_path / ("ref-" + name))
            os.chmod(path, 0o640)  # replacing a file keeps its permission bits, as open(path, "w") does
            write(path)
            assert stat_mode(path) == 0o640
    finally:
        os.umask(old)


def stat_mode(path) -> int:
    import stat

    return stat.S_IMODE(os.stat(path).st_mode)


def test_format_1_files_still_load(tmp_path):
    import base64

    path = tmp_path / "v1.safetensors"
    path.write_bytes(base64.b64decode("".join(_V1_FILE)))
    torch.manual_seed(0)
    p = nf.particle(nn.Linear(3, 2))
    like = {"pop": p.species, "step": 0, "t": torch.zeros(3, dtype=torch.int64)}
    out = ck.load(path, like=like)
    assert out["step"] == 5 and torch.equal(out["t"], torch.arange(3))
    assert same_values(out["pop"], nf.stack([p, p * 2, p * 3]))
    assert same_values(ck.load(path, like=like, members=2)["pop"], p * 3)
    assert ck.read_manifest(path)["format_version"] == 1
    data = bytearray(path.read_bytes())
    data[-30] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="SHA-256"):
        ck.load(path, like=like, members=0)


def test_block_size_keeps_the_header_small():
    from nytorch_fn import _checkpoint

    assert _checkpoint._block_size(256 << 20) == 1 << 16
    for total in (1 << 30, 100 << 30, 1 << 40):
        block = _checkpoint._block_size(total)
        assert total // block <= 1 << 16 and block >= 1 << 16
    assert _checkpoint._rows_per_digest(64, (64, 1 << 20), torch.float32, 1 << 16) == 1
    assert _checkpoint._rows_per_digest(64, (64, 3), torch.float32, 1 << 16) == 5462
    assert _checkpoint._rows_per_digest(None, (64, 3), torch.float32, 1 << 16) is None
    assert _checkpoint._rows_per_digest(4, (4, 0), torch.float32, 1 << 16) is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), width=st.sampled_from([1, 5, 200]), picks=st.lists(st.integers(-9, 8), max_size=6), seed=st.integers(0, 3))
def test_law_a_member_load_is_the_member_of_the_full_load(tmp_path_factory, n, width, picks, seed):
    picks = [i for i in picks if -n <= i < n]
    pop = _population(n, sizes=(width, 3), seed=seed)
    path = tmp_path_factory.mktemp("law") / "p.safetensors"
    ck.save(path, pop)
    full = ck.load(path, like=pop.species)
    assert tree_equal(full, pop)
    assert tree_equal(ck.load(path, like=pop.species, members=picks), full[torch.tensor(picks, dtype=torch.int64)])
    for i in picks[:2]:
        assert tree_equal(ck.load(path, like=pop.species, members=i), full[i])


# ---------------------------------------------------------------------------
# plain state_dict files
# ---------------------------------------------------------------------------


class Tied(nn.Module):
    """An embedding whose weight is also the output projection (as GPT-2's)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids)))


def test_state_dict_export_is_what_module_load_state_dict_reads(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    net = Tied()
    net.train()
    net(torch.randint(0, 7, (8,)))  # running statistics that differ from a fresh module's
    p = nf.particle(net)
    assert p.species.names == ("embed.weight", "norm.weight", "norm.bias")  # the tied weight: one entry
    p = p * 1.5
    path = tmp_path / "model.safetensors"
    snap = Snapshot(p)
    ck.save_state_dict(path, p, metadata={"note": "soup"})
    assert snap.unchanged()
    reference = nf.to_module(p).state_dict()
    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(reference) and "head.weight" in tensors and "scratch" not in tensors
    assert all(tensor_equal(tensors[k], v) for k, v in reference.items())
    fresh = Tied()
    fresh.load_state_dict(tensors)  # strict
    assert torch.equal(fresh.head.weight, p.params["embed.weight"]) and fresh.head.weight is fresh.embed.weight
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "soup"}
    # and back
    q, buffers = ck.load_state_dict(path, like=Tied(), with_buffers=True)
    assert same_values(q, p) and set(buffers) == {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    assert torch.equal(buffers["norm.running_mean"], net.norm.running_mean)
    q = ck.load_state_dict(path, like=p.species)
    assert q.species is p.species and tree_equal(q, p) and q.tensors[0].data_ptr() != p.tensors[0].data_ptr()
    assert same_values(ck.load_state_dict(path, like=p), p)
    # written once, as save_pretrained does: strict module loading misses the alias, ours does not
    ck.save_state_dict(path, p, tied="first")
    assert "head.weight" not in load_file(str(path))
    assert same_values(ck.load_state_dict(path, like=p.species), p)


def test_state_dict_import_of_a_file_written_by_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"format": "pt"})
    torch.manual_seed(4)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    q = ck.load_state_dict(path, like=other)
    assert same_values(q, nf.particle(net))
    assert q.species.names == nf.particle(other).species.names and not torch.equal(q.tensors[0], other[0].weight)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("0.bias"), "the file lacks parameter '0.bias'"),
        (lambda sd: sd.__setitem__("0.weight", torch.zeros(5, 4)), "tensor '0.weight' has shape (5, 4) in the file, (8, 4)"),
        (lambda sd: sd.__setitem__("2.bias", torch.zeros(3, dtype=torch.float64)), "tensor '2.bias' has dtype float64 in the file, float32"),
        (lambda sd: sd.__setitem__("extra", torch.zeros(1)), "the file has tensor 'extra', which the species lacks"),
    ],
)
def test_state_dict_mismatches_name_the_first_one(tmp_path, change, message):
    from safetensors.torch import save_file

    net = mlp(0)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    change(sd)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    template = nf.particle(mlp(1))
    snap = Snapshot(template)
    with pytest.raises(ck.CheckpointMismatchError) as info:
        ck.load_state_dict(path, like=template)
    assert message in str(info.value) and str(path) in str(info.value), str(info.value)
    assert snap.unchanged()
    if "extra" in message:
        assert same_values(ck.load_state_dict(path, like=template, strict=False), nf.particle(net))


def test_state_dict_buffers_tied_values_and_bad_arguments(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = Tied()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "t.safetensors"
    save_file({k: v for k, v in sd.items() if k != "norm.running_var"}, str(path))
    with pytest.raises(ck.CheckpointMismatchError, match="lacks buffer 'norm.running_var'"):
        ck.load_state_dict(path, like=net)
    assert same_values(ck.load_state_dict(path, like=net, strict=False), nf.particle(net))
    sd["head.weight"] = sd["head.weight"] + 1
    save_file(sd, str(path))
    with pytest.raises(ck.CheckpointMismatchError, match="tied tensors 'embed.weight' and 'head.weight' differ"):
        ck.load_state_dict(path, like=net)
    only_alias = {k: v for k, v in net.state_dict().items() if k != "embed.weight"}
    save_file({k: v.clone() for k, v in only_alias.items()}, str(path))
    assert same_values(ck.load_state_dict(path, like=net), nf.particle(net))
    del only_alias["head.weight"]
    save_file({k: v.clone() for k, v in only_alias.items()}, str(path))
    with pytest.raises(ck.CheckpointMismatchError, match=r"lacks parameter 'embed.weight' \(nor under its tied names \['head.weight'\]\)"):
        ck.load_state_dict(path, like=net)
    p = nf.particle(net)
    with pytest.raises(TypeError, match="population of 2"):
        ck.save_state_dict(path, nf.stack([p, p]))
    with pytest.raises(TypeError, match="expected a Particle"):
        ck.save_state_dict(path, net)
    with pytest.raises(ValueError, match="tied expects"):
        ck.save_state_dict(path, p, tied="none")
    with pytest.raises(ValueError, match="not available|device expects"):
        ck.load_state_dict(path, like=net, device="nowhere")
    (tmp_path / "junk").write_bytes(b"junk" * 9)
    with pytest.raises(ck.CheckpointError, match="not a safetensors file"):
        ck.load_state_dict(tmp_path / "junk", like=net)
