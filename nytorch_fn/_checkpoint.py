"""Checkpoints: particles, populations and optimiser/algorithm states on disk.

Format (version 2): **one file** in the safetensors format (a little-endian
8-byte header length, a JSON header, then the raw tensor bytes), readable by
``safetensors.safe_open`` and ``safetensors.torch.load_file``. Nothing in it
is code: loading never unpickles. Tensors are named by their place in the
saved tree (``"pop/0.weight"``, ``"opt/mu/0.weight"``; a particle saved alone
uses its parameter names). The header's ``__metadata__`` holds two strings:

- ``"nytorch_fn"``: the manifest, a small JSON text (``read_manifest``)
  describing the saved tree (particles, tensors, numbers, strings, None,
  tuples, lists, dicts, NamedTuples and attrs records), each species'
  structure (parameter names, shapes, dtypes, configs with their user tags,
  buffer names, version), the format and library versions, and a table of
  every tensor: name, dtype, shape, byte offsets and its SHA-256 digests;
- ``"nytorch_fn.manifest_sha256"``: the SHA-256 of the manifest text.

Integrity, byte by byte. The manifest digest covers the manifest; the rest
of the header must equal, byte for byte, the header this module writes for
that manifest; the file's size must be the header's plus the tensors'; and
each tensor is checked against its own digests as it is read. A tensor of a
population (leading dimension N) has one digest per block of members (the
fewest members whose bytes reach 64 KiB, more on very large files so the
header stays small), so loading one member of 64 reads and verifies about
1/64 of the file; any other tensor has one digest. A full ``load`` therefore
refuses every truncation and every flipped byte, and a partial load refuses
a corrupted tensor it reads (the message names it) without reading the rest.

Writing is atomic: ``save`` writes a temporary file in the same directory,
fsyncs it, renames it over ``path`` (``os.replace``) and fsyncs the
directory, so a process killed during ``save`` leaves the previous
checkpoint intact (and at worst a stray ``.<name>.*.tmp`` file). A new file
gets the mode ``open()`` would give it (``0o666`` less the umask); replacing
a file keeps that file's permission bits, as ``open(path, "w")`` does.

Why this module writes the format itself instead of calling
``safetensors.torch.save_file``: the header holds the tensors' digests, so
the library would need a second pass over every tensor to hash it first (a
second device-to-host copy for GPU tensors, or every host copy kept alive at
once), and it refuses tied (shared-storage) and non-contiguous tensors,
which a ``state_dict`` export must write. The writer here streams: each
tensor is copied to the host (if it is not there), hashed and written in
1 MiB chunks in one pass, then dropped, and the header (fixed-length
digests) is written last, in place. The tests open every file it writes
with ``safetensors.safe_open`` and ``load_file``.

Why tensor bytes are read with ``pread`` into the tensor that is returned,
after ``safe_open`` has validated the file: with safetensors 0.8,
``safe_open``'s mmap backend gives tensors backed by the file mapping, whose
pages stay counted in the process's RSS beside the copy a load must return
(2x the tensor bytes) and raise SIGBUS if the file is truncated under them;
its ``pread`` backend reads the whole tensor even for ``get_slice(...)[i]``,
so one member would cost the whole population. Reading a member block with
one ``pread`` into the result costs exactly its bytes (measured in
``bench/bench_memory.py``).

The file does not hold the module's code or skeleton: ``load`` takes the
structure from the caller (``like=``) and checks every name, shape, dtype
and config against it. ``save_state_dict`` / ``load_state_dict`` write and
read plain ``state_dict`` files (the ``model.safetensors`` of a Hugging Face
user) for one particle.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import numbers
import os
import secrets
import stat
import sys
from typing import Any, Callable, Iterable, Sequence

import attrs
import torch
from torch import nn

from ._config import ParamConfig
from ._errors import describe
from ._particle import Particle
from ._species import Species

FORMAT = "nytorch_fn.checkpoint"
FORMAT_VERSION = 2
_MANIFEST_KEY = "nytorch_fn"
_MANIFEST_DIGEST_KEY = "nytorch_fn.manifest_sha256"
_V1_DIGEST_KEY = "nytorch_fn.sha256"  # format 1: SHA-256 of the manifest and every tensor byte
_DIGEST = "sha256"
_DIGEST_HEX = 64
_CHUNK = 1 << 20
_BLOCK = 1 << 16  # smallest member block with its own digest
_MAX_DIGESTS = 1 << 16  # past this many blocks, blocks grow (the header stays a few MiB)
_MAX_HEADER = 100_000_000  # the safetensors format's own limit

#: Test hook: called with the number of bytes written so far after each chunk
#: of a ``save`` (the kill test pauses the writer here). Never set in library code.
_after_chunk: Callable[[int], None] | None = None


class CheckpointError(ValueError):
    """A checkpoint file cannot be read: not a checkpoint, truncated, corrupted, or of a newer format.

    A ``ValueError``. The message names the file and, for a corrupted
    tensor, the tensor whose digest failed.
    """


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not match the structure given by ``like`` (the message names the first difference).

    Raised before any tensor is read: a name, shape, dtype, config or kind
    of node that differs between the file and the template.
    """


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
_FROM_CODE: dict[str, torch.dtype] = {c: d for d, c in _CODES.items()}
_DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in _CODES}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------
# raw bytes of tensors
# ---------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy (``t`` must stay alive)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(bytearray(0))
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")


