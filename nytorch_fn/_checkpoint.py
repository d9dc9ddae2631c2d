"""Checkpoints: particles, populations and optimiser/algorithm states on disk.

Format: **one file** in the safetensors format (a little-endian 8-byte header
length, a JSON header, then the raw tensor bytes). Nothing in it is code:
loading never unpickles. The header's ``__metadata__`` holds two strings:

- ``"nytorch_fn"``: the manifest, a small JSON text (readable with
  ``read_manifest`` or any safetensors tool) describing the saved tree
  (particles, tensors, numbers, strings, None, tuples, lists, dicts,
  NamedTuples and attrs records), each species' structure (parameter names,
  shapes, dtypes, configs with their user tags, buffer names, version) and
  the format and library versions;
- ``"nytorch_fn.sha256"``: a SHA-256 over the manifest text and every tensor
  byte, so a truncated or corrupted file is refused instead of giving a
  silently wrong model.

A single file (not a directory) is what makes the write atomic: ``save``
writes a temporary file in the same directory, flushes and fsyncs it, then
renames it over ``path`` (``os.replace``) and fsyncs the directory. A process
killed during ``save`` leaves the previous checkpoint at ``path`` intact (and
at worst a stray ``.<name>.*.tmp`` file beside it).

The file does not hold the module's code or skeleton: ``load`` takes the
structure from the caller (``like=``) and checks every name, shape, dtype
and config against it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import numbers
import os
import sys
import tempfile
from typing import Any, Callable

import attrs
import torch
from torch import nn

from ._config import ParamConfig
from ._errors import describe
from ._particle import Particle, build
from ._species import Species

FORMAT = "nytorch_fn.checkpoint"
FORMAT_VERSION = 1
_MANIFEST_KEY = "nytorch_fn"
_DIGEST_KEY = "nytorch_fn.sha256"
_CHUNK = 1 << 20
_MAX_HEADER = 100 << 20

#: Test hook: called with the number of bytes written so far after each chunk
#: of a ``save`` (the kill test pauses the writer here). Never set in library code.
_after_chunk: Callable[[int], None] | None = None


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: not a checkpoint, truncated, corrupted, or of a newer format."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not match the structure given by ``like`` (the message names the first difference)."""


# safetensors dtype codes (the format's own names).
_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _CODES[getattr(torch, _name)] = _code
_DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in _CODES}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """User tags as JSON; values JSON cannot hold are kept as their ``repr`` (never evaluated)."""
    return json.loads(json.dumps(value, default=repr, sort_keys=True))


def _config_record(config: ParamConfig) -> dict:
    return {
        "operational": config.operational,
        "clone": config.clone,
        "tags": _jsonable({str(k): v for k, v in config.tags.items()}),
    }


def _species_record(sp: Species) -> dict:
    return {
        "module": type(sp.skeleton).__name__,
        "version": sp.version,
        "names": list(sp.names),
        "shapes": [list(sp.shapes[n]) for n in sp.names],
        "dtypes": [_dtype_name(sp.dtypes[n]) for n in sp.names],
        "config": [_config_record(sp.config[n]) for n in sp.names],
        "buffers": [
            [n, None if sp.buffers[n] is None else list(sp.buffers[n].shape),
             None if sp.buffers[n] is None else _dtype_name(sp.buffers[n].dtype)]
            for n in sp.buffer_names
        ],
    }


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


