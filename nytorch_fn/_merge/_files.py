"""Out-of-core merging of safetensors checkpoints, one tensor at a time.

Inputs are safetensors files or Hugging Face folders (``model.safetensors``,
or ``model.safetensors.index.json`` with its shards). Headers are read and
checked with ``safetensors.safe_open``; tensor bytes are then read with
plain positioned reads (``readinto``) into a few buffers that the merge
allocates once and reuses for every output tensor (``Buffers``): one per
input role (the base, model 0, model 1, ...) sized for the largest tensor,
used only by kernels that hold several whole tensors; one scratch tensor
shared by all models (a TIES/breadcrumbs mask is chosen one model at a
time); chunk buffers for the chunk-sized reads of the element-wise passes
(linear, and the merge pass of the task-vector methods read each model's
entries ``[start, stop)`` only); staging buffers for inputs stored in
another dtype than the one merged in. No input
file stays mapped (a mapped file's pages count as resident memory as soon as
they are touched), and no tensor-sized allocation is made per tensor by the
reader, so resident memory holds the buffers of one output tensor and the
kernel's scratch whatever glibc's heap does. Output shards are streamed:
each shard's header is written first (every output name, dtype and shape is
known before merging starts), then each merged tensor is written as soon as it
is computed. Everything is written into a temporary folder beside
``out_dir`` and renamed at the end; on any error the temporary folder is
removed and ``out_dir`` is left as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from functools import partial
from typing import Any, BinaryIO, Callable, Mapping, Sequence, cast

import attrs
import torch
from safetensors import safe_open

from . import _methods as M
from ._kernels import Inputs
from . import _select
from ._particles import compat_flag, compute_dtype, resolve, seed_from, _check_count

INDEX = "model.safetensors.index.json"

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


class CheckpointError(ValueError):
    """A checkpoint on disk is missing, incomplete, or does not match the others."""


def parse_dtype(value: Any, where: str) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        if isinstance(value, torch.dtype) and not value.is_floating_point:
            raise ValueError(f"{where}: expects a floating-point dtype, got {value}")
        return value
    if isinstance(value, str) and value in DTYPE_NAMES:
        return DTYPE_NAMES[value]
    raise ValueError(f"{where}: expects one of {', '.join(DTYPE_NAMES)}, got {value!r}")


class Checkpoint:
    """A safetensors checkpoint on disk: names, shapes and dtypes, and lazy reads.

    Args:
        path: a ``.safetensors`` file, or a folder holding ``model.safetensors``
            or ``model.safetensors.index.json`` and its shards (or exactly one
            ``*.safetensors.index.json`` / one ``*.safetensors`` file).

    Raises:
        CheckpointError: the path does not exist, holds no safetensors, an index
            names a shard that is missing or a tensor its shard lacks.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # (absolute offset, byte count) of each tensor
        p = self.path
        if not p.exists():
            raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
        if p.is_file():
            self._read_shard(p)
        else:
            index: Path | None = p / INDEX
            if not (p / INDEX).exists():
                indexes = sorted(p.glob("*.safetensors.index.json"))
                index = indexes[0] if len(indexes) == 1 else None
            if index is not None and (p / "model.safetensors").exists() and index.name != INDEX:
                index = None
            if index is not None:
                self._read_index(index)
            elif (p / "model.safetensors").exists():
                self._read_shard(p / "model.safetensors")
            else:
                files = sorted(p.glob("*.safetensors"))
                if len(files) != 1:
                    found = ", ".join(f.name for f in files) or "none"
                    raise CheckpointError(
                        f"checkpoint folder {str(p)!r}: expected model.safetensors, or {INDEX} with its shards, "
                        f"or a single *.safetensors file; found safetensors files: {found}"
                    )
                self._read_shard(files[0])
        self.names = tuple(self.files)

    def _read_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"index {str(index)!r}: expected JSON with a 'weight_map', got an error: {e}") from None
        shards: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        for shard, names in shards.items():
            f = index.parent / shard
            if not f.is_file():
                raise CheckpointError(f"index {str(index)!r} names shard {shard!r}, which does not exist")
            self._read_shard(f, names, index)

    def _read_shard(self, f: Path, names: Sequence[str] | None = None, index: Path | None = None) -> None:
        """Add ``names`` (every tensor when None) of shard ``f`` (named by ``index``)."""
        try:
            with safe_open(str(f), framework="pt") as h:
                present = list(h.keys())
                spans = _spans(f)
                if names is not None:
                    have = set(present)
                    for name in names:
                        if name not in have:
                            raise CheckpointError(
                                f"index {str(index)!r} places tensor {name!r} in shard {f.name!r}, "
                                f"which does not hold it"
                            )
                for name in present if names is None else names:
                    self._add(h, name, f, spans)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{str(f)!r} is not a readable safetensors file: {e}") from None

    def _add(self, h: Any, name: str, f: Path, spans: Mapping[str, tuple[int, int]]) -> None:
        s = h.get_slice(name)
        code = s.get_dtype()
        if code not in _ST_DTYPES:
            raise CheckpointError(f"{str(f)!r}: tensor {name!r} has dtype {code}, which torch here cannot hold")
        shape = tuple(s.get_shape())
        dtype = _ST_DTYPES[code]
        span = spans.get(name)
        if span is None or span[1] != _nbytes(shape, dtype):
            raise CheckpointError(f"{str(f)!r}: the header's byte range of tensor {name!r} does not match its shape")
        self.files[name] = f
        self.shapes[name] = shape
        self.dtypes[name] = dtype
        self._spans[name] = span

    def read(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor, as a fresh tensor on ``device`` (read from the file, nothing kept mapped).

        Args:
            name: the tensor's name in the checkpoint.
            device: where the result goes.

        Returns:
            The tensor, with its dtype and shape.

        Raises:
            KeyError: the checkpoint has no tensor ``name``.
        """
        if name not in self.files:
            raise KeyError(f"{str(self.path)!r} has no tensor {name!r}")
        raw = torch.empty(self._spans[name][1], dtype=torch.uint8)
        return self.read_into(name, raw).to(device)

    def read_into(
        self,
        name: str,
        raw: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        *,
        handles: dict | None = None,
    ) -> torch.Tensor:
        """Read tensor ``name`` into the front of a buffer the caller owns (positioned reads, nothing mapped).

        Args:
            name: the tensor's name in the checkpoint.
            raw: a contiguous CPU ``uint8`` buffer at least as large as what is read.
            start: the first entry of the flattened tensor to read.
            stop: the entry to stop before (None: the end; with ``start`` 0, the whole tensor).
            handles: a dict of open files to reuse (the caller closes them), or None.

        Returns:
            The tensor as a view of ``raw`` with its dtype and shape, or with
            ``start``/``stop`` the entries ``[start, stop)`` as a flat view.
        """
        offset, nbytes = self._spans[name]
        dtype, shape = self.dtypes[name], self.shapes[name]
        whole = start == 0 and stop is None
        if not whole:
            item = torch.empty((), dtype=dtype).element_size()
            count = (nbytes // item if item else 0) if stop is None else stop
            offset, nbytes = offset + start * item, (count - start) * item
        if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
            with safe_open(str(self.files[name]), framework="pt") as h:
                t = h.get_tensor(name).reshape(-1)[start:stop]
            out = raw[:nbytes].view(dtype)
            out.copy_(t)
            return out.view(shape) if whole else out
        view = raw[:nbytes]
        if nbytes:
            mv = memoryview(cast(Any, view.numpy())).cast("B")  # numpy's stubs: an ndarray is no Buffer
            path = self.files[name]
            fh = handles.get(path) if handles is not None else None
            if fh is None:
                fh = open(path, "rb", buffering=0)
                if handles is not None:
                    handles[path] = fh
            try:
                fh.seek(offset)
                got = 0
                while got < nbytes:
                    n = fh.readinto(mv[got:])
                    if not n:
                        raise CheckpointError(f"{str(path)!r}: the file ends inside tensor {name!r} (truncated?)")
                    got += n
            finally:
                if handles is None:
                    fh.close()
        out = view.view(dtype)
        return out.view(shape) if whole else out

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.names)} tensors)"


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * torch.empty((), dtype=dtype).element_size()


def _spans(f: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's (absolute offset, byte count) from a safetensors header (already
    checked by ``safe_open``: offsets are contiguous and inside the file)."""
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    start = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (start + b, e - b)
    return out


def as_checkpoint(x: Any) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else Checkpoint(x)


# ---------------------------------------------------------------------------
# the streamed writer
# ---------------------------------------------------------------------------


class ShardWriter:
    """Writes safetensors shards whose contents are declared up front, tensor by tensor."""

    def __init__(self, folder: Path, entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], shard_bytes: int):
        self.folder = folder
        shards: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
        size = 0
        for name, dtype, shape in entries:
            n = 1
            for d in shape:
                n *= d
            nbytes = n * torch.empty((), dtype=dtype).element_size()
            if shards[-1] and size + nbytes > shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, dtype, shape, nbytes))
            size += nbytes
        self.shards = shards
        count = len(shards)
        self.file_names = (
            ["model.safetensors"] if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self.order = [e[0] for s in shards for e in s]
        self.total = sum(e[3] for s in shards for e in s)
        self._pos = 0
        self._shard = -1
        self._fh: BinaryIO | None = None
        self._expect: list = []

    def _open_next(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._shard += 1
        entries = self.shards[self._shard]
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._fh = open(self.folder / self.file_names[self._shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._expect = list(entries)

    def write(self, name: str, t: torch.Tensor) -> None:
        if not self._expect:
            self._open_next()
        ename, dtype, shape, nbytes = self._expect.pop(0)
        if name != ename or t.dtype != dtype or tuple(t.shape) != shape:
            raise RuntimeError(f"internal: writer expected {ename} {dtype} {shape}, got {name} {t.dtype} {tuple(t.shape)}")
        if nbytes:
            data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
            cast(BinaryIO, self._fh).write(memoryview(cast(Any, data)))  # _open_next opened it
        self._pos += 1

    def close(self) -> None:
        if self._pos != len(self.order):
            raise RuntimeError(f"internal: {len(self.order) - self._pos} tensors were not written")
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for i in range(self._shard + 1, len(self.shards)):  # only possible for empty outputs
            self._open_next()
        if self._fh is not None:
            self._fh.close()
        if len(self.file_names) > 1:
            weight_map = {e[0]: self.file_names[i] for i, s in enumerate(self.shards) for e in s}
            (self.folder / INDEX).write_text(
                json.dumps({"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2) + "\n"
            )

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------------------
# jobs: what to write, from what
# ---------------------------------------------------------------------------

Source = tuple[Checkpoint, str]  # a checkpoint and the tensor's name in it


@attrs.frozen
class Job:
    """One output tensor: merged by ``method`` from ``models`` (and ``base``), or copied."""

    name: str
    method: M.Method | None  # None: copy (non-float tensors: all sources must agree)
    base: Source | None
    models: tuple[Source, ...]
    params: Mapping[str, Any]
    out_dtype: torch.dtype | None = None


def _describe_source(src: Source) -> str:
    return f"{str(src[0].path)!r} tensor {src[1]!r}"


def check_jobs(jobs: Sequence[Job], where: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """Shapes and kinds of every job's sources; the output entries (name, dtype, shape)."""
    entries = []
    for job in jobs:
        srcs = ([job.base] if job.base else []) + list(job.models)
        first = srcs[0]
        shape = first[0].shapes[first[1]]
        dtype = first[0].dtypes[first[1]]
        is_float = dtype.is_floating_point
        for src in srcs[1:]:
            s, d = src[0].shapes[src[1]], src[0].dtypes[src[1]]
            if s != shape:
                raise CheckpointError(
                    f"{where}: the models differ at tensor {job.name!r}: {_describe_source(first)} has shape "
                    f"{list(shape)}, {_describe_source(src)} has shape {list(s)} (different architectures?)"
                )
            if d.is_floating_point != is_float:
                raise CheckpointError(
                    f"{where}: the models differ at tensor {job.name!r}: dtype {dtype} in {str(first[0].path)!r}, "
                    f"{d} in {str(src[0].path)!r}"
                )
            if is_float:
                dtype = torch.promote_types(dtype, d)
        out = job.out_dtype if (job.out_dtype is not None and is_float) else dtype
        entries.append((job.name, out, shape))
    return entries


def run_jobs(
    jobs: Sequence[Job],
    out_dir: str | os.PathLike,
    *,
    shard_size: int,
    seed: int | None,
    compat: bool,
    device: str | torch.device,
    overwrite: bool,
    extra: Callable[[Path], None] | None,
    where: str,
) -> Path:
    """Check every job, then write the output atomically (temporary folder, rename)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{where}: out_dir {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{where}: out_dir {str(out)!r} exists and is not empty (pass overwrite=True / --overwrite)")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"{where}: two outputs would be named {dup!r}")
    entries = check_jobs(jobs, where)
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f"{where}: shard_size expects a positive number of bytes, got {shard_size!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    writer = ShardWriter(tmp, entries, shard_size)
    buffers = Buffers(jobs)
    try:
        by_name = {j.name: (j, e) for j, e in zip(jobs, entries)}
        for name in writer.order:
            job, (_, dtype, _) = by_name[name]
            writer.write(name, _run_job(job, dtype, buffers, seed=seed, compat=compat, device=device, where=where))
        buffers.close()
        writer.close()
        if extra is not None:
            extra(tmp)
        if out.is_dir():
            if any(out.iterdir()):
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
                os.rename(out, trash / "old")
                os.rename(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                out.rmdir()
                os.rename(tmp, out)
        else:
            os.rename(tmp, out)
    except BaseException:
        buffers.close()
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class Buffers:
    """The read buffers of one merge, allocated once and reused for every output tensor.

    - one per input role (``"base"``, model ``0``, ``1``, ...), sized for the largest
      tensor that role holds in the compute dtype: what a kernel holds whole; each role
      is read at most once per output tensor (a second read would overwrite what the
      kernel holds, so it is refused);
    - one ``transient`` buffer shared by all models (``Inputs.delta(i, transient=True)``:
      valid until the next transient read);
    - one chunk buffer per role for ``Inputs.part`` (valid until that model's next part);
    - staging buffers for inputs stored in another dtype (read raw, converted into place).

    Each is allocated on first use; files are kept open for the merge (``close``).
    """

    def __init__(self, jobs: Sequence[Job]) -> None:
        self._sizes: dict[Any, int] = {}
        stage = 0
        for job in jobs:
            if job.method is None:
                continue
            cdt = compute_dtype(*(ck.dtypes[n] for ck, n in _sources(job)))
            for role, (ck, name) in _roles(job):
                size = _nbytes(ck.shapes[name], cdt)
                for r in (role, "transient"):
                    self._sizes[r] = max(self._sizes.get(r, 0), size)
                if ck.dtypes[name] != cdt:
                    stage = max(stage, ck._spans[name][1])
        self._sizes["stage"] = stage
        self._raw: dict[Any, torch.Tensor] = {}
        self._used: set = set()
        self.handles: dict = {}

    def next_tensor(self) -> None:
        self._used.clear()

    def close(self) -> None:
        for fh in self.handles.values():
            fh.close()
        self.handles.clear()
        self._raw.clear()

    def _buffer(self, key: Any, size: int | None = None) -> torch.Tensor:
        b = self._raw.get(key)
        if b is None:  # allocated on first use; its pages become resident as they are written
            b = self._raw[key] = torch.empty(self._sizes[key] if size is None else size, dtype=torch.uint8)
        return b

    def _read(
        self,
        key: Any,
        src: Source,
        dtype: torch.dtype,
        device: str | torch.device,
        start: int = 0,
        stop: int | None = None,
        size: int | None = None,
    ) -> torch.Tensor:
        ck, name = src
        if ck.dtypes[name] == dtype:
            t = ck.read_into(name, self._buffer(key, size), start, stop, handles=self.handles)
        else:
            stage = ("stage", key) if size is not None else "stage"
            raw = ck.read_into(name, self._buffer(stage, size), start, stop, handles=self.handles)
            t = self._buffer(key, size)[: raw.numel() * _ITEM[dtype]].view(dtype).view(raw.shape)
            t.copy_(raw)
        return t if torch.device(device).type == "cpu" else t.to(device)

    def load(self, role: Any, src: Source, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
        if role in self._used:
            raise RuntimeError(f"internal: input {role!r} read twice for one output tensor")
        self._used.add(role)
        return self._read(role, src, dtype, device)

    def transient(self, src: Source, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
        return self._read("transient", src, dtype, device)

    def part(
        self, role: Any, src: Source, start: int, stop: int, dtype: torch.dtype, device: str | torch.device
    ) -> torch.Tensor:
        return self._read(("part", role), src, dtype, device, start, stop, size=_select.CHUNK * 8)


_ITEM = {d: torch.empty((), dtype=d).element_size() for d in (torch.float16, torch.bfloat16, torch.float32,
                                                            torch.float64)}


def _sources(job: Job) -> list[Source]:
    return ([job.base] if job.base else []) + list(job.models)


def _roles(job: Job) -> list[tuple[Any, Source]]:
    return ([("base", job.base)] if job.base else []) + list(enumerate(job.models))


def _run_job(
    job: Job,
    out_dtype: torch.dtype,
    buffers: Buffers,
    *,
    seed: int | None,
    compat: bool,
    device: str | torch.device,
    where: str,
) -> torch.Tensor:
    srcs = _sources(job)
    if job.method is None:
        first = srcs[0][0].read(srcs[0][1])
        for ck, name in srcs[1:]:
            if not torch.equal(ck.read(name), first):
                raise CheckpointError(
                    f"{where}: tensor {job.name!r} is not floating point ({first.dtype}) and "
                    f"{str(srcs[0][0].path)!r} and {str(ck.path)!r} hold different values; it cannot be merged"
                )
        return first
    dtype = compute_dtype(*(ck.dtypes[n] for ck, n in srcs))
    buffers.next_tensor()
    models = job.models
    ctx = Inputs(
        job.name,
        partial(buffers.load, "base", job.base, dtype, device) if job.base else None,
        [partial(buffers.load, i, s, dtype, device) for i, s in enumerate(models)],
        owned=True,
        dtype=dtype,
        compat=compat,
        seed=seed,
        parts=lambda i, start, stop: buffers.part(i, models[i], start, stop, dtype, device),
        transient=lambda i: buffers.transient(models[i], dtype, device),
    )
    return job.method.kernel(ctx, **job.params).to(out_dtype)


# ---------------------------------------------------------------------------
# the public entry
# ---------------------------------------------------------------------------


def merge_files(
    method: str,
    models: Sequence[str | os.PathLike | Checkpoint],
    out_dir: str | os.PathLike,
    *,
    base: str | os.PathLike | Checkpoint | None = None,
    dtype: str | torch.dtype | None = None,
    shard_size: int = 5 * 10**9,
    generator: torch.Generator | None = None,
    compat: str | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    **parameters: Any,
) -> Path:
    """Merge safetensors checkpoints on disk into ``out_dir``, one tensor at a time.

    The same methods, parameters and numerics as the particle functions
    (``merge_files("ties", [a, b], out, base=c, density=0.5)`` writes what
    ``ties(c, [a, b], density=0.5)`` computes on the loaded particles, bit for
    bit, including the random masks for the same ``generator`` state). Every
    model must hold the same tensor names and shapes. Floating-point tensors
    are merged (in float32, float64 if an input is, rounded once to ``dtype``
    or to the inputs' promoted dtype); other tensors are copied when every
    input holds the same values. No module is built; at most the inputs of one
    output tensor are in memory at once.

    Args:
        method: a mergekit method name (``nytorch_fn.merge.METHODS``), not ``passthrough`` with
            several models (layer stacking goes through ``run_config``'s ``slices``).
        models: the (non-base) checkpoints: ``.safetensors`` files or Hugging Face folders.
        out_dir: the output folder (``model.safetensors``, or shards of at most
            ``shard_size`` bytes with ``model.safetensors.index.json``); must not
            exist or be empty unless ``overwrite``.
        base: the base checkpoint, for the methods that take one.
        dtype: output dtype of the floating-point tensors.
        shard_size: the largest output shard, in bytes.
        generator: as ``merge_particles`` (the random methods' seed; the same
            generator state gives the masks of the in-memory merge).
        compat: as ``merge_particles``.
        device: where tensors are merged (read there, written from CPU).
        overwrite: replace an existing non-empty ``out_dir``.
        **parameters: the method's parameters (a number, or one per model).

    Returns:
        The output folder.

    Raises:
        CheckpointError: a missing file or shard, models of different architectures or shapes
            (the message names the first differing tensor).
        ValueError, TypeError: as the particle functions.

    Examples:
        >>> out = merge.merge_files("dare_ties", ["ft_a", "ft_b"], "merged", base="base", density=0.5,
        ...                         weight=0.5, generator=torch.Generator().manual_seed(0))
        >>> sorted(f.name for f in out.iterdir())
        ['model.safetensors']
    """
    where = f"merge_files({method!r})"
    m = M.get(method, where)
    cks = [as_checkpoint(x) for x in models]
    base_ck = as_checkpoint(base) if base is not None else None
    if base_ck is not None and m.base == "ignored":
        raise TypeError(f"{where}: {m.name} takes no base model")
    if base_ck is None and m.base == "required":
        raise TypeError(f"{where}: {m.name} needs a base model")
    _check_count(m, len(cks), where)
    params = resolve(m, parameters, len(cks), where)
    out_dtype = parse_dtype(dtype, f"{where}: dtype")
    everyone = ([base_ck] if base_ck else []) + cks
    lead = everyone[0]
    for ck in everyone[1:]:
        missing = [n for n in lead.names if n not in ck.shapes]
        extra = [n for n in ck.names if n not in lead.shapes]
        if missing or extra:
            first = (missing or extra)[0]
            holder, lacker = (lead, ck) if missing else (ck, lead)
            raise CheckpointError(
                f"{where}: the models differ at tensor {first!r}: {str(holder.path)!r} has it, "
                f"{str(lacker.path)!r} does not (different architectures?)"
            )
    jobs = []
    for name in lead.names:
        is_float = lead.dtypes[name].is_floating_point
        jobs.append(Job(
            name,
            m if is_float else None,
            (base_ck, name) if base_ck else None,
            tuple((ck, name) for ck in cks),
            params,
            out_dtype,
        ))
    seed = seed_from(generator, where) if m.random else None
    return run_jobs(jobs, out_dir, shard_size=shard_size, seed=seed, compat=compat_flag(compat, where),
                    device=device, overwrite=overwrite, extra=None, where=where)
