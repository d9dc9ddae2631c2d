"""Out-of-core merging of safetensors checkpoints, mergekit's YAML, the command line, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import nytorch_fn as nf
from nytorch_fn import merge

yaml = pytest.importorskip("yaml")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


def save_sharded(p: nf.Particle, folder: Path, extra: dict | None = None) -> Path:
    """A Hugging Face style sharded folder, written with safetensors' own writer and a hand index."""
    folder.mkdir(parents=True)
    names = list(p.species.names)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for fname, ns in shards.items():
        save_file({n: p.params[n].contiguous() for n in ns}, str(folder / fname))
    weight_map = {n: f for f, ns in shards.items() for n in ns}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    ck = merge.Checkpoint(folder)
    return {n: ck.read(n) for n in ck.names}


@pytest.fixture
def models(tmp_path):
    base = nf.particle(_net())
    g = torch.Generator().manual_seed(1)
    fts = [base + 0.1 * base.randn(generator=g) for _ in range(3)]
    paths = [save_sharded(p, tmp_path / f"ft{i}") for i, p in enumerate(fts)]
    return base, fts, save_sharded(base, tmp_path / "base"), paths


@pytest.mark.parametrize("method,kw", [
    ("ties", dict(density=0.5, weight=[1.0, 0.5, 0.25])),
    ("dare_ties", dict(density=0.5)),
    ("della_linear", dict(density=0.5, epsilon=0.2)),
    ("model_stock", {}),
])
def test_out_of_core_merge_of_sharded_folders_equals_the_in_memory_merge_bit_for_bit(models, tmp_path, method, kw):
    base, fts, base_dir, paths = models
    in_memory = merge.merge_particles(method, fts, base=base, generator=torch.Generator().manual_seed(7), **kw)
    out = merge.merge_files(method, paths, tmp_path / "out", base=base_dir, shard_size=100,
                            generator=torch.Generator().manual_seed(7), **kw)
    assert (out / "model.safetensors.index.json").exists()  # several shards of at most 100 bytes
    got = read_all(out)
    assert list(got) == list(base.species.names)
    for name in base.species.names:
        assert torch.equal(got[name], in_memory.params[name]), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_bf16_checkpoints_and_an_explicit_dtype(tmp_path):
    a = {"w": torch.tensor([1.0, 2.0, 3.0]).bfloat16(), "n": torch.tensor([1, 2])}
    b = {"w": torch.tensor([3.0, 2.0, 0.0]).bfloat16(), "n": torch.tensor([1, 2])}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    out = merge.merge_files("linear", [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "o")
    got = read_all(out)
    assert got["w"].dtype == torch.bfloat16 and got["w"].tolist() == [2.0, 2.0, 1.5]
    assert torch.equal(got["n"], torch.tensor([1, 2]))  # non-float, equal: copied
    f32 = merge.merge_files("linear", [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "o32",
                            dtype="float32")
    assert read_all(f32)["w"].dtype == torch.float32


def test_bad_checkpoints_are_refused_and_leave_no_output(models, tmp_path):
    base, fts, base_dir, paths = models
    out = tmp_path / "out"
    with pytest.raises(merge.CheckpointError, match="does not exist"):
        merge.merge_files("linear", [paths[0], tmp_path / "nowhere"], out)
    os.remove(paths[1] / "model-00002-of-00002.safetensors")
    with pytest.raises(merge.CheckpointError, match="names shard 'model-00002-of-00002.safetensors', which does not exist"):
        merge.merge_files("linear", [paths[0], paths[1]], out)
    other = nf.particle(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)))
    save_sharded(other, tmp_path / "other")
    with pytest.raises(merge.CheckpointError, match=r"differ at tensor '2.weight'.*\[4, 5\].*\[3, 5\]"):
        merge.merge_files("ties", [paths[0], tmp_path / "other"], out, base=base_dir)
    save_file({"0.weight": torch.zeros(5, 6)}, str(tmp_path / "part.safetensors"))
    with pytest.raises(merge.CheckpointError, match="differ at tensor '0.bias'"):
        merge.merge_files("linear", [paths[0], tmp_path / "part.safetensors"], out)
    save_file({"x": torch.tensor([1, 2])}, str(tmp_path / "i1.safetensors"))
    save_file({"x": torch.tensor([1, 3])}, str(tmp_path / "i2.safetensors"))
    with pytest.raises(merge.CheckpointError, match="'x' is not floating point"):
        merge.merge_files("linear", [tmp_path / "i1.safetensors", tmp_path / "i2.safetensors"], out)
    with pytest.raises(ValueError, match=r"density.*\(0, 1\]"):
        merge.merge_files("ties", [paths[0]], out, base=base_dir, density=0.0)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- mergekit YAML -----------------------------------------------------------------------