class _Encoder:
    """Walks a tree once: the manifest node for it, and the tensors to write (CPU, contiguous)."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, torch.Tensor]] = []
        self.species: list[dict] = []
        self._species_index: dict[int, int] = {}
        self._species_alive: list[Species] = []

    def tensor(self, t: torch.Tensor, path: str) -> str:
        if t.layout != torch.strided:
            raise TypeError(f"save: {path} is a {t.layout} tensor; only dense (strided) tensors can be saved")
        if t.device.type == "meta":
            raise ValueError(f"save: {path} is on the meta device and holds no values to save")
        if t.dtype not in _CODES:
            raise TypeError(f"save: {path} has dtype {t.dtype}, which the safetensors format cannot hold")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.resolve_conj().resolve_neg().contiguous()
        key = str(len(self.tensors))
        self.tensors.append((key, t))
        return key

    def encode(self, obj: Any, path: str) -> dict:
        if isinstance(obj, Particle):
            sp = obj.species
            index = self._species_index.get(id(sp))
            if index is None:
                index = self._species_index[id(sp)] = len(self.species)
                self.species.append(_species_record(sp))
                self._species_alive.append(sp)  # keeps id() unique while we encode
            keys = [self.tensor(t, f"{path}.params[{n!r}]") for n, t in zip(sp.names, obj.tensors)]
            return {"kind": "particle", "species": index, "population": obj.population_size, "tensors": keys}
        if isinstance(obj, torch.Tensor):
            return {"kind": "tensor", "key": self.tensor(obj, path)}
        if obj is None:
            return {"kind": "none"}
        if isinstance(obj, bool):
            return {"kind": "bool", "value": obj}
        if isinstance(obj, numbers.Integral):
            return {"kind": "int", "value": int(obj)}
        if isinstance(obj, float):
            return {"kind": "float", "value": repr(obj)}
        if isinstance(obj, str):
            return {"kind": "str", "value": obj}
        if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):
            fields = list(type(obj)._fields)
            items = [self.encode(v, f"{path}.{f}") for f, v in zip(fields, obj)]
            return {"kind": "namedtuple", "type": _type_name(obj), "fields": fields, "items": items}
        if attrs.has(type(obj)):
            fields = [a.name for a in attrs.fields(type(obj))]
            items = [self.encode(getattr(obj, f), f"{path}.{f}") for f in fields]
            return {"kind": "record", "type": _type_name(obj), "fields": fields, "items": items}
        if type(obj) in (tuple, list):
            items = [self.encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]
            return {"kind": type(obj).__name__, "items": items}
        if type(obj) is dict:
            for k in obj:
                if not isinstance(k, str):
                    raise TypeError(f"save: {path} has key {k!r}; only str keys can be saved")
            items = [self.encode(v, f"{path}[{k!r}]") for k, v in obj.items()]
            return {"kind": "dict", "keys": list(obj), "items": items}
        raise TypeError(
            f"save: {path} is {describe(obj)}; expected a Particle, tensor, number, str, None, "
            "tuple, list, dict (str keys), NamedTuple or attrs record"
        )


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy (``t`` must stay alive)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def _header(manifest_text: str, digest: str, tensors: list[tuple[str, torch.Tensor]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {_MANIFEST_KEY: manifest_text, _DIGEST_KEY: digest}}
    offset = 0
    for key, t in tensors:
        n = t.numel() * t.element_size()
        header[key] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def save(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` to ``path`` as one safetensors file, atomically.

    Args:
        path: the checkpoint file (conventionally ``*.safetensors``); its
            directory must exist. An existing file is replaced only once the
            new one is completely on disk.
        tree: a particle, a population, or any nesting of particles,
            tensors, numbers, str, None, tuples, lists, dicts with str keys,
            NamedTuples (e.g. ``optim.AdamState``) and attrs records. Tensors
            are saved as dense CPU copies (views are saved as their values;
            two leaves sharing storage are saved twice); ``requires_grad`` is
            not saved.

    Raises:
        TypeError: a leaf of another type, a sparse tensor or an unsupported dtype.
        ValueError: a tensor on the meta device (it has no values).
        OSError: the file cannot be written (the old one is then untouched).

    Example:
        >>> save("run/step100.safetensors", {"params": pop, "opt": opt_state, "step": 100})
    """
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        raise CheckpointError("save: checkpoints are written on little-endian machines only")
    encoder = _Encoder()
    root = encoder.encode(tree, "tree")
    from . import __version__

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nytorch_fn_version": __version__,
        "species": encoder.species,
        "tree": root,
    }
    manifest_text = json.dumps(manifest, separators=(",", ":"))
    digest = hashlib.sha256(manifest_text.encode())
    for _, t in encoder.tensors:
        digest.update(_tensor_bytes(t))
    header = _header(manifest_text, digest.hexdigest(), encoder.tensors)
    _atomic_write(os.fspath(path), header, encoder.tensors)


