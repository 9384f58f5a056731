"""Read and write safetensors files ourselves: a JSON header and raw little-endian bytes.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON
{tensor name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
and then the data, offsets relative to its start. That is all there is to it, so
jaxlm reads it with `np.memmap` (a tensor's bytes are touched only when sliced, which
is what lets the importer read just the rows a device needs) and needs neither the
`safetensors` package nor torch. Nothing here can execute code from a file: there is
no pickle anywhere, and a directory holding only PyTorch `.bin` checkpoints is refused.

Sharded checkpoints carry `model.safetensors.index.json` ({"weight_map": {name:
file}}); `SafetensorsCheckpoint` reads either layout, checking every offset against
the file's size so a truncated download fails naming the file and tensor. The writer
streams tensors one at a time into shards of at most `max_shard_bytes` (a tensor
larger than that gets a shard of its own), with the index when there is more than one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxlm.data.file_names import contained_file
from jaxlm.errors import InputError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype name -> numpy dtype, for the float types weights come in.
DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
# Refuse absurd headers before reading them (real ones are well under a megabyte).
_MAX_HEADER_BYTES = 100 * 2**20


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


class SafetensorsFile:
    """One .safetensors file: its header parsed and checked, data memory-mapped lazily."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.entries, self.metadata = _read_header(self.path)
        self._mmap: np.memmap | None = None

    def tensor(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of `name` (bytes are read when used)."""
        entry = self.entries.get(name)
        if entry is None:
            raise InputError(f"{self.path}: no tensor {name!r}")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mmap[entry.begin : entry.end].view(entry.dtype).reshape(entry.shape)


def _read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InputError(f"{path}: truncated safetensors file (shorter than its 8-byte header)")
        (n,) = struct.unpack("<Q", prefix)
        if n > _MAX_HEADER_BYTES or 8 + n > size:
            raise InputError(
                f"{path}: header length {n} does not fit in the file ({size} bytes): "
                "truncated or not a safetensors file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: the safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + n, size - 8 - n
    entries = {}
    for name, info in header.items():
        entries[name] = _entry(path, name, info, data_start, data_size)
    return entries, metadata


def _entry(path: Path, name: str, info, data_start: int, data_size: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise InputError(f"{where}: header entry needs dtype, shape and data_offsets")
    dtype = DTYPES.get(info["dtype"])
    if dtype is None:
        raise InputError(
            f"{where}: unsupported dtype {info['dtype']!r} (jaxlm imports {sorted(DTYPES)})"
        )
    shape, offsets = info["shape"], info["data_offsets"]
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError(f"{where}: bad shape {shape!r}")
    if not (len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise InputError(f"{where}: bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise InputError(
            f"{where}: data_offsets {offsets} lie outside the {data_size} data bytes "
            "(truncated file?)"
        )
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise InputError(
            f"{where}: {end - begin} bytes do not hold shape {shape} of {info['dtype']}"
        )
    return TensorEntry(dtype, tuple(shape), data_start + begin, data_start + end)


class SafetensorsCheckpoint:
    """The tensors of a Hugging Face checkpoint directory, single file or sharded."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"no such checkpoint directory: {self.directory}")
        index = self.directory / INDEX_FILE
        if index.is_file():
            files = _read_index(index)
        elif (self.directory / SINGLE_FILE).is_file():
            files = {SINGLE_FILE: None}
        else:
            _refuse_non_safetensors(self.directory)
            files = {}
        self.files = {name: SafetensorsFile(self.directory / name) for name in files}
        self._where: dict[str, SafetensorsFile] = {}
        for file_name, file in self.files.items():
            wanted = files[file_name]
            for tensor_name in file.entries:
                if wanted is not None and tensor_name not in wanted:
                    continue  # the index assigns it to another shard
                if tensor_name in self._where:
                    raise InputError(
                        f"{file.path}: tensor {tensor_name!r} also stored in "
                        f"{self._where[tensor_name].path}"
                    )
                self._where[tensor_name] = file
            missing = (wanted or set()) - set(file.entries)
            if missing:
                raise InputError(
                    f"{index}: lists {sorted(missing)[:3]} in {file.path.name}, which lacks them"
                )

    def names(self) -> list[str]:
        return sorted(self._where)

    def entry(self, name: str) -> TensorEntry:
        return self._file(name).entries[name]

    def where(self, name: str) -> Path:
        return self._file(name).path

    def tensor(self, name: str) -> np.ndarray:
        return self._file(name).tensor(name)

    def _file(self, name: str) -> SafetensorsFile:
        file = self._where.get(name)
        if file is None:
            raise InputError(f"{self.directory}: the checkpoint has no tensor {name!r}")
        return file


def _read_index(index: Path) -> dict[str, set[str]]:
    """{shard file: the tensor names the index puts there}."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{index}: not valid JSON ({error})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InputError(f"{index}: needs a non-empty 'weight_map' object")
    files: dict[str, set[str]] = {}
    for tensor, file in weight_map.items():
        # Shard names are plain file names in the same directory: never a path out of it.
        where = f"{index}: weight_map[{tensor!r}]"
        path = contained_file(index.parent, file, where=where, what="shard file name")
        if not file.endswith(".safetensors"):
            raise InputError(f"{where} = {file!r} is not a shard file name")
        if not path.is_file():
            raise InputError(f"{index}: weight_map[{tensor!r}] names {file}, which is missing")
        files.setdefault(file, set()).add(tensor)
    return files


def _refuse_non_safetensors(directory: Path) -> None:
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(
        p.name for p in directory.glob("*.pt*")
    )
    if pickled:
        raise InputError(
            f"{directory}: holds only PyTorch pickle weights ({', '.join(pickled[:3])}); jaxlm "
            "imports safetensors only (pickle files can run code when loaded). Convert them "
            "where you trust the file, e.g. save_pretrained(..., safe_serialization=True)"
        )
    raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")


# ----------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class PendingTensor:
    """A tensor to write, produced only when its turn comes (one in memory at a time)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(
    tensors: Iterable[PendingTensor], max_shard_bytes: int
) -> list[list[PendingTensor]]:
    """Consecutive groups of at most `max_shard_bytes` (an oversized tensor stands alone)."""
    shards: list[list[PendingTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def write_checkpoint(
    directory: Path | str, tensors: list[PendingTensor], *, max_shard_bytes: int
) -> list[Path]:
    """model.safetensors, or model-0000i-of-0000n.safetensors shards plus the index."""
    directory = Path(directory)
    shards = plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        names = [SINGLE_FILE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards, strict=True):
        write_file(directory / name, shard)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for name, s in zip(names, shards, strict=True) for t in s},
        }
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [directory / name for name in names]


def write_file(path: Path, tensors: list[PendingTensor]) -> None:
    """One safetensors file; each tensor is produced, checked and written in turn."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        if np.dtype(t.dtype) not in _NAMES:
            raise ValueError(f"{t.name}: cannot write dtype {t.dtype}")
        header[t.name] = {
            "dtype": _NAMES[np.dtype(t.dtype)],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            array = np.ascontiguousarray(t.produce())
            if array.shape != tuple(t.shape) or array.dtype != np.dtype(t.dtype):
                raise ValueError(
                    f"{t.name}: produced {array.shape} {array.dtype}, planned {t.shape} {t.dtype}"
                )
            f.write(array.tobytes())
    partial.replace(path)