def _sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _host(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a dense contiguous CPU tensor (itself when it already is one)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    return t.resolve_conj().resolve_neg().contiguous()


def _rows_per_digest(population: int | None, shape: Sequence[int], dtype: torch.dtype, block: int) -> int | None:
    """Members per digest for a population tensor (None: one digest for the whole tensor)."""
    if population is None or population == 0:
        return None
    row = _nbytes(shape[1:], dtype)
    if row == 0:
        return None
    return max(1, -(-block // row))


def _digest_count(entry: dict) -> int:
    k = entry["rows_per_digest"]
    return 1 if k is None else -(-entry["shape"][0] // k)


# ---------------------------------------------------------------------------
# the header
# ---------------------------------------------------------------------------


def _render_header(metadata: dict[str, str], entries: Iterable[dict]) -> bytes:
    """The safetensors header for these tensors, as this module writes it (padded to 8 bytes)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    for e in entries:
        header[e["name"]] = {"dtype": _CODES[_DTYPE_NAMES[e["dtype"]]], "shape": e["shape"], "data_offsets": e["offsets"]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def _layout(items: list[tuple[str, torch.Tensor, int | None]], block: int | None) -> tuple[list[dict], list[int]]:
    """File order (largest element size first, so every tensor is aligned) and offsets."""
    order = sorted(range(len(items)), key=lambda i: -items[i][1].element_size())
    entries, offset = [], 0
    for i in order:
        name, t, population = items[i]
        n = t.numel() * t.element_size()
        e: dict[str, Any] = {"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape), "offsets": [offset, offset + n]}
        if block is not None:
            e["population"] = population
            e["rows_per_digest"] = _rows_per_digest(population, t.shape, t.dtype, block)
            e["digests"] = ["0" * _DIGEST_HEX] * _digest_count(e)
        entries.append((i, e))
        offset += n
    return [e for _, e in entries], [i for i, _ in entries]


def _block_size(total_population_bytes: int) -> int:
    block = _BLOCK
    while total_population_bytes // block > _MAX_DIGESTS:
        block *= 2
    return block


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


def _buffer_record(sp: Species, name: str) -> list:
    b = sp.buffers[name]
    return [name, None if b is None else list(b.shape), None if b is None else _dtype_name(b.dtype)]


def _species_record(sp: Species) -> dict:
    return {
        "module": type(sp.skeleton).__name__,
        "version": sp.version,
        "names": list(sp.names),
        "shapes": [list(sp.shapes[n]) for n in sp.names],
        "dtypes": [_dtype_name(sp.dtypes[n]) for n in sp.names],
        "config": [_config_record(sp.config[n]) for n in sp.names],
        "buffers": [_buffer_record(sp, n) for n in sp.buffer_names],
    }


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _check_savable(t: torch.Tensor, path: str, who: str = "save") -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{who}: {path} is a {t.layout} tensor; only dense (strided) tensors can be saved")
    if t.device.type == "meta":
        raise ValueError(f"{who}: {path} is on the meta device and holds no values to save")
    if t.dtype not in _CODES:
        raise TypeError(f"{who}: {path} has dtype {t.dtype}, which the safetensors format cannot hold")


class _Encoder:
    """Walks a tree once: the manifest node for it, and the tensors to write (not yet copied)."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, torch.Tensor, int | None]] = []
        self.species: list[dict] = []
        self._names: set[str] = set()
        self._species_index: dict[int, int] = {}
        self._species_alive: list[Species] = []

    def _name(self, segments: tuple[str, ...]) -> str:
        name = "/".join(segments) or "tensor"
        base, i = name, 1
        while name in self._names or name == "__metadata__":
            i += 1
            name = f"{base}#{i}"
        self._names.add(name)
        return name

    def tensor(self, t: torch.Tensor, path: str, segments: tuple[str, ...], population: int | None = None) -> str:
        _check_savable(t, path)
        name = self._name(segments)
        self.tensors.append((name, t.detach(), population))
        return name

    def encode(self, obj: Any, path: str, segments: tuple[str, ...]) -> dict:
        if isinstance(obj, Particle):
            sp = obj.species
            index = self._species_index.get(id(sp))
            if index is None:
                index = self._species_index[id(sp)] = len(self.species)
                self.species.append(_species_record(sp))
                self._species_alive.append(sp)  # keeps id() unique while we encode
            n = obj.population_size
            keys = [self.tensor(t, f"{path}.params[{name!r}]", (*segments, name), n) for name, t in zip(sp.names, obj.tensors)]
            return {"kind": "particle", "species": index, "population": n, "tensors": keys}
        if isinstance(obj, torch.Tensor):
            return {"kind": "tensor", "key": self.tensor(obj, path, segments)}
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
            fields = list(type(obj)._fields)  # type: ignore[attr-defined]
            items = [self.encode(v, f"{path}.{f}", (*segments, f)) for f, v in zip(fields, obj)]
            return {"kind": "namedtuple", "type": _type_name(obj), "fields": fields, "items": items}
        if attrs.has(type(obj)):
            fields = [a.name for a in attrs.fields(type(obj))]
            items = [self.encode(getattr(obj, f), f"{path}.{f}", (*segments, f)) for f in fields]
            return {"kind": "record", "type": _type_name(obj), "fields": fields, "items": items}
        if type(obj) in (tuple, list):
            items = [self.encode(v, f"{path}[{i}]", (*segments, str(i))) for i, v in enumerate(obj)]
            return {"kind": type(obj).__name__, "items": items}
        if type(obj) is dict:
            for k in obj:
                if not isinstance(k, str):
                    raise TypeError(f"save: {path} has key {k!r}; only str keys can be saved")
            items = [self.encode(v, f"{path}[{k!r}]", (*segments, k)) for k, v in obj.items()]
            return {"kind": "dict", "keys": list(obj), "items": items}
        raise TypeError(
            f"save: {path} is {describe(obj)}; expected a Particle, tensor, number, str, None, "
            "tuple, list, dict (str keys), NamedTuple or attrs record"
        )


def save(path: str | os.PathLike, tree: Any) -> None:
    """Write ``tree`` to ``path`` as one safetensors file, atomically, with a digest per tensor.

    Args:
        path: the checkpoint file (conventionally ``*.safetensors``); its
            directory must exist. An existing file is replaced only once the
            new one is completely on disk (and keeps its permission bits; a
            new file gets ``0o666`` less the umask).
        tree: a particle, a population, or any nesting of particles,
            tensors, numbers, str, None, tuples, lists, dicts with str keys,
            NamedTuples (e.g. ``optim.AdamState``) and attrs records. Tensors
            are saved as dense CPU copies made one at a time (views are
            saved as their values; two leaves sharing storage are saved
            twice); ``requires_grad`` is not saved.

    Raises:
        TypeError: a leaf of another type, a sparse tensor or an unsupported dtype.
        ValueError: a tensor on the meta device (it has no values).
        OSError: the file cannot be written (the old one is then untouched).

    Examples:
        >>> import os, tempfile
        >>> from nytorch_fn import checkpoint, optim
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "step100.safetensors")
        >>> pop = nf.init_population(nn.Linear(3, 2), 8, generator=torch.Generator().manual_seed(0))
        >>> checkpoint.save(path, {"params": pop, "opt": optim.adam(1e-3).init(pop), "step": 100})
        >>> sorted(t["name"] for t in checkpoint.read_manifest(path)["tensors"])[:3]
        ['opt/count', 'opt/mu/bias', 'opt/mu/weight']
        >>> tmp.cleanup()
    """
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        raise CheckpointError("save: checkpoints are written on little-endian machines only")
    encoder = _Encoder()
    root = encoder.encode(tree, "tree", ())
    from . import __version__

    population_bytes = sum(t.numel() * t.element_size() for _, t, n in encoder.tensors if n is not None)
    block = _block_size(population_bytes)
    entries, order = _layout(encoder.tensors, block)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nytorch_fn_version": __version__,
        "digest": _DIGEST,
        "block_bytes": block,
        "species": encoder.species,
        "tree": root,
        "tensors": entries,
    }

    def header() -> bytes:
        text = json.dumps(manifest, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()
        return _render_header({_MANIFEST_KEY: text, _MANIFEST_DIGEST_KEY: digest}, entries)

    _atomic_write(os.fspath(path), header, [(encoder.tensors[i][1], e) for i, e in zip(order, entries)], digests=True)


def _atomic_write(
    path: str, header: Callable[[], bytes], tensors: list[tuple[torch.Tensor, dict]], *, digests: bool
) -> None:
    """Stream ``tensors`` (in file order) to a temporary file, then rename it over ``path``.

    The header is rendered twice: before the data with placeholder digests
    (to know its length) and after it, with the digests computed while
    writing, in place (digests have a fixed length, so the length is the same).
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"save: cannot create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            first = header()
            f.write(len(first).to_bytes(8, "little"))
            f.write(first)
            written = 8 + len(first)
            for t, entry in tensors:
                host = _host(t)
                data = _tensor_bytes(host)
                k = entry.get("rows_per_digest")
                step = len(data) if k is None else k * (len(data) // max(host.shape[0], 1))
                blocks = [(0, len(data))] if k is None else [(s, min(s + step, len(data))) for s in range(0, len(data), step)]
                found = []
                for start, stop in blocks:
                    h = hashlib.sha256() if digests else None
                    for a in range(start, stop, _CHUNK):
                        chunk = data[a:min(a + _CHUNK, stop)]
                        if h is not None:
                            h.update(chunk)
                        written += f.write(chunk)
                        if _after_chunk is not None:
                            _after_chunk(written)
                    if h is not None:
                        found.append(h.hexdigest())
                if digests:
                    entry["digests"] = found
                del host, data
            final = header()
            if len(final) != len(first):  # pragma: no cover - digests have a fixed length
                raise AssertionError("save: the header changed length")
            f.seek(8)
            f.write(final)
            f.flush()
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
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
# reading: the header, then tensor bytes with pread
# ---------------------------------------------------------------------------


def _readinto(f: Any, view: memoryview, offset: int) -> None:
    f.seek(offset)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise EOFError
        done += n


class _File:
    """An open checkpoint or plain safetensors file: its parsed header and a reader of tensor bytes.

    ``kind="checkpoint"`` checks the manifest, the exact header and the size
    (format 2) or the whole-file digest (format 1); ``kind="plain"`` checks
    the safetensors layout only.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str) -> None:
        self.where = os.fspath(path)
        if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
            raise CheckpointError(f"{self.where}: safetensors files are read on little-endian machines only")
        self.f = open(self.where, "rb", buffering=0)
        try:
            self._parse(kind)
        except BaseException:
            self.f.close()
            raise

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "_File":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _parse(self, kind: str) -> None:
        where, f = self.where, self.f
        what = "a checkpoint" if kind == "checkpoint" else "a safetensors file"
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        if len(first) < 8:
            raise CheckpointError(f"{where}: not {what} (file of {size} bytes is truncated or empty)")
        n = int.from_bytes(first, "little")
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{where}: not {what}, or truncated: the header claims {n} bytes, the file has {size - 8}"
            )
        raw = f.read(n)
        self.data_start = 8 + n
        self.v1 = False
        try:
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise TypeError("the header is not a JSON object")
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{where}: not {what} or a corrupted header ({error})") from None
        meta = header.pop("__metadata__", None)
        self.metadata = meta if isinstance(meta, dict) else {}
        self.manifest: Any = None  # the parsed JSON manifest (None for a plain safetensors file)
        if kind == "plain":
            self.entries = self._plain_entries(header, size - self.data_start)
        else:
            self._checkpoint(raw, header, size)
        self._validate_with_safetensors()

    def _plain_entries(self, header: dict, data_size: int) -> dict[str, dict]:
        entries, end = {}, 0
        for name, info in header.items():
            try:
                code, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
                if not (isinstance(a, int) and isinstance(b, int) and all(isinstance(s, int) and s >= 0 for s in shape)):
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.where}: malformed safetensors entry for {name!r}") from None
            if code not in _FROM_CODE:
                raise CheckpointError(f"{self.where}: tensor {name!r} has safetensors dtype {code!r}, which torch cannot hold here")
            dtype = _FROM_CODE[code]
            if b - a != _nbytes(shape, dtype) or a < 0:
                raise CheckpointError(f"{self.where}: tensor {name!r} has offsets {[a, b]} for shape {shape} {code}")
            entries[name] = {"name": name, "dtype": _dtype_name(dtype), "shape": list(shape), "offsets": [a, b],
                             "population": None, "rows_per_digest": None, "digests": None}
            end = max(end, b)
        if end != data_size:
            raise CheckpointError(f"{self.where}: truncated or padded: the tensors end at byte {end}, the data has {data_size}")
        return entries

    def _checkpoint(self, raw: bytes, header: dict, size: int) -> None:
        where, meta = self.where, self.metadata
        text = meta.get(_MANIFEST_KEY)
        if not isinstance(text, str):
            raise CheckpointError(f"{where}: not a nytorch_fn checkpoint (no manifest in the safetensors metadata)")
        try:
            manifest = json.loads(text)
        except ValueError as error:
            manifest = None
            parse_error = error
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version == 1:
            self._v1(text, manifest, header, size)
            return
        digest = meta.get(_MANIFEST_DIGEST_KEY)
        if not isinstance(digest, str) or hashlib.sha256(text.encode()).hexdigest() != digest:
            raise CheckpointError(f"{where}: corrupted checkpoint (SHA-256 of its manifest does not match)")
        if manifest is None:
            raise CheckpointError(f"{where}: corrupted manifest ({parse_error})")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a nytorch_fn checkpoint (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: checkpoint format version {version!r} is newer than this library reads ({FORMAT_VERSION})"
            )
        entries: Any = manifest.get("tensors")
        try:
            checked = [self._entry(e) for e in entries]
            expected = _render_header({_MANIFEST_KEY: text, _MANIFEST_DIGEST_KEY: digest}, checked)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{where}: malformed tensor table in the manifest") from None
        if expected != raw:
            raise CheckpointError(f"{where}: corrupted checkpoint header (it differs from the one its manifest describes)")
        end = 0
        for e in checked:
            if e["offsets"][0] != end:
                raise CheckpointError(f"{where}: malformed tensor table (tensor {e['name']!r} is not where the previous one ends)")
            end = e["offsets"][1]
        if self.data_start + end != size:
            raise CheckpointError(
                f"{where}: truncated or padded checkpoint: {size} bytes, the header describes {self.data_start + end}"
            )
        self.manifest = manifest
        self.entries = {e["name"]: e for e in checked}
        self.v1 = False

    def _entry(self, e: Any) -> dict:
        name, dtype, shape, offsets = e["name"], e["dtype"], e["shape"], e["offsets"]
        population, k, digests = e["population"], e["rows_per_digest"], e["digests"]
        if not isinstance(name, str) or dtype not in _DTYPE_NAMES:
            raise TypeError
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise TypeError
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise TypeError
        if offsets[1] - offsets[0] != _nbytes(shape, _DTYPE_NAMES[dtype]):
            raise ValueError
        if population is not None and (type(population) is not int or not shape or shape[0] != population):
            raise ValueError
        if k is not None and (type(k) is not int or k < 1 or population is None):
            raise ValueError
        if not (isinstance(digests, list) and len(digests) == (1 if k is None else -(-shape[0] // k))):
            raise ValueError
        if not all(isinstance(d, str) and len(d) == _DIGEST_HEX for d in digests):
            raise ValueError
        return e

    def _v1(self, text: str, manifest: dict, header: dict, size: int) -> None:
        """Format 1 (nytorch_fn 0.1.0): one SHA-256 over the manifest and every tensor byte, checked now."""
        where = self.where
        if manifest.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a nytorch_fn checkpoint (format {manifest.get('format')!r})")
        entries = self._plain_entries(header, size - self.data_start)
        check = hashlib.sha256(text.encode())
        self.f.seek(self.data_start)
        while True:
            chunk = self.f.read(_CHUNK)
            if not chunk:
                break
            check.update(chunk)
        if check.hexdigest() != self.metadata.get(_V1_DIGEST_KEY):
            raise CheckpointError(f"{where}: corrupted or truncated checkpoint (SHA-256 of its contents does not match)")
        self.manifest = manifest
        self.entries = entries
        self.v1 = True

    def _validate_with_safetensors(self) -> None:
        """The reference implementation agrees that this is a safetensors file (it reads the header only)."""
        from safetensors import safe_open

        try:
            with safe_open(self.where, framework="pt") as g:
                g.metadata()
        except Exception as error:
            raise CheckpointError(f"{self.where}: not a valid safetensors file ({error})") from None

    # -- tensor bytes -----------------------------------------------------

    def entry(self, name: Any, path: str = "") -> dict:
        e = self.entries.get(name) if isinstance(name, str) else None
        if e is None:
            raise CheckpointError(f"{self.where}: malformed manifest at {path}: tensor {name!r} is not in the file")
        return e

    def _corrupt(self, e: dict, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.where}: tensor {e['name']!r} is corrupted ({what}: its SHA-256 does not match the manifest)"
        )

    def read(self, e: dict, rows: list[int] | None = None, single: bool = False) -> torch.Tensor:
        """Tensor ``e`` (CPU, fresh), verified; ``rows``: only these members (dim 0) of it."""
        dtype, shape = _DTYPE_NAMES[e["dtype"]], e["shape"]
        start = self.data_start + e["offsets"][0]
        k, digests = e["rows_per_digest"], e["digests"]
        if rows is None:
            out = torch.empty(shape, dtype=dtype)
            view = _tensor_bytes(out)
            self._pread(view, start, e)
            if digests is not None:
                step = len(view) if k is None else k * (len(view) // shape[0])
                for b, d in enumerate(digests):
                    if _sha256(view[b * step:(b + 1) * step]) != d:
                        lo, hi = b * (k or 0), min((b + 1) * (k or 0), shape[0]) - 1
                        what = "the whole tensor" if k is None else f"member {lo}" if k == 1 else f"members {lo}..{hi}"
                        raise self._corrupt(e, what)
            return out
        out = torch.empty((len(rows), *shape[1:]), dtype=dtype)
        row = _nbytes(shape[1:], dtype)
        if digests is None or k is None:
            # a plain file (nothing to verify), a format-1 file (verified whole when opened),
            # or members that hold no bytes
            if row:
                for j, r in enumerate(rows):
                    self._pread(_tensor_bytes(out[j]), start + r * row, e)
            return out[0] if single else out
        blocks: dict[int, list[int]] = {}
        for j, r in enumerate(rows):
            blocks.setdefault(r // k, []).append(j)
        for b, js in blocks.items():
            lo, hi = b * k, min((b + 1) * k, shape[0])
            # one member per block: read straight into the result; else the block, then copy its rows
            buf = out[js[0]].unsqueeze(0) if k == 1 else torch.empty((hi - lo, *shape[1:]), dtype=dtype)
            view = _tensor_bytes(buf)
            self._pread(view, start + lo * row, e)
            if _sha256(view) != digests[b]:
                raise self._corrupt(e, f"member {lo}" if k == 1 else f"members {lo}..{hi - 1}")
            for j in js:
                if k > 1 or j != js[0]:
                    out[j] = buf[rows[j] - lo]
        return out[0] if single else out

    def _pread(self, view: memoryview, offset: int, e: dict) -> None:
        if not len(view):
            return
        try:
            _readinto(self.f, view, offset)
        except EOFError:
            raise CheckpointError(f"{self.where}: truncated while reading tensor {e['name']!r}") from None


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a checkpoint: format, versions, species, the saved tree and the tensor table.

    Reads only the header (the first ``8 + header length`` bytes): the
    manifest's digest and the header are verified; the tensors' bytes are
    not read (``load`` verifies each one it reads). Nothing is unpickled or
    evaluated. ``manifest["tensors"]`` lists every tensor in file order:
    ``name`` (its place in the tree, e.g. ``"pop/0.weight"``; the names
    ``load_tensors`` takes), ``dtype``, ``shape``, ``offsets``,
    ``population`` (N for a population's tensor, else None),
    ``rows_per_digest`` and ``digests``.

    Args:
        path: a file written by ``save``.

    Returns:
        The manifest, a dict of JSON values (``format``, ``format_version``,
        ``nytorch_fn_version``, ``species``, ``tree`` and ``tensors``).

    Raises:
        CheckpointError: not a checkpoint, truncated or with a corrupted header.

    Examples:
        >>> import os, tempfile
        >>> from nytorch_fn import checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "pop.safetensors")
        >>> checkpoint.save(path, {"params": nf.random_population(nf.particle(nn.Linear(3, 2)), 4)})
        >>> manifest = checkpoint.read_manifest(path)
        >>> manifest["format_version"], [(t["name"], t["shape"], t["population"]) for t in manifest["tensors"]]
        (2, [('params/weight', [4, 2, 3], 4), ('params/bias', [4, 2], 4)])
        >>> tmp.cleanup()
    """
    with _File(path, kind="checkpoint") as f:
        manifest = f.manifest
        if f.v1:
            manifest = dict(manifest, tensors=list(f.entries.values()))
        return manifest


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _check_device(device: Any, where: str) -> torch.device | None:
    """``device`` as a torch.device that exists here (None stays None); ValueError otherwise."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: device expects a torch device (e.g. 'cpu', 'cuda:0'), got {device!r} ({error})") from None
    if dev.type == "meta":
        raise ValueError(f"{where}: device 'meta' holds no values; expected a device such as 'cpu' or 'cuda:0'")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError, ValueError) as error:
        raise ValueError(f"{where}: device {str(dev)!r} is not available here ({error})") from None
    return dev


def _members(members: Any, n: int, where: str, path: str) -> tuple[list[int], bool]:
    """The rows ``members`` selects from a population of ``n`` and whether it was a single int."""
    if isinstance(members, bool):
        raise TypeError(f"{where}: members expects an int, a slice or a sequence of ints, got bool")
    if isinstance(members, numbers.Integral):
        picks, single = [int(members)], True
    elif isinstance(members, slice):
        return list(range(*members.indices(n))), False
    elif isinstance(members, torch.Tensor):
        if members.dtype in (torch.bool,) or members.is_floating_point() or members.dim() > 1:
            raise TypeError(f"{where}: members expects a 0-d or 1-d integer tensor, got {members.dtype} of shape {tuple(members.shape)}")
        picks, single = [int(i) for i in members.reshape(-1).tolist()], members.dim() == 0
    elif isinstance(members, Iterable) and not isinstance(members, (str, bytes)):
        picks = list(members)
        for i in picks:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"{where}: members expects ints, got {describe(i)} in {members!r}")
        picks, single = [int(i) for i in picks], False
    else:
        raise TypeError(f"{where}: members expects an int, a slice or a sequence of ints, got {describe(members)}")
    for i in picks:
        if not -n <= i < n:
            raise IndexError(f"{where}: member {i} is out of range for the population of {n} at {path}")
    return [i % n for i in picks], single


def _segments(at: Any, where: str) -> tuple[str, ...]:
    if at is None:
        return ()
    if isinstance(at, str):
        return tuple(s for s in at.split("/") if s)
    if isinstance(at, (tuple, list)) and all(isinstance(s, (str, int)) and not isinstance(s, bool) for s in at):
        return tuple(str(s) for s in at)
    raise TypeError(f"{where}: at expects a path such as 'params' or 'opt/mu' (or a tuple of keys), got {describe(at)}")


def load(
    path: str | os.PathLike,
    *,
    like: Any,
    at: str | Sequence[str | int] | None = None,
    members: Any = None,
    device: Any = None,
    configs: str = "check",
) -> Any:
    """Read a checkpoint written by ``save``, checked against the structure ``like``, tensor by tensor.

    ``like`` has the shape of the saved tree (or of its part at ``at``):
    where a particle was saved it holds a ``Species``, an ``nn.Module`` (its
    species is captured) or a particle (its species; a population template
    also fixes the saved population size); where a tensor was saved, a
    tensor of the same shape and dtype; where a number, a number of the same
    kind; where None, None (or a particle of a species matched earlier in the
    tree, e.g. an optional ``noise`` field that was None in the template
    state); NamedTuples and attrs records of the same class and fields (the
    class is taken from ``like``, never from the file); tuples, lists and
    dicts with the same lengths and keys. Loaded particles belong to
    ``like``'s species objects, so they combine with the caller's other
    particles. The whole structure is checked before any tensor is read.

    Only the tensors of the result are read, each into its final buffer and
    verified against its digests as it is read (peak memory: the result plus
    one tensor); nothing is returned unless every one of them verifies.

    Args:
        path: a file written by ``save``.
        like: the template, as above.
        at: load only the part of the saved tree at this path: dict keys,
            list indices and field names joined by ``/`` (``"params"``,
            ``"opt/mu"``) or as a tuple (for keys holding ``/``). None: the
            whole tree.
        members: load only these members of every population in the loaded
            tree (an int gives single particles, a slice, sequence or 1-d
            index tensor gives populations in that order; negative ints
            count from the end). Only their bytes (and, for small members,
            the rest of their 64 KiB digest block) are read. Tensors that
            are not a population's (e.g. a fitness vector) are loaded whole.
        device: where to put the loaded tensors; None: the device of the
            corresponding template tensor or particle (CPU for a species,
            module, or a template on the meta device).
        configs: ``"check"`` (default): each parameter's config (operational,
            clone, tags) must equal the one recorded in the file;
            ``"ignore"``: the caller's species' configs are taken as they are.

    Returns:
        A new tree like ``like`` with the file's values (fresh tensors,
        ``requires_grad=False``).

    Raises:
        CheckpointError: not a checkpoint, truncated, corrupted (the message
            names the tensor whose digest failed) or of a newer format.
        CheckpointMismatchError: the file does not match ``like``; the
            message names the first difference (path, name, shape, dtype).
        KeyError: ``at`` names no part of the saved tree.
        IndexError: a member index out of range for a population.
        ValueError: ``device`` does not exist here; ``members`` given but the
            loaded tree holds no population.
        TypeError: ``like`` holds a leaf of an unsupported type.

    Examples:
        >>> import os, tempfile
        >>> from nytorch_fn import checkpoint, optim
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "step100.safetensors")
        >>> pop = nf.init_population(nn.Linear(3, 2), 8, generator=torch.Generator().manual_seed(0))
        >>> opt = optim.adam(1e-3)
        >>> checkpoint.save(path, {"params": pop, "opt": opt.init(pop), "step": 100})
        >>> state = checkpoint.load(path, like={"params": pop.species, "opt": opt.init(pop), "step": 0})
        >>> state["step"], torch.equal(state["params"].params["weight"], pop.params["weight"])
        (100, True)
        >>> third = checkpoint.load(path, like=pop.species, at="params", members=3)   # one member's bytes
        >>> torch.equal(third.params["weight"], pop.params["weight"][3])
        True
        >>> tmp.cleanup()
    """
    if configs not in ("check", "ignore"):
        raise ValueError(f"load: configs expects 'check' or 'ignore', got {configs!r}")
    target = _check_device(device, "load")
    segments = _segments(at, "load")
    with _File(path, kind="checkpoint") as f:
        node, where_in_tree = _navigate(f, f.manifest["tree"], segments)
        plan = _Decoder(f, configs == "check", target, members, dry=True)
        plan.decode(like, node, where_in_tree)  # every check, no tensor read
        if members is not None and not plan.saw_population:
            raise ValueError(f"load: members={members!r} selects members of a population, but {f.where} has none at {where_in_tree}")
        return _Decoder(f, configs == "check", target, members, dry=False).decode(like, node, where_in_tree)


def _navigate(f: _File, node: Any, segments: tuple[str, ...]) -> tuple[Any, str]:
    path = "tree"
    for s in segments:
        kind: Any = node.get("kind") if isinstance(node, dict) else None
        items: Any = node.get("items") if isinstance(node, dict) else None
        if kind == "dict" and s in (node.get("keys") or []):
            node, path = items[node["keys"].index(s)], f"{path}[{s!r}]"
        elif kind in ("namedtuple", "record") and s in (node.get("fields") or []):
            node, path = items[node["fields"].index(s)], f"{path}.{s}"
        elif kind in ("list", "tuple") and s.lstrip("-").isdigit() and -len(items) <= int(s) < len(items):
            node, path = items[int(s)], f"{path}[{int(s)}]"
        else:
            have = node.get("keys") or node.get("fields") if isinstance(node, dict) else None
            if kind in ("list", "tuple"):
                have = f"indices 0..{len(items) - 1}"
            raise KeyError(f"load: at={'/'.join(segments)!r}: {path} (a {kind}) has no {s!r}" + (f"; it has {have}" if have else ""))
    return node, path


def load_tensors(
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
    *,
    members: Any = None,
    device: Any = None,
) -> dict[str, torch.Tensor]:
    """Chosen tensors of a checkpoint by name, verified, without a template and without reading the rest.

    Args:
        path: a file written by ``save``.
        names: tensor names as ``read_manifest(path)["tensors"]`` lists them
            (``"params/0.weight"``; a particle saved alone: its parameter
            names); None: every tensor.
        members: only these members of population tensors (as in ``load``);
            other tensors come whole.
        device: where to put them (default CPU).

    Returns:
        A dict name -> tensor, in the order of ``names``.

    Raises:
        KeyError: a name that is not in the file (the message lists some that are).
        CheckpointError, IndexError, ValueError: as for ``load``.

    Examples:
        >>> import os, tempfile
        >>> from nytorch_fn import checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "pop.safetensors")
        >>> pop = nf.random_population(nf.particle(nn.Linear(3, 2)), 4)
        >>> checkpoint.save(path, {"params": pop})
        >>> w = checkpoint.load_tensors(path, ["params/weight"], members=0)["params/weight"]
        >>> torch.equal(w, pop.params["weight"][0])
        True
        >>> tmp.cleanup()
    """
    target = _check_device(device, "load_tensors")
    with _File(path, kind="checkpoint") as f:
        wanted = list(f.entries) if names is None else ([names] if isinstance(names, str) else list(names))
        for name in wanted:
            if name not in f.entries:
                some = list(f.entries)[:8]
                raise KeyError(f"load_tensors: {f.where} has no tensor {name!r}; it has {some}{' ...' if len(f.entries) > 8 else ''}")
        plans = []
        for name in wanted:
            e = f.entries[name]
            rows, single = (None, False)
            if members is not None and e["population"] is not None:
                rows, single = _members(members, e["population"], "load_tensors", name)
            plans.append((name, e, rows, single))
        out = {}
        for name, e, rows, single in plans:
            t = f.read(e, rows, single)
            out[name] = t if target is None or target.type == "cpu" else t.to(target)
        return out


class _Decoder:
    def __init__(self, f: _File, check_configs: bool, device: torch.device | None, members: Any, *, dry: bool) -> None:
        self.f = f
        self.where = f.where
        self.species = f.manifest.get("species")
        if not isinstance(self.species, list):
            raise CheckpointError(f"{self.where}: manifest has no species table")
        self.check_configs = check_configs
        self.device = device
        self.members = members
        self.dry = dry
        self.saw_population = False
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

    def _read(self, e: dict, rows: list[int] | None, single: bool, target: torch.device) -> torch.Tensor:
        if self.dry:
            shape = e["shape"] if rows is None else ([] if single else [len(rows)]) + e["shape"][1:]
            return torch.empty(shape, dtype=_DTYPE_NAMES[e["dtype"]], device="meta")
        t = self.f.read(e, rows, single)
        return t if target.type == "cpu" else t.to(target)

    def decode(self, like: Any, node: Any, path: str) -> Any:
        kind = self._node(node, path)
        if isinstance(like, (Particle, Species, nn.Module)):
            return self._particle(like, node, kind, path)
        if isinstance(like, torch.Tensor):
            if kind != "tensor":
                raise self.fail(path, f"the file has a {kind}, `like` a tensor")
            e = self.f.entry(node.get("key"), path)
            shape, dtype = torch.Size(e["shape"]), _DTYPE_NAMES[e["dtype"]]
            if shape != like.shape:
                raise self.fail(path, f"the file has shape {tuple(shape)}, `like` {tuple(like.shape)}")
            if dtype != like.dtype:
                raise self.fail(path, f"the file has dtype {dtype}, `like` {like.dtype}")
            return self._read(e, None, False, self._target(like.device))
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
            fields = list(type(like)._fields)  # type: ignore[attr-defined]
            items = self._fields(like, node, kind, "namedtuple", fields, path)
            return type(like)(*[self.decode(v, n, f"{path}.{f}") for (f, v), n in zip(zip(fields, like), items)])
        if attrs.has(type(like)):
            fields = [a.name for a in attrs.fields(type(like))]
            items = self._fields(like, node, kind, "record", fields, path)
            values = {f: self.decode(getattr(like, f), n, f"{path}.{f}") for f, n in zip(fields, items)}
            inits = {a.alias: values[a.name] for a in attrs.fields(type(like)) if a.init}
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
        rows, single = None, False
        if population is not None and self.members is not None:
            self.saw_population = True
            rows, single = _members(self.members, population, "load", path)
        target = self._target(template_device)
        out = {}
        for name, key in zip(sp.names, keys):
            e = self.f.entry(key, f"{path}.params[{name!r}]")
            shape = list(sp.shapes[name]) if population is None else [population, *sp.shapes[name]]
            population_differs = not self.f.v1 and e.get("population") != population
            if e["shape"] != shape or _DTYPE_NAMES[e["dtype"]] != sp.dtypes[name] or population_differs:
                raise self.corrupt(path, f"tensor of {name!r} is {tuple(e['shape'])} {e['dtype']}, the manifest says {tuple(shape)} {sp.dtypes[name]}")
            out[name] = self._read(e, rows, single, target)
        return Particle(sp, out)

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
        shapes: Any = rec.get("shapes")
        dtypes: Any = rec.get("dtypes")
        configs: Any = rec.get("config")
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
        mine = [_buffer_record(sp, n) for n in sp.buffer_names]
        for theirs, ours in zip(buffers, mine):
            if theirs != ours:
                raise self.fail(path, f"buffer {theirs} in the file, {ours} in the species (name, shape, dtype)")
        if len(buffers) != len(mine):
            raise self.fail(path, f"the file has {len(buffers)} buffers, the species {len(mine)}")


# ---------------------------------------------------------------------------
# plain state_dict files (interoperability)
# ---------------------------------------------------------------------------


def _state_dict_sources(sp: Species, where: str) -> list[tuple[str, str, str]]:
    """``(state_dict key, kind, canonical name)`` in ``module.state_dict()`` order; kind is "param" or "buffer"."""
    params = set(sp.names)
    out = []
    for key in sp.skeleton.state_dict(keep_vars=True):
        name = key if key in params or key in sp.buffers else sp.tied.get(key, key)
        if name in params:
            out.append((key, "param", name))
        elif name in sp.buffers:
            out.append((key, "buffer", name))
        else:
            raise TypeError(
                f"{where}: state_dict entry {key!r} is neither a parameter nor a buffer of the species "
                "(a module's extra state cannot be written to a safetensors file)"
            )
    return out


def save_state_dict(
    path: str | os.PathLike,
    particle: Particle,
    *,
    tied: str = "all",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write one particle as a plain safetensors ``state_dict`` file (``model.safetensors``), atomically.

    The file holds exactly the entries ``module.state_dict()`` would: every
    parameter under its dotted name and the species' persistent buffers, so
    a user of plain PyTorch or Hugging Face loads it with
    ``module.load_state_dict(safetensors.torch.load_file(path))``. The
    metadata is ``{"format": "pt"}`` (what ``transformers`` checks) plus
    ``metadata``. There is no manifest and no digest: it is a plain file.

    Args:
        path: the file to write.
        particle: a single particle (a population: pick a member, ``pop[i]``).
        tied: a parameter shared at several paths (a GPT-2's input and
            output embeddings) is one entry of the particle. ``"all"``
            (default): write it under every path, as ``module.state_dict()``
            lists it (strict ``load_state_dict`` works); ``"first"``: only
            under its first name (as ``save_pretrained`` does; load with
            ``strict=False`` or ``from_pretrained``).
        metadata: extra str -> str metadata for the header.

    Raises:
        TypeError: a population, a non-particle, or a module with extra state.
        ValueError: ``tied`` not "all"/"first", metadata that is not str -> str.

    Examples:
        >>> import os, tempfile
        >>> from safetensors.torch import load_file
        >>> from nytorch_fn import checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "model.safetensors")
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> p = nf.particle(net)
        >>> checkpoint.save_state_dict(path, 0.5 * p)
        >>> net.load_state_dict(load_file(path))
        <All keys matched successfully>
        >>> torch.equal(net[0].weight.detach(), 0.5 * p.params["0.weight"])
        True
        >>> tmp.cleanup()
    """
    where = "save_state_dict"
    if not isinstance(particle, Particle):
        raise TypeError(f"{where}: expected a Particle, got {describe(particle)}")
    if particle.population_size is not None:
        raise TypeError(
            f"{where}: expected a single particle, got a population of {particle.population_size} "
            "(a state_dict holds one model: pass pop[i])"
        )
    if tied not in ("all", "first"):
        raise ValueError(f"{where}: tied expects 'all' or 'first', got {tied!r}")
    extra = dict(metadata or {})
    for k, v in extra.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(f"{where}: metadata expects str -> str, got {k!r}: {describe(v)}")
    sp = particle.species
    values = dict(zip(sp.names, particle.tensors))
    items: list[tuple[str, torch.Tensor, int | None]] = []
    seen: set[str] = set()
    for key, kind, name in _state_dict_sources(sp, where):
        if tied == "first" and name in seen:
            continue
        seen.add(name)
        t = values[name] if kind == "param" else sp.buffers[name]
        _check_savable(t, repr(key), where)
        items.append((key, t.detach(), None))
    entries, order = _layout(items, None)
    meta = {"format": "pt", **{k: v for k, v in extra.items() if k != "format"}}
    _atomic_write(os.fspath(path), lambda: _render_header(meta, entries),
                  [(items[i][1], e) for i, e in zip(order, entries)], digests=False)


def load_state_dict(
    path: str | os.PathLike,
    *,
    like: Any,
    device: Any = None,
    strict: bool = True,
    with_buffers: bool = False,
) -> Particle | tuple[Particle, dict[str, torch.Tensor]]:
    """Import a plain safetensors ``state_dict`` file (e.g. a ``model.safetensors``) as a particle of a species.

    Every parameter of the species must be in the file, under its name or
    one of its tied names, with the species' shape and dtype; the species'
    persistent buffers too when ``strict``. Everything is checked from the
    header before any tensor is read, and the message names the first
    mismatch in ``state_dict`` order. Tied names present together must hold
    equal values.

    Args:
        path: a safetensors file (any writer: ``save_file``, ``save_pretrained``, ``save_state_dict``).
        like: a ``Species``, an ``nn.Module`` (its structure is captured) or a particle (its species).
        device: where to put the tensors; None: the template particle's device, else CPU.
        strict: refuse tensors the species does not have and missing buffers
            (as ``module.load_state_dict(strict=True)``); False ignores them
            (a missing parameter is always an error: a particle holds them all).
        with_buffers: also return the file's buffers as a dict (for
            ``nf.apply_with_buffers``); a particle holds parameters only, and
            ``nf.apply`` uses the species' buffers.

    Returns:
        The particle, or ``(particle, buffers)`` with ``with_buffers=True``.

    Raises:
        CheckpointMismatchError: a name, shape or dtype differs (the first one is named).
        CheckpointError: not a safetensors file, truncated, or malformed.
        ValueError: ``device`` does not exist here.

    Examples:
        >>> import os, tempfile
        >>> from safetensors.torch import save_file
        >>> from nytorch_fn import checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "model.safetensors")
        >>> net = nn.Linear(3, 2)
        >>> save_file(net.state_dict(), path)            # any writer: save_file, save_pretrained, ...
        >>> p = checkpoint.load_state_dict(path, like=nn.Linear(3, 2))
        >>> torch.equal(p.params["weight"], net.weight.detach())
        True
        >>> tmp.cleanup()
    """
    where = "load_state_dict"
    target = _check_device(device, where)
    if isinstance(like, Particle):
        sp = like.species
        if target is None and like.tensors:
            target = like.tensors[0].device
    elif isinstance(like, Species):
        sp = like
    elif isinstance(like, nn.Module):
        from ._module import particle

        sp = particle(like, copy=False).species
    else:
        raise TypeError(f"{where}: like expects a Species, nn.Module or Particle, got {describe(like)}")
    target = target or torch.device("cpu")
    with _File(path, kind="plain") as f:
        def fail(message: str) -> CheckpointMismatchError:
            return CheckpointMismatchError(f"{f.where}: state_dict does not match the species: {message}")

        sources = _state_dict_sources(sp, where)
        plan: dict[str, list[dict]] = {}
        kinds: dict[str, str] = {}
        for key, kind, name in sources:  # which names the file holds, under any of their keys
            kinds[name] = kind
            if key in f.entries:
                plan.setdefault(name, []).append(f.entries[key])
        for key, kind, name in sources:  # the first mismatch, in state_dict order
            e = f.entries.get(key)
            shape = sp.shapes[name] if kind == "param" else sp.buffers[name].shape
            dtype = sp.dtypes[name] if kind == "param" else sp.buffers[name].dtype
            if e is not None:
                if e["shape"] != list(shape):
                    raise fail(f"tensor {key!r} has shape {tuple(e['shape'])} in the file, {tuple(shape)} in the species")
                if _DTYPE_NAMES[e["dtype"]] != dtype:
                    raise fail(f"tensor {key!r} has dtype {e['dtype']} in the file, {_dtype_name(dtype)} in the species")
            elif name not in plan and (kind == "param" or strict):
                others = [k for k, _, n in sources if n == name and k != key]
                also = f" (nor under its tied names {others})" if others else ""
                raise fail(f"the file lacks {'parameter' if kind == 'param' else 'buffer'} {key!r}{also}")
        expected = {key for key, _, _ in sources}
        for key in f.entries:
            if strict and key not in expected:
                raise fail(f"the file has tensor {key!r}, which the species lacks")
        read: dict[str, torch.Tensor] = {}
        for name, es in plan.items():
            first = f.read(es[0])
            for e in es[1:]:
                if not torch.equal(f.read(e), first):
                    raise fail(f"tied tensors {es[0]['name']!r} and {e['name']!r} differ in the file")
            read[name] = first if target.type == "cpu" else first.to(target)
    p = Particle(sp, {n: read[n] for n in sp.names})
    if not with_buffers:
        return p
    return p, {n: t for n, t in read.items() if kinds[n] == "buffer"}
