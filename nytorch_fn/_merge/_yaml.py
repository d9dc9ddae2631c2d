"""mergekit's YAML merge configurations, run out of core on safetensors checkpoints.

Supported: ``merge_method`` (every method of ``nytorch_fn.merge.METHODS``),
``models`` or ``slices`` (``sources`` with ``layer_range``, optional
``base_model`` and ``parameters`` per slice), ``base_model``, ``parameters``
at every level mergekit reads them (slice source > slice > model > global),
with scalars, gradients (lists interpolated over the layers, as mergekit) and
``filter``/``value`` lists (first filter contained in the tensor name wins),
``dtype`` / ``out_dtype``, and ``tokenizer_source`` naming a model (or
``base``) whose tokenizer files are copied. Refused by name: ``modules``,
``tokenizer`` blocks, ``chat_template``, ``tokenizer_source: union``, LoRA
model references, hub models (paths must exist locally: relative to the
working directory, else to the config file's folder).

Layers come from tensor names (``_layers``): a gradient's position ``t`` is
``i / (L - 1)`` for layer ``i`` of ``L``, and 0 for tensors outside the layer
stack, as mergekit's planner does. With ``slices``, tensors outside the stack
come from the first slice's sources when their names look like embeddings
(``embed*``, ``wte``, ``wpe``, ...) and from the last slice's otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from . import _methods as M
from ._files import Checkpoint, CheckpointError, Job, parse_dtype, run_jobs
from ._layers import is_embedding, join_layer, layer_positions, split_layer
from ._particles import compat_flag, resolve, seed_from

TOP_KEYS = {"merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "modules", "name"}
REFUSED = {
    "modules": "multi-module merges (modules:) are not supported; use models: or slices:",
    "tokenizer": "tokenizer: blocks (vocabulary merging) are not supported; use tokenizer_source: base or a model",
    "chat_template": "chat_template: is not supported; edit tokenizer_config.json after merging",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


class ConfigError(ValueError):
    """A merge configuration that cannot be run (the message names the key or model)."""


def _keys(d: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}")
    return dict(d)


def load(config: Any) -> tuple[dict, Path | None, str | None]:
    """The parsed config, the folder it came from, and its text."""
    if isinstance(config, Mapping):
        return dict(config), None, None
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist")
    try:
        import yaml
    except ImportError:
        raise ImportError("reading YAML configs needs PyYAML: pip install 'nytorch-fn[merge]'") from None
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config {str(path)!r}: expected a mapping at the top, got {type(data).__name__}")
    return dict(data), path.parent, text


# ---------------------------------------------------------------------------
# parameter settings
# ---------------------------------------------------------------------------


def _scalar(x: Any) -> bool:
    return isinstance(x, (bool, int, float, str))


def evaluate(setting: Any, tensor: str, t: float, where: str) -> Any:
    """mergekit's ``evaluate_setting``: scalars, gradients, filter lists; None if no filter matches."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if _scalar(setting):
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(_scalar(e) for e in setting):
            if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
                scaled = t * (len(setting) - 1)
                i0 = int(scaled)
                i1 = min(len(setting) - 1, i0 + 1)
                frac = scaled - i0
                return (1 - frac) * setting[i0] + frac * setting[i1]
            return setting[int(t * (len(setting) - 1))]
        for cond in setting:
            c = _keys(cond, {"filter", "value"}, where)
            if "value" not in c:
                raise ConfigError(f"{where}: a filter entry needs a 'value'")
            f = c.get("filter")
            if f is None or f == "*" or (tensor and str(f) in tensor):
                return evaluate(c["value"], tensor, t, where)
        return None
    raise ConfigError(f"{where}: unexpected parameter setting {setting!r}")


def _check_names(m: M.Method, params: Any, where: str) -> dict:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: parameters expects a mapping, got {type(params).__name__}")
    known = {p.yaml for p in m.params}
    for k in params:
        if k not in known:
            raise ConfigError(
                f"{where}: unknown parameter {k!r} for {m.name}; expected one of {', '.join(sorted(known)) or 'none'}"
            )
    return dict(params)


