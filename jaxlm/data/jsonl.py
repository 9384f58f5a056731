"""Random-access JSON-lines files with errors that name file:line.

`JsonlLines` indexes the byte offset of every non-blank line once (one sequential
pass, 8 bytes a line), so a Grain `MapDataset` can shuffle, shard and resume over
records without holding them in memory.

Bad lines: by default a line that is not valid JSON raises `JsonlError` naming
`file:line`. With `on_error="skip"` such lines are skipped and counted in a
`BadLineCounter`, and the run aborts once more than `max_bad_fraction` of the lines
read so far (after the first 100) were bad, so a wrong file is not "trained" on by
skipping all of it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxlm.errors import InputError

OnError = Literal["raise", "skip"]


class JsonlError(InputError):
    """A malformed line (or too many of them); the message names the file and line."""


def line_offsets(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and 1-based line numbers of the non-blank lines of `path`."""
    offsets, numbers = [], []
    position = 0
    with Path(path).open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                offsets.append(position)
                numbers.append(number)
            position += len(raw)
    return np.asarray(offsets, np.int64), np.asarray(numbers, np.int64)


@dataclasses.dataclass
class BadLineCounter:
    """Thread-safe tally of skipped lines (Grain reads with threads)."""

    max_bad_fraction: float = 0.01
    min_lines: int = 100
    read: int = 0
    bad: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def record(self, ok: bool, where: str, why: str = "") -> None:
        with self._lock:
            self.read += 1
            if ok:
                return
            self.bad += 1
            if len(self.examples) < 5:
                self.examples.append(f"{where}: {why}")
            if self.read >= self.min_lines and self.bad > self.max_bad_fraction * self.read:
                raise JsonlError(
                    f"{self.bad} of {self.read} lines were malformed (more than "
                    f"{self.max_bad_fraction:.1%}); first: {self.examples}"
                )


class JsonlLines:
    """Grain-compatible random-access source: record i is the i-th non-blank line.

    `self[i]` returns `(where, record)` with `where = "file:line"`, or `(where, None)`
    for a malformed line in skip mode.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        on_error: OnError = "raise",
        counter: BadLineCounter | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.counter = counter if counter is not None else BadLineCounter()
        self._offsets, self._numbers = line_offsets(self.path)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> tuple[str, Any]:
        where = f"{self.path}:{int(self._numbers[index])}"
        with self.path.open("rb") as f:
            f.seek(int(self._offsets[index]))
            raw = f.readline()
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            why = getattr(e, "msg", str(e))
            if self.on_error == "raise":
                raise JsonlError(f"{where}: not valid JSON ({why})") from None
            self.counter.record(False, where, why)
            return where, None
        self.counter.record(True, where)
        return where, record


def record_stream(
    files,
    *,
    seed: int,
    shuffle: bool,
    repeat: bool,
    process_index: int,
    process_count: int,
    on_error: OnError = "raise",
    bad_lines: BadLineCounter | None = None,
    split: str = "all",
    val_fraction: float = 0.1,
    names: list[str] | None = None,
):
    """`(where, record)` of every line of `files`: seeded shuffle, this process's shard,
    repeated per epoch. The shared head of the SFT and preference pipelines.

    `split` "train" / "validation" keeps the lines whose stable key (the file's name in
    `names`, default its file name, mixed with the line's record index; see
    jaxlm.data.sources.split) falls on that side of `val_fraction`: the same held-out
    lines in every run, whatever the seed or process count."""
    if not files:
        raise ValueError("a jsonl pipeline needs at least one file, got none")
    bad_lines = bad_lines if bad_lines is not None else BadLineCounter()
    import grain  # here, not at the top: JsonlError users (data clean) need no grain/JAX

    from jaxlm.data.sources.documents import SelectedDocuments
    from jaxlm.data.sources.split import kept_indices, record_keys

    names = names or [Path(f).name for f in files]
    parts = []
    for f, name in zip(files, names, strict=True):
        lines = JsonlLines(f, on_error=on_error, counter=bad_lines)
        if split != "all":
            keep = kept_indices(record_keys(name, len(lines)), split, val_fraction)
            lines = SelectedDocuments(lines, keep)
        parts.append(grain.MapDataset.source(lines))
    lines = grain.MapDataset.concatenate(parts)
    if shuffle:
        lines = lines.shuffle(seed)
    lines = lines[process_index::process_count]
    return lines.repeat(None) if repeat else lines