def _atomic_write(path: str, header: bytes, tensors: list[tuple[str, torch.Tensor]]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            written = 8 + len(header)
            for _, t in tensors:
                data = _tensor_bytes(t)
                for start in range(0, len(data), _CHUNK):
                    written += f.write(data[start:start + _CHUNK])
                    if _after_chunk is not None:
                        _after_chunk(written)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _read(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The verified manifest and the tensors (CPU) of a checkpoint file."""
    where = os.fspath(path)
    with open(where, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise CheckpointError(f"{where}: not a checkpoint (file of {len(data)} bytes is truncated or empty)")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CheckpointError(
            f"{where}: not a checkpoint, or truncated: the header claims {n} bytes, the file has {len(data) - 8}"
        )
    try:
        header = json.loads(data[8:8 + n])
        meta = header["__metadata__"]
        text, digest = meta[_MANIFEST_KEY], meta[_DIGEST_KEY]
        manifest = json.loads(text)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{where}: not a nytorch_fn checkpoint or a corrupted header ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a nytorch_fn checkpoint (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format version {version!r} is newer than this library reads ({FORMAT_VERSION})"
        )
    check = hashlib.sha256(text.encode())
    check.update(memoryview(data)[8 + n:])
    if check.hexdigest() != digest:
        raise CheckpointError(f"{where}: corrupted or truncated checkpoint (SHA-256 of its contents does not match)")
    import safetensors.torch

    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # the digest passed, so this is a malformed header
        raise CheckpointError(f"{where}: malformed safetensors data ({error})") from None
    return manifest, tensors


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a checkpoint (JSON: format, versions, species structures and configs, tree).

    The file is verified (checksum) first; nothing is unpickled or evaluated.

    Raises:
        CheckpointError: not a checkpoint, truncated or corrupted.
    """
    return _read(path)[0]


def load(path: str | os.PathLike, *, like: Any, configs: str = "check", device: Any = None) -> Any:
    """Read a checkpoint written by ``save``, checked against the structure ``like``.

    ``like`` has the shape of the saved tree: where a particle was saved it
    holds a ``Species``, an ``nn.Module`` (its species is captured) or a
    particle (its species; a population template also fixes the population
    size); where a tensor was saved, a tensor of the same shape and dtype;
    where a number, a number of the same kind; where None, None (or a
    particle of a species matched earlier in the tree, e.g. an optional
    ``noise`` field that was None in the template state); NamedTuples and attrs records
    of the same class and fields (the class is taken from ``like``, never
    from the file); tuples, lists and dicts with the same lengths and keys.
    Loaded particles belong to ``like``'s species objects, so they combine
    with the caller's other particles.

    Args:
        path: a file written by ``save``.
        like: the template, as above.
        configs: ``"check"`` (default): each parameter's config (operational,
            clone, tags) must equal the one recorded in the file;
            ``"ignore"``: the caller's species' configs are taken as they are.
        device: where to put the loaded tensors; None: the device of the
            corresponding template tensor or particle (CPU for a species,
            module, or a template on the meta device).

    Returns:
        A new tree like ``like`` with the file's values (fresh tensors,
        ``requires_grad=False``).

    Raises:
        CheckpointError: not a checkpoint, truncated, corrupted or of a newer format.
        CheckpointMismatchError: the file does not match ``like``; the
            message names the first difference (path, name, shape, dtype).
        TypeError: ``like`` holds a leaf of an unsupported type.

    Example:
        >>> state = load("run/step100.safetensors", like={"params": pop, "opt": opt.init(pop), "step": 0})
    """
    if configs not in ("check", "ignore"):
        raise ValueError(f"load: configs expects 'check' or 'ignore', got {configs!r}")
    manifest, tensors = _read(path)
    decoder = _Decoder(os.fspath(path), manifest, tensors, configs == "check", device)
    return decoder.decode(like, manifest["tree"], "tree")


class _Decoder:
    def __init__(self, where: str, manifest: dict, tensors: dict[str, torch.Tensor], check_configs: bool, device: Any) -> None:
        self.where = where
        self.species = manifest.get("species")
        if not isinstance(self.species, list):
            raise CheckpointError(f"{where}: manifest has no species table")
        self.tensors = tensors
        self.check_configs = check_configs
        self.device = None if device is None else torch.device(device)
        self._captured: dict[int, Species] = {}
        self._verified: set[tuple[int, int]] = set()
        self._matched: dict[int, Species] = {}

    def fail(self, path: str, message: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(f"{self.where}: checkpoint does not match `like` at {path}: {message}")

    def corrupt(self, path: str, message: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: malformed manifest at {path}: {message}")

    def _node(self, node: Any, path: str) -> str:
        if not isinstance(node, dict) or not isinstance(node.get("kind"), str):
            raise self.corrupt(path, "expected a node with a 'kind'")
        return node["kind"]

    def _target(self, template_device: torch.device | None) -> torch.device:
        if self.device is not None:
            return self.device
        if template_device is None or template_device.type == "meta":
            return torch.device("cpu")
        return template_device

    def _tensor(self, key: Any, path: str) -> torch.Tensor:
        t = self.tensors.get(key) if isinstance(key, str) else None
        if t is None:
            raise self.corrupt(path, f"tensor {key!r} is not in the file")
        return t

    def decode(self, like: Any, node: Any, path: str) -> Any:
        kind = self._node(node, path)
        if isinstance(like, (Particle, Species, nn.Module)):
            return self._particle(like, node, kind, path)
        if isinstance(like, torch.Tensor):
            if kind != "tensor":
                raise self.fail(path, f"the file has a {kind}, `like` a tensor")
            t = self._tensor(node.get("key"), path)
            if t.shape != like.shape:
                raise self.fail(path, f"the file has shape {tuple(t.shape)}, `like` {tuple(like.shape)}")
            if t.dtype != like.dtype:
                raise self.fail(path, f"the file has dtype {t.dtype}, `like` {like.dtype}")
            return t.to(self._target(like.device), copy=True)
        if like is None and kind == "particle" and node.get("species") in self._matched:
            # an optional field (None in the template, a particle in the file) of a species already matched
            return self._particle(self._matched[node["species"]], node, kind, path)
        if like is None:
            if kind != "none":
                raise self.fail(path, f"the file has a {kind}, `like` None")
            return None
        for cls, name in ((bool, "bool"), (numbers.Integral, "int"), (float, "float"), (str, "str")):
            if isinstance(like, cls):
                if kind != name:
                    raise self.fail(path, f"the file has a {kind}, `like` a {name}")
                value = node.get("value")
                try:
                    if name == "float":
                        return float(value)
                    if not isinstance(value, {"bool": bool, "int": int, "str": str}[name]) or (name == "int" and isinstance(value, bool)):
                        raise TypeError
                except (TypeError, ValueError):
                    raise self.corrupt(path, f"bad {name} value {value!r}") from None
                return value
        if isinstance(like, tuple) and hasattr(type(like), "_fields"):
            items = self._fields(like, node, kind, "namedtuple", list(type(like)._fields), path)
            return type(like)(*[self.decode(v, n, f"{path}.{f}") for (f, v), n in zip(zip(type(like)._fields, like), items)])
        if attrs.has(type(like)):
            fields = [a.name for a in attrs.fields(type(like))]
            items = self._fields(like, node, kind, "record", fields, path)
            values = {f: self.decode(getattr(like, f), n, f"{path}.{f}") for f, n in zip(fields, items)}
            inits = {a.alias: values[a.name]
                     for a in attrs.fields(type(like)) if a.init}
            out = type(like)(**inits)
            for a in attrs.fields(type(like)):
                if not a.init:
                    object.__setattr__(out, a.name, values[a.name])
            return out
        if type(like) in (tuple, list):
            name = type(like).__name__
            if kind != name:
                raise self.fail(path, f"the file has a {kind}, `like` a {name}")
            items = node.get("items")
            if not isinstance(items, list):
                raise self.corrupt(path, "items missing")
            if len(items) != len(like):
                raise self.fail(path, f"the file has {len(items)} items, `like` {len(like)}")
            return type(like)(self.decode(v, n, f"{path}[{i}]") for i, (v, n) in enumerate(zip(like, items)))
        if type(like) is dict:
            if kind != "dict":
                raise self.fail(path, f"the file has a {kind}, `like` a dict")
            keys, items = node.get("keys"), node.get("items")
            if not isinstance(keys, list) or not isinstance(items, list) or len(keys) != len(items):
                raise self.corrupt(path, "keys/items missing")
            stored = dict(zip(keys, items))
            for k in like:
                if k not in stored:
                    raise self.fail(path, f"key {k!r} of `like` is not in the file")
            for k in keys:
                if k not in like:
                    raise self.fail(path, f"the file has key {k!r}, which `like` lacks")
            return {k: self.decode(v, stored[k], f"{path}[{k!r}]") for k, v in like.items()}
        raise TypeError(
            f"load: `like` at {path} is {describe(like)}; expected a Species, nn.Module, Particle, tensor, "
            "number, str, None, tuple, list, dict, NamedTuple or attrs record"
        )

    def _fields(self, like: Any, node: dict, kind: str, expected: str, fields: list[str], path: str) -> list:
        if kind != expected:
            raise self.fail(path, f"the file has a {kind}, `like` a {expected} {type(like).__qualname__}")
        if node.get("type") != _type_name(like):
            raise self.fail(path, f"the file has a {node.get('type')}, `like` a {_type_name(like)}")
        if node.get("fields") != fields:
            raise self.fail(path, f"the file has fields {node.get('fields')}, `like` {fields}")
        items = node.get("items")
        if not isinstance(items, list) or len(items) != len(fields):
            raise self.corrupt(path, "items missing")
        return items

    def _particle(self, like: Any, node: dict, kind: str, path: str) -> Particle:
        if kind != "particle":
            raise self.fail(path, f"the file has a {kind}, `like` a particle")
        if isinstance(like, nn.Module):
            sp = self._captured.get(id(like))
            if sp is None:
                from ._module import particle

                sp = self._captured[id(like)] = particle(like, copy=False).species
            template_device = None
        elif isinstance(like, Species):
            sp, template_device = like, None
        else:
            sp = like.species
            template_device = like.tensors[0].device if like.tensors else None
        index = node.get("species")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.species):
            raise self.corrupt(path, f"species index {index!r}")
        if (index, id(sp)) not in self._verified:
            self._check_species(self.species[index], sp, path)
            self._verified.add((index, id(sp)))
            self._matched.setdefault(index, sp)
        population = node.get("population")
        if population is not None and (not isinstance(population, int) or isinstance(population, bool) or population < 0):
            raise self.corrupt(path, f"population {population!r}")
        if isinstance(like, Particle) and like.population_size != population:
            def size(n: int | None) -> str:
                return "a single particle" if n is None else f"a population of {n}"
            raise self.fail(path, f"the file has {size(population)}, `like` {size(like.population_size)}")
        keys = node.get("tensors")
        if not isinstance(keys, list) or len(keys) != len(sp.names):
            raise self.corrupt(path, "tensor list does not match the species")
        target = self._target(template_device)
        out = []
        for name, key in zip(sp.names, keys):
            t = self._tensor(key, f"{path}.params[{name!r}]")
            shape = sp.shapes[name] if population is None else torch.Size((population, *sp.shapes[name]))
            if t.shape != shape or t.dtype != sp.dtypes[name]:
                raise self.corrupt(path, f"tensor of {name!r} is {tuple(t.shape)} {t.dtype}, the manifest says {tuple(shape)} {sp.dtypes[name]}")
            out.append(t.to(target, copy=True))
        return build(sp, out)

    def _check_species(self, rec: Any, sp: Species, path: str) -> None:
        if not isinstance(rec, dict):
            raise self.corrupt(path, "species record")
        names = rec.get("names")
        if not isinstance(names, list):
            raise self.corrupt(path, "species names")
        for i, (mine, theirs) in enumerate(zip(names, sp.names)):
            if mine != theirs:
                raise self.fail(path, f"parameter {i} is {mine!r} in the file, {theirs!r} in the species")
        if len(names) != len(sp.names):
            if len(names) > len(sp.names):
                raise self.fail(path, f"the file has parameter {names[len(sp.names)]!r}, which the species lacks")
            raise self.fail(path, f"the species has parameter {sp.names[len(names)]!r}, which the file lacks")
        shapes, dtypes, configs = rec.get("shapes"), rec.get("dtypes"), rec.get("config")
        if not all(isinstance(x, list) and len(x) == len(names) for x in (shapes, dtypes, configs)):
            raise self.corrupt(path, "species shapes/dtypes/config")
        for name, shape, dtype, config in zip(names, shapes, dtypes, configs):
            if shape != list(sp.shapes[name]):
                raise self.fail(path, f"parameter {name!r} has shape {tuple(shape)} in the file, {tuple(sp.shapes[name])} in the species")
            if dtype != _dtype_name(sp.dtypes[name]):
                raise self.fail(path, f"parameter {name!r} has dtype {dtype} in the file, {_dtype_name(sp.dtypes[name])} in the species")
            if self.check_configs and config != _config_record(sp.config[name]):
                raise self.fail(
                    path,
                    f"parameter {name!r} has config {config} in the file, {_config_record(sp.config[name])} in the "
                    "species (bring the species' configs in line with with_config, or pass configs='ignore')",
                )
        buffers = rec.get("buffers")
        if not isinstance(buffers, list):
            raise self.corrupt(path, "species buffers")
        mine = [[n, None if sp.buffers[n] is None else list(sp.buffers[n].shape),
                 None if sp.buffers[n] is None else _dtype_name(sp.buffers[n].dtype)] for n in sp.buffer_names]
        for theirs, ours in zip(buffers, mine):
            if theirs != ours:
                raise self.fail(path, f"buffer {theirs} in the file, {ours} in the species (name, shape, dtype)")
        if len(buffers) != len(mine):
            raise self.fail(path, f"the file has {len(buffers)} buffers, the species {len(mine)}")