class _Source:
    """One model of a slice: its checkpoint, first layer and parameter scopes."""

    def __init__(self, ck: Checkpoint, label: str, params: dict, start: int = 0) -> None:
        self.ck, self.label, self.params, self.start = ck, label, params, start


def _resolve_tensor(m: M.Method, models: list[_Source], shared_scopes: list[dict], model_scopes: list[list[dict]],
                    out_name: str, in_names: list[str], t: float, where: str) -> dict:
    given: dict[str, Any] = {}
    for p in m.params:
        if p.per_model:
            values = []
            for j, src in enumerate(models):
                v = None
                for scope in model_scopes[j]:
                    if p.yaml in scope:
                        v = evaluate(scope[p.yaml], in_names[j], t, f"{where}: {p.yaml}")
                        if v is not None:
                            break
                if v is None:
                    if p.default is M.REQUIRED:
                        raise ConfigError(f"{where}: missing required parameter {p.yaml!r} for model {src.label!r} tensor {in_names[j]!r}")
                    v = p.default
                values.append(v)
            given[p.name] = values
        else:
            v = None
            for scope in shared_scopes:
                if p.yaml in scope:
                    v = evaluate(scope[p.yaml], out_name, t, f"{where}: {p.yaml}")
                    if v is not None:
                        break
            if v is not None:
                given[p.name] = v
            elif p.default is M.REQUIRED:
                raise ConfigError(f"{where}: missing required parameter {p.yaml!r} for tensor {out_name!r}")
    try:
        return resolve(m, given, len(models), f"{where}: tensor {out_name!r}", yaml=True)
    except TypeError as e:
        raise ConfigError(str(e)) from None


# ---------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------


class _Models:
    """Model references resolved to checkpoints, one Checkpoint per path."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.cache: dict[str, Checkpoint] = {}

    def get(self, ref: Any, where: str) -> tuple[Checkpoint, str]:
        if isinstance(ref, Mapping):
            r = _keys(ref, {"model", "lora", "override_architecture"}, where)
            if r.get("lora"):
                raise ConfigError(f"{where}: LoRA model references are not supported; merge the LoRA into its model first")
            ref = r.get("model")
            if isinstance(ref, Mapping):
                ref = _keys(ref, {"path", "revision"}, where).get("path")
        if not isinstance(ref, str) or not ref:
            raise ConfigError(f"{where}: a model expects a path, got {ref!r}")
        if "+" in ref and not Path(ref).exists():
            raise ConfigError(f"{where}: model {ref!r} looks like a model+LoRA reference, which is not supported")
        candidates = [Path(ref)] + ([self.folder / ref] if self.folder is not None else [])
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            raise CheckpointError(
                f"{where}: model {ref!r} does not exist (looked in {', '.join(repr(str(c)) for c in candidates)}); "
                f"nytorch-fn-merge reads local safetensors checkpoints only (download hub models first)"
            )
        key = str(path.resolve())
        if key not in self.cache:
            self.cache[key] = Checkpoint(path)
        return self.cache[key], ref


def _same_names(cks: list[tuple[Checkpoint, str]], where: str) -> None:
    lead, lead_label = cks[0]
    for ck, label in cks[1:]:
        for a, b, la, lb in ((lead, ck, lead_label, label), (ck, lead, label, lead_label)):
            missing = [n for n in a.names if n not in b.shapes]
            if missing:
                raise CheckpointError(
                    f"{where}: the models differ at tensor {missing[0]!r}: {la!r} has it, {lb!r} does not "
                    f"(different architectures?)"
                )


def plan(cfg: dict, folder: Path | None, where: str) -> tuple[list[Job], M.Method, dict]:
    cfg = _keys(cfg, TOP_KEYS, where)
    for k, why in REFUSED.items():
        if k in cfg:
            raise ConfigError(f"{where}: {why}")
    if "merge_method" not in cfg:
        raise ConfigError(f"{where}: missing merge_method")
    try:
        m = M.get(cfg["merge_method"], where)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if ("models" in cfg) == ("slices" in cfg):
        raise ConfigError(f"{where}: expected exactly one of models or slices")
    out_dtype = parse_dtype(cfg.get("out_dtype") or cfg.get("dtype"), f"{where}: dtype")
    glob = _check_names(m, cfg.get("parameters"), f"{where}: parameters")
    models = _Models(folder)
    base_ref = cfg.get("base_model")
    base = models.get(base_ref, f"{where}: base_model") if base_ref is not None else None
    info: dict[str, Any] = {"base": base}
    if "models" in cfg:
        jobs = _plan_models(m, cfg["models"], base, glob, models, out_dtype, where)
    else:
        jobs = _plan_slices(m, cfg["slices"], base, glob, models, out_dtype, where, info)
    tok = cfg.get("tokenizer_source")
    if tok == "union":
        raise ConfigError(f"{where}: tokenizer_source: union (vocabulary merging) is not supported; use base or a model")
    if tok is not None:
        info["tokenizer"] = base if tok == "base" else models.get(tok, f"{where}: tokenizer_source")
        if info["tokenizer"] is None:
            raise ConfigError(f"{where}: tokenizer_source: base needs a base_model")
    return jobs, m, info


def _split_base(
    m: M.Method, entries: list[tuple[Checkpoint, str, dict]], base: tuple[Checkpoint, str] | None, where: str
) -> tuple[tuple[Checkpoint, str, dict] | None, list[tuple[Checkpoint, str, dict]]]:
    """(base source or None, non-base sources) following the method's base policy."""
    if m.base == "ignored" or base is None:
        if m.base == "required":
            raise ConfigError(f"{where}: {m.name} needs a base_model")
        return None, entries
    base_ck, label = base
    others = [e for e in entries if e[0] is not base_ck]
    in_list = [e for e in entries if e[0] is base_ck]
    base_entry = in_list[0] if in_list else (base_ck, label, {})
    return base_entry, others


