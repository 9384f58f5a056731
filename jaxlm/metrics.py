"""Run metrics: one JSON line per record plus TensorBoard events, and compression baselines.

Each record is `{"step": n, "split": "train"|"eval"|..., <name>: <number>, ...}` in
`<workdir>/metrics.jsonl`; the same scalars go to TensorBoard event files under
`<workdir>/tensorboard/` as `<split>/<name>`. Only process 0 writes.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _set_aside_torn_line(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.tensorboard_dir), flush_secs=10)

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        record.update({k: _to_json_number(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file; errors name the file and line."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def bits_per_byte(nats: float, num_bytes: float) -> float:
    return nats / math.log(2) / num_bytes if num_bytes else float("nan")


def gzip_bits_per_byte(texts: Iterable[str]) -> tuple[float, int]:
    """gzip -9 size of the UTF-8 concatenation, in bits per input byte, and the byte count."""
    raw = b"".join(t.encode("utf-8") for t in texts)
    if not raw:
        return float("nan"), 0
    return 8 * len(gzip.compress(raw, compresslevel=9)) / len(raw), len(raw)