LAYERS = 40


def llama_like(seed: int, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"model.embed_tokens.weight": torch.randn(8, 4, generator=g)}
    for i in range(layers):
        t[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(4, 4, generator=g)
        t[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(6, 4, generator=g)
        t[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(4, generator=g)
    t["model.norm.weight"] = torch.randn(4, generator=g)
    t["lm_head.weight"] = torch.randn(8, 4, generator=g)
    return t


def hub_folder(root: Path, repo: str, seed: int, layers: int = LAYERS) -> dict[str, torch.Tensor]:
    folder = root / repo
    folder.mkdir(parents=True)
    t = llama_like(seed, layers)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": layers, "architectures": ["LlamaForCausalLM"]}))
    return t


# mergekit's examples/linear.yml, examples/gradient-slerp.yml, examples/orcamini-platy-44layer.yml and
# examples/ties.yml, verbatim
LINEAR_YML = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      weight: 1.0
  - model: WizardLM/WizardLM-13B-V1.2
    parameters:
      weight: 0.3
  - model: garage-bAInd/Platypus2-13B
    parameters:
      weight: 0.5
merge_method: linear
dtype: float16
"""

GRADIENT_SLERP_YML = """\
slices:
  - sources:
      - model: psmathur/orca_mini_v3_13b
        layer_range: [0, 40]
      - model: garage-bAInd/Platypus2-13B
        layer_range: [0, 40]
# or, the equivalent models: syntax:
# models:
#   - model: psmathur/orca_mini_v3_13b
#   - model: garage-bAInd/Platypus2-13B
merge_method: slerp
base_model: psmathur/orca_mini_v3_13b
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
"""

PASSTHROUGH_YML = """\
slices:
  - sources:
    - model: psmathur/orca_mini_v3_13b
      layer_range: [0, 24]
  - sources:
    - model: garage-bAInd/Platypus2-13B
      layer_range: [20, 40]
merge_method: passthrough
dtype: float16
"""

TIES_YML = """\
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1] # weight gradient
  - model: WizardLM/WizardMath-13B-V1.0
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    repos = ["psmathur/orca_mini_v3_13b", "WizardLM/WizardLM-13B-V1.2", "garage-bAInd/Platypus2-13B",
             "WizardLM/WizardMath-13B-V1.0", "TheBloke/Llama-2-13B-fp16"]
    return {r: hub_folder(tmp_path, r, i) for i, r in enumerate(repos)}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yml"
    p.write_text(text)
    return p


def test_mergekit_linear_yml_runs_unchanged(hub, tmp_path):
    out = merge.run_config(_write(tmp_path, LINEAR_YML), tmp_path / "merged")
    got = read_all(out)
    a, b, c = (hub[r] for r in ["psmathur/orca_mini_v3_13b", "WizardLM/WizardLM-13B-V1.2", "garage-bAInd/Platypus2-13B"])
    for name in a:
        expected = ((1.0 * a[name].double() + 0.3 * b[name].double() + 0.5 * c[name].double()) / 1.8).half()
        assert got[name].dtype == torch.float16
        assert torch.allclose(got[name].float(), expected.float(), atol=2e-3, rtol=0), name
    assert (out / "mergekit_config.yml").read_text() == LINEAR_YML
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == LAYERS


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    a, b = a.double(), b.double()
    cos = float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))
    th = math.acos(cos)
    return (math.sin((1 - t) * th) * a + math.sin(t * th) * b) / math.sin(th)


def test_mergekit_gradient_slerp_yml_interpolates_t_over_the_layers(hub, tmp_path):
    out = merge.run_config(_write(tmp_path, GRADIENT_SLERP_YML), tmp_path / "merged")
    got = read_all(out)
    a, b = hub["psmathur/orca_mini_v3_13b"], hub["garage-bAInd/Platypus2-13B"]
    for i in (0, 13, 39):
        pos = i / 39 * 4  # position in the 5-point gradient
        j = min(int(pos), 3)
        frac = pos - int(pos) if int(pos) < 4 else 0.0
        attn = [0, 0.5, 0.3, 0.7, 1]
        mlp = [1, 0.5, 0.7, 0.3, 0]
        t_attn = (1 - frac) * attn[j] + frac * attn[min(j + 1, 4)] if i < 39 else 1.0
        t_mlp = (1 - frac) * mlp[j] + frac * mlp[min(j + 1, 4)] if i < 39 else 0.0
        for name, t in ((f"model.layers.{i}.self_attn.q_proj.weight", t_attn),
                        (f"model.layers.{i}.mlp.up_proj.weight", t_mlp),
                        (f"model.layers.{i}.input_layernorm.weight", 0.5)):
            assert torch.allclose(got[name].float(), _slerp(a[name], b[name], t).float(), atol=3e-3), (name, t)
    name = "lm_head.weight"  # outside the layers: the fallback 0.5
    assert torch.allclose(got[name].float(), _slerp(a[name], b[name], 0.5).float(), atol=3e-3)