def _check_count(m: M.Method, k: int, where: str) -> None:
    from ._particles import _check_count as check

    try:
        check(m, k, where)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _plan_models(
    m: M.Method,
    items: Any,
    base: tuple[Checkpoint, str] | None,
    glob: dict,
    models: _Models,
    out_dtype: torch.dtype | None,
    where: str,
) -> list[Job]:
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: models expects a non-empty list")
    entries = []
    for i, item in enumerate(items):
        w = f"{where}: models[{i}]"
        d = _keys(item, {"model", "parameters"}, w)
        if "model" not in d:
            raise ConfigError(f"{w}: missing 'model'")
        ck, label = models.get(d["model"], w)
        entries.append((ck, label, _check_names(m, d.get("parameters"), f"{w}: parameters")))
    base_entry, others = _split_base(m, entries, base, where)
    _check_count(m, len(others), where)
    srcs = [_Source(ck, label, p) for ck, label, p in others]
    every = ([(base_entry[0], base_entry[1])] if base_entry else []) + [(s.ck, s.label) for s in srcs]
    _same_names(every, where)
    lead = every[0][0]
    positions = layer_positions(lead.names)
    jobs = []
    for name in lead.names:
        is_float = lead.dtypes[name].is_floating_point
        params = {}
        if is_float:
            params = _resolve_tensor(m, srcs, [glob], [[s.params, glob] for s in srcs], name,
                                     [name] * len(srcs), positions[name], where)
        jobs.append(Job(name, m if is_float else None, (base_entry[0], name) if base_entry else None,
                        tuple((s.ck, name) for s in srcs), params, out_dtype))
    return jobs


