"""Run metrics: one JSON line per record plus TensorBoard events, and compression baselines.

Each record is `{"step": n, "split": "train"|"eval"|..., <name>: <number>, ...}` in
`<workdir>/metrics.jsonl`; the same scalars go to TensorBoard event files under
`<workdir>/tensorboard/` as `<split>/<name>`. Only process 0 writes. The file is read
back by jaxlm.analysis.metrics_file, its one parser.

Both files are written synchronously, unbuffered, one record per write call. A
background writer (tensorboardX's SummaryWriter) dies on a full disk and leaves the
loop blocked forever on its full queue, deaf to signals; here a failed write raises
StorageError at once, naming the file and the OS error, and no buffered bytes are
left for a later flush to fail on. A record cut short by a full disk or a kill is set
aside as a torn line when the file is next opened.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import math
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxlm.errors import StorageError


class MetricsWriter:
    """Append-only JSONL + TensorBoard writer; a no-op on processes other than 0."""

    def __init__(self, workdir: Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tensorboard_dir = Path(workdir) / "tensorboard"
        self._file = None
        self._tb = None
        if not enabled:
            return
        with _storage_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _set_aside_torn_line(self.path)
            self._file = self.path.open("ab", buffering=0)
        if tensorboard:
            self._tb = _EventFile(self.tensorboard_dir)

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _to_json_number(v) for k, v in values.items()})
        with _storage_errors(self.path):
            _write_all(self._file, (json.dumps(record) + "\n").encode("utf-8"))
        if self._tb is not None:
            scalars = {
                f"{split}/{name}": value
                for name, value in values.items()
                if isinstance(value, int | float) and math.isfinite(value)
            }
            self._tb.write(int(step), scalars)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class _EventFile:
    """A TensorBoard event file (`events.out.tfevents.<time>.<host>`), written in
    TFRecord framing: length, its masked CRC32C, the Event proto, its masked CRC32C."""

    def __init__(self, directory: Path):
        self.path = directory / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        with _storage_errors(self.path):
            directory.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab", buffering=0)
        # tensorboardX imports torch when it is installed (seconds): only the process
        # that writes events loads it, and only once it writes.
        from tensorboardX.proto import event_pb2

        self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not scalars:
            return
        # tensorboardX loads on first use (see __init__)
        from tensorboardX.proto import event_pb2, summary_pb2
        from tensorboardX.summary import scalar

        values = [scalar(name, value).value[0] for name, value in scalars.items()]
        summary = summary_pb2.Summary(value=values)
        self._write_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _write_event(self, event) -> None:
        from tensorboardX.record_writer import masked_crc32c  # on first use (see __init__)

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        framed = header + struct.pack("<I", masked_crc32c(header))
        framed += data + struct.pack("<I", masked_crc32c(data))
        with _storage_errors(self.path):
            _write_all(self._file, framed)

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def _storage_errors(path: Path):
    """Turns an OSError while writing `path` into a one-line StorageError."""
    try:
        yield
    except OSError as error:
        raise StorageError(
            f"cannot write the run's metrics to {path}: {type(error).__name__}: {error}. "
            "Make room or make the directory writable, then run the same command again to "
            "resume from the last checkpoint"
        ) from error


def _write_all(file, data: bytes) -> None:
    """An unbuffered write may take part of the bytes (a disk that just filled up)."""
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def _set_aside_torn_line(path: Path) -> None:
    """A process killed mid-write leaves a last line without its newline; records
    appended after it would be glued to it. Move that fragment to `<path>.torn`."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        with path.with_name(path.name + ".torn").open("ab") as torn:
            torn.write(data[cut:] + b"\n")
        f.truncate(cut)


def _to_json_number(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity; keep it visible rather than dropping it
    return value


def bits_per_byte(nats: float, num_bytes: float) -> float:
    return nats / math.log(2) / num_bytes if num_bytes else float("nan")


def stronger_compressors_bits_per_byte(texts: Iterable[str]) -> dict[str, float]:
    """bz2 -9 and xz -9e (LZMA2, preset 9 extreme) sizes of the UTF-8 concatenation in
    bits per input byte: the baselines a language model should beat after gzip's."""
    raw = b"".join(t.encode("utf-8") for t in texts)
    if not raw:
        return {}
    xz = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    return {
        "bz2_bits_per_byte": 8 * len(bz2.compress(raw, compresslevel=9)) / len(raw),
        "xz_bits_per_byte": 8 * len(xz) / len(raw),
    }


def gzip_bits_per_byte(texts: Iterable[str]) -> tuple[float, int]:
    """gzip -9 size of the UTF-8 concatenation, in bits per input byte, and the byte count."""
    raw = b"".join(t.encode("utf-8") for t in texts)
    if not raw:
        return float("nan"), 0
    return 8 * len(gzip.compress(raw, compresslevel=9)) / len(raw), len(raw)