def test_mergekit_passthrough_yml_stacks_layers(hub, tmp_path):
    out = merge.run_config(_write(tmp_path, PASSTHROUGH_YML), tmp_path / "merged")
    got = read_all(out)
    orca, platy = hub["psmathur/orca_mini_v3_13b"], hub["garage-bAInd/Platypus2-13B"]
    assert sum(n.endswith("q_proj.weight") for n in got) == 44
    assert torch.equal(got["model.layers.3.mlp.up_proj.weight"], orca["model.layers.3.mlp.up_proj.weight"].half())
    assert torch.equal(got["model.layers.30.mlp.up_proj.weight"], platy["model.layers.26.mlp.up_proj.weight"].half())
    assert torch.equal(got["model.embed_tokens.weight"], orca["model.embed_tokens.weight"].half())  # first slice
    assert torch.equal(got["lm_head.weight"], platy["lm_head.weight"].half())  # last slice
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 44


def test_mergekit_ties_yml_runs_unchanged_with_gradients_and_filters(hub, tmp_path):
    out = merge.run_config(_write(tmp_path, TIES_YML), tmp_path / "merged")
    got = read_all(out)
    base = hub["TheBloke/Llama-2-13B-fp16"]
    fts = [hub[r] for r in ["psmathur/orca_mini_v3_13b", "garage-bAInd/Platypus2-13B", "WizardLM/WizardMath-13B-V1.0"]]
    # the last layer (t = 1): densities 0.1, 0.5, 0.33; weights 1, 1, 0.5 (mlp) or 0 (others)
    m = nn.Module()
    m.x = nn.Parameter(torch.zeros(6, 4))
    sp = nf.particle(m).species
    name = "model.layers.39.mlp.up_proj.weight"
    expected = merge.ties(nf.Particle(sp, {"x": base[name]}), [nf.Particle(sp, {"x": f[name]}) for f in fts],
                          density=[0.1, 0.5, 0.33], weight=[1.0, 1.0, 0.5]).params["x"]
    assert torch.equal(got[name], expected.half())
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float16