def _plan_slices(
    m: M.Method,
    slices: Any,
    base: tuple[Checkpoint, str] | None,
    glob: dict,
    models: _Models,
    out_dtype: torch.dtype | None,
    where: str,
    info: dict,
) -> list[Job]:
    if not isinstance(slices, list) or not slices:
        raise ConfigError(f"{where}: slices expects a non-empty list")
    parsed = []
    for si, sl in enumerate(slices):
        w = f"{where}: slices[{si}]"
        d = _keys(sl, {"sources", "base_model", "parameters", "residual_weight"}, w)
        if "residual_weight" in d:
            raise ConfigError(f"{w}: residual_weight is not supported")
        if not isinstance(d.get("sources"), list) or not d["sources"]:
            raise ConfigError(f"{w}: sources expects a non-empty list")
        pairs = []  # (source, stop layer)
        for j, src in enumerate(d["sources"]):
            ws = f"{w}.sources[{j}]"
            s = _keys(src, {"model", "layer_range", "parameters"}, ws)
            ck, label = models.get(s.get("model"), ws)
            lr = s.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in lr)
                    and 0 <= lr[0] < lr[1]):
                raise ConfigError(f"{ws}: layer_range expects [start, stop] with 0 <= start < stop, got {lr!r}")
            pairs.append((_Source(ck, label, _check_names(m, s.get("parameters"), f"{ws}: parameters"), lr[0]), lr[1]))
        lengths = {stop - s.start for s, stop in pairs}
        if len(lengths) != 1:
            raise ConfigError(f"{w}: all sources of a slice must have the same number of layers, got {sorted(lengths)}")
        sbase = models.get(d["base_model"], f"{w}: base_model") if d.get("base_model") is not None else base
        parsed.append((w, [s for s, _ in pairs], lengths.pop(), sbase, _check_names(m, d.get("parameters"), f"{w}: parameters")))
    lead = parsed[0][1][0].ck
    stacks: dict[str, int] = {}
    for n in lead.names:
        split = split_layer(n)
        if split is not None:
            stacks[split[0]] = max(stacks.get(split[0], 0), split[1] + 1)
    if not stacks:
        raise ConfigError(f"{where}: slices need layers, but no tensor of {str(lead.path)!r} has a layer index in its name")
    stack = max(stacks, key=lambda k: stacks[k])
    jobs: list[Job] = []
    out_layer = 0

    def roles(srcs, sbase, w):
        entries = [(s.ck, s.label, s.params) for s in srcs]
        b, others = _split_base(m, entries, sbase, w)
        if b is not None and not any(s.ck is b[0] for s in srcs) and m.base != "ignored":
            raise ConfigError(f"{w}: the base model {b[1]!r} must be one of the slice's sources")
        _check_count(m, len(others), w)
        bsrc = next((s for s in srcs if b is not None and s.ck is b[0]), None)
        osrcs = [s for s in srcs if bsrc is None or s is not bsrc]
        return bsrc, osrcs

    def other_job(name, part):
        w, srcs, _, sbase, sparams = part
        bsrc, osrcs = roles(srcs, sbase, w)
        every = ([bsrc] if bsrc else []) + osrcs
        for s in every:
            if name not in s.ck.shapes:
                raise CheckpointError(f"{w}: model {s.label!r} has no tensor {name!r}")
        is_float = lead.dtypes[name].is_floating_point
        params = {}
        if is_float:
            params = _resolve_tensor(m, osrcs, [sparams, glob], [[s.params, sparams, glob] for s in osrcs], name,
                                     [name] * len(osrcs), 0.0, w)
        return Job(name, m if is_float else None, (bsrc.ck, name) if bsrc else None,
                   tuple((s.ck, name) for s in osrcs), params, out_dtype)

    outside = [n for n in lead.names if (split_layer(n) or (None,))[0] != stack]
    for n in outside:
        if is_embedding(n):
            jobs.append(other_job(n, parsed[0]))
    for w, srcs, length, sbase, sparams in parsed:
        bsrc, osrcs = roles(srcs, sbase, w)
        every = ([bsrc] if bsrc else []) + osrcs
        for o in range(length):
            t = o / (length - 1) if length > 1 else 1.0
            layer_names = []
            for s in every:
                idx = s.start + o
                rests = [sp[2] for sp in map(split_layer, s.ck.names) if sp is not None and sp[0] == stack and sp[1] == idx]
                if not rests:
                    raise ConfigError(f"{w}: model {s.label!r} has no layer {idx} in {stack or 'its layer stack'!r}")
                layer_names.append(rests)
            ref = layer_names[0]
            for s, rests in zip(every[1:], layer_names[1:]):
                if rests != ref:
                    diff = next(iter(sorted(set(ref) ^ set(rests))))
                    raise CheckpointError(f"{w}: the sources differ at layer {s.start + o} tensor {diff!r} (different architectures?)")
            for rest in ref:
                out_name = join_layer(stack, out_layer, rest)
                src_name = {id(s): join_layer(stack, s.start + o, rest) for s in every}
                first = every[0]
                is_float = first.ck.dtypes[src_name[id(first)]].is_floating_point
                params = {}
                if is_float:
                    params = _resolve_tensor(m, osrcs, [sparams, glob], [[s.params, sparams, glob] for s in osrcs],
                                             out_name, [src_name[id(s)] for s in osrcs], t, w)
                jobs.append(Job(out_name, m if is_float else None,
                                (bsrc.ck, src_name[id(bsrc)]) if bsrc else None,
                                tuple((s.ck, src_name[id(s)]) for s in osrcs), params, out_dtype))
            out_layer += 1
    for n in outside:
        if not is_embedding(n):
            jobs.append(other_job(n, parsed[-1]))
    info["layers"] = out_layer
    info["first_model"] = parsed[0][1][0]
    return jobs


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def run_config(
    config: Any,
    out_dir: str | os.PathLike,
    *,
    generator: torch.Generator | None = None,
    compat: str | None = None,
    device: str | torch.device = "cpu",
    shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    copy_tokenizer: bool = True,
) -> Path:
    """Run a mergekit YAML configuration on local safetensors checkpoints.

    Args:
        config: a path to a YAML file, or the parsed mapping.
        out_dir: the output folder (written atomically: a temporary folder renamed at the end).
        generator: as ``merge_files``.
        compat: as ``merge_files``.
        device: as ``merge_files``.
        shard_size: as ``merge_files``.
        overwrite: as ``merge_files``.
        copy_tokenizer: copy the tokenizer files of ``tokenizer_source`` (default:
            the base model, else the first model), as ``mergekit-yaml`` does.

    The output folder gets the merged ``*.safetensors`` (and index), the
    ``config.json`` / ``generation_config.json`` of the base (else first)
    model (``num_hidden_layers`` updated after layer stacking), tokenizer
    files, and the configuration as ``mergekit_config.yml``.

    Returns:
        The output folder, a ``Path``.

    Raises:
        ConfigError: an unknown method, key or parameter; a missing required one.
        CheckpointError: a model path that does not exist, a missing shard,
            models of different architectures (the first differing tensor is named).

    Examples:
        >>> out = merge.run_config("ties.yml", "merged", generator=torch.Generator().manual_seed(0))
        >>> sorted(f.name for f in out.iterdir())
        ['mergekit_config.yml', 'model.safetensors']
    """
    where = "merge config" if isinstance(config, Mapping) else f"merge config {str(config)!r}"
    cfg, folder, text = load(config)
    jobs, m, info = plan(cfg, folder, where)
    seed = seed_from(generator, where) if m.random else None
    meta_src = info.get("base") or (None,)
    meta_ck = meta_src[0] if meta_src[0] is not None else (info["first_model"].ck if "first_model" in info else None)
    if meta_ck is None:
        meta_ck = next(iter(j.models[0][0] for j in jobs if j.models), None)
    tok = info.get("tokenizer")
    tok_ck = tok[0] if tok else meta_ck

    def extra(tmp: Path) -> None:
        folder_of = lambda ck: ck.path if ck.path.is_dir() else ck.path.parent  # noqa: E731
        if meta_ck is not None:
            for fname in ("config.json", "generation_config.json"):
                f = folder_of(meta_ck) / fname
                if f.is_file():
                    if fname == "config.json" and "layers" in info:
                        data = json.loads(f.read_text())
                        if "num_hidden_layers" in data:
                            data["num_hidden_layers"] = info["layers"]
                        (tmp / fname).write_text(json.dumps(data, indent=2) + "\n")
                    else:
                        shutil.copyfile(f, tmp / fname)
        if copy_tokenizer and tok_ck is not None:
            for fname in TOKENIZER_FILES:
                f = folder_of(tok_ck) / fname
                if f.is_file():
                    shutil.copyfile(f, tmp / fname)
        if text is not None:
            (tmp / "mergekit_config.yml").write_text(text)

    return run_jobs(jobs, out_dir, shard_size=shard_size, seed=seed, compat=compat_flag(compat, where),
                    device=device, overwrite=overwrite, extra=extra, where=where)