@pytest.mark.parametrize("text,error", [
    ("models:\n  - model: psmathur/orca_mini_v3_13b\nmerge_method: soup\n", "unknown merge method 'soup'"),
    ("models:\n  - model: psmathur/orca_mini_v3_13b\nmerge_method: linear\nmerge_methd: x\n", "unknown key 'merge_methd'"),
    ("models:\n  - model: nobody/nothing\n    parameters: {weight: 1}\nmerge_method: linear\n", "'nobody/nothing' does not exist"),
    ("models:\n  - model: psmathur/orca_mini_v3_13b\n    parameters: {wieght: 1}\nmerge_method: linear\n", "unknown parameter 'wieght'"),
    ("models:\n  - model: psmathur/orca_mini_v3_13b\n  - model: garage-bAInd/Platypus2-13B\n"
     "merge_method: linear\n", "missing required parameter 'weight'"),
    ("models:\n  - model: psmathur/orca_mini_v3_13b\n  - model: garage-bAInd/Platypus2-13B\n"
     "  - model: WizardLM/WizardLM-13B-V1.2\nmerge_method: slerp\nbase_model: psmathur/orca_mini_v3_13b\n"
     "parameters: {t: 0.5}\n", "slerp expects exactly 1 model besides the base, got 2"),
    ("models:\n  - model: psmathur/orca_mini_v3_13b\n    parameters: {weight: 1, density: 1.5}\n"
     "merge_method: ties\nbase_model: TheBloke/Llama-2-13B-fp16\n", r"density.*\(0, 1\]"),
    ("models:\n  - model: psmathur/orca_mini_v3_13b\n    parameters: {weight: 1}\n"
     "  - model: garage-bAInd/Platypus2-13B\n    parameters: {weight: -1}\nmerge_method: linear\n", "non-zero sum"),
])
def test_bad_configs_are_refused_by_name_and_write_nothing(hub, tmp_path, text, error):
    with pytest.raises((merge.ConfigError, merge.CheckpointError, ValueError), match=error):
        merge.run_config(_write(tmp_path, text), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_the_command_line(hub, tmp_path, capsys):
    from nytorch_fn._merge._cli import main

    assert main([str(_write(tmp_path, LINEAR_YML)), str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "model.safetensors").exists()
    assert main([str(_write(tmp_path, LINEAR_YML.replace("linear", "soup"))), str(tmp_path / "bad")]) == 1
    assert "unknown merge method 'soup'" in capsys.readouterr().err
    run = subprocess.run([sys.executable, "-m", "nytorch_fn.merge", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "CONFIG" in run.stdout.upper()


# -- chunking and reading never change a value ------------------------------------------------

EVERY_METHOD = {
    "linear": {"weight": [1.0, 0.5, 0.25]},
    "slerp": {"t": 0.3},
    "multislerp": {},
    "nuslerp": {"weight": [0.4, 0.6]},
    "karcher": {},
    "task_arithmetic": {"weight": [0.5, 0.3, 0.2], "lambda_": 1.5},
    "ties": {"density": 0.4, "weight": [1.0, 0.5, 0.25]},
    "dare_ties": {"density": 0.6},
    "dare_linear": {"density": 0.6},
    "breadcrumbs": {"density": 0.5, "gamma": 0.1},
    "breadcrumbs_ties": {"density": 0.5, "gamma": 0.1},
    "della": {"density": 0.5, "epsilon": 0.2},
    "della_linear": {"density": 0.5, "epsilon": 0.2},
    "model_stock": {},
    "nearswap": {"t": 0.01},
    "sce": {"select_topk": 0.5},
    "arcee_fusion": {},
    "ram": {"epsilon": 0.05},
    "ramplus_tl": {"epsilon": 0.05},
    "passthrough": {"scale": [2.0]},
}
VARIANTS = [(m, kw, None) for m, kw in EVERY_METHOD.items()] + [
    ("ties", {"density": 0.4, "rescale": True}, None),
    ("breadcrumbs", {"density": 0.5, "gamma": 0.1, "rescale": True}, "mergekit"),
    ("dare_ties", {"density": 0.6}, "mergekit"),
    ("della", {"density": 0.5, "epsilon": 0.2}, "mergekit"),
    ("ties", {"density": 0.4}, "mergekit"),
]


def _inputs(method: str):
    from nytorch_fn._merge._methods import METHODS

    m = METHODS[method]
    torch.manual_seed(3)
    base = nf.particle(nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 7)))
    g = torch.Generator().manual_seed(4)
    k = m.max_models if m.max_models is not None else 3
    k = max(k, m.min_models)
    if method == "nuslerp":
        k = 2
    fts = [base + 0.1 * base.randn(generator=g) for _ in range(k)]
    if method == "ram" or method == "ramplus_tl":  # exact zeros in the task vectors, so the masks matter
        fts = [f.zip_with(base, lambda a, b, _: torch.where(torch.rand(a.shape, generator=g) < 0.3, b, a)) for f in fts]
    return (base if m.base != "ignored" else None), fts


@pytest.mark.parametrize("method,kw,compat", VARIANTS, ids=lambda v: v if isinstance(v, str) else None)
def test_chunk_size_and_reading_from_files_never_change_a_bit(tmp_path, monkeypatch, method, kw, compat):
    """Every method, in memory with the default chunk, equals (bit for bit) the same merge
    with 50-entry chunks (3 per weight) and radix selection on every tensor, in memory and out of core."""
    from nytorch_fn._merge import _select

    base, fts = _inputs(method)
    run = lambda: merge.merge_particles(method, fts, base=base, compat=compat,  # noqa: E731
                                        generator=torch.Generator().manual_seed(5), **kw)
    reference = run()
    paths = [save_sharded(p, tmp_path / f"ft{i}") for i, p in enumerate(fts)]
    base_dir = save_sharded(base, tmp_path / "base") if base is not None else None
    monkeypatch.setattr(_select, "CHUNK", 50)
    monkeypatch.setattr(_select, "SMALL", 8)
    small_chunks = run()
    out = merge.merge_files(method, paths, tmp_path / "out", base=base_dir, compat=compat,
                            generator=torch.Generator().manual_seed(5), **kw)
    got = read_all(out)
    for name in reference.species.names:
        assert torch.equal(small_chunks.params[name], reference.params[name]), name
        assert torch.equal(got[name], reference.params[name]), name


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_no_input_file_stays_mapped_while_merging(models, tmp_path, monkeypatch):
    from nytorch_fn._merge import _files

    base, fts, base_dir, paths = models
    seen = []
    write = _files.ShardWriter.write

    def spy(self, name, t):
        maps = Path("/proc/self/maps").read_text()
        seen.append(any(str(p) in maps for p in [base_dir, *paths]))
        return write(self, name, t)

    monkeypatch.setattr(_files.ShardWriter, "write", spy)
    merge.merge_files("ties", paths, tmp_path / "out", base=base_dir, density=0.5)
    assert seen and not any(seen)
