"""Random-access JSON-lines files with errors that name file:line.

`JsonlLines` indexes the byte offset of every non-blank line once (one sequential
pass, 8 bytes a line), so a Grain `MapDataset` can shuffle, shard and resume over
records without holding them in memory.

Bad lines: by default a line that is not valid JSON raises `JsonlError` naming
`file:line`. Records are read in shuffled order, so before raising the file is
re-read up to that line and the *first* bad line in file order is the one named.

With `on_error="skip"` such lines are skipped, counted in a `BadLineCounter` and
reported on stderr (the first few, each once). The run still aborts once the bad
lines exceed the share that `bad_line_allowance` grants (see there): about
`max_bad_fraction` of a large file, and a single bad line in a small one, so a wrong
file is not "trained" on by skipping all of it. The abort lists the first bad lines
in file order, each once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxlm.errors import InputError

OnError = Literal["raise", "skip"]
# A scan of a source's bad lines, in file order: ("file:line", why) pairs.
BadLineScan = Callable[[], Iterator[tuple[str, str]]]
# Bad lines printed as warnings (and listed in an abort) per counter.
SHOWN_BAD_LINES = 5


class JsonlError(InputError):
    """A malformed line (or too many of them); the message names the file and line."""


def bad_line_allowance(max_bad_fraction: float, lines: int) -> float:
    """How many of `lines` may be bad before skipping gives up: f*n + sqrt(f*n).

    The square-root term is the chance spread of a file whose true bad share is f:
    it lets 2 bad lines of 150 through at f = 1%, but no bad line of a file of
    fewer than 38 lines (a 4-line file with one bad line is 25% bad, not bad luck),
    and it is a rounding error on a large file (1.03% of 100,000 lines).
    """
    expected_bad = max_bad_fraction * lines
    return expected_bad + math.sqrt(expected_bad)


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


def parse_line(raw: bytes) -> tuple[Any, str]:
    """(record, "") for a line of valid JSON, (None, why) for one that is not."""
    try:
        return json.loads(raw), ""
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"not valid JSON ({getattr(e, 'msg', str(e))})"


@dataclasses.dataclass
class BadLineCounter:
    """Thread-safe tally of skipped lines (Grain reads with threads), and the cap on them.

    `expected`: the lines one pass over the source reads, when known. The cap is
    checked against the lines read so far, but never fewer than `min_lines` (or the
    whole source, when it is smaller): a large file is not given up on because of
    one bad line among the first few read, and a small one is judged as a whole.
    `finish()` checks a pass of unknown length at its end. `scans` list the bad lines
    of each file in file order, so that an abort names the first ones, not the ones a
    shuffled read happened to meet first.
    """

    max_bad_fraction: float = 0.01
    min_lines: int = 100
    expected: int | None = None
    warn: bool = True  # print the first skipped lines on stderr
    read: int = 0
    bad: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)  # distinct, first seen
    scans: list[BadLineScan] = dataclasses.field(default_factory=list, repr=False)
    # Where each bad line counted so far is (bounded: the cap aborts long before many).
    _seen_bad: set[str] = dataclasses.field(default_factory=set, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def expect(self, lines: int) -> None:
        """Adds `lines` to the length of one pass (one call per file or source)."""
        self.expected = (self.expected or 0) + lines

    def record(self, ok: bool, where: str, why: str = "") -> None:
        with self._lock:
            self.read += 1
            if ok or where in self._seen_bad:
                return  # a bad line read again (random access, a later epoch) counts once
            self._seen_bad.add(where)
            self.bad += 1
            self._note(where, why)
            floor = self.min_lines if self.expected is None else min(self.min_lines, self.expected)
            if self.bad > bad_line_allowance(self.max_bad_fraction, max(self.read, floor)):
                raise JsonlError(self._abort_message())

    def finish(self) -> None:
        """The cap on a whole pass whose length was not known while reading it."""
        with self._lock:
            if self.bad and self.bad > bad_line_allowance(self.max_bad_fraction, self.read):
                raise JsonlError(self._abort_message())

    def _note(self, where: str, why: str) -> None:
        example = f"{where}: {why}"
        if example in self.examples or len(self.examples) >= SHOWN_BAD_LINES:
            return
        self.examples.append(example)
        if self.warn:
            more = (
                " (further ones are counted, not shown)"
                if len(self.examples) == SHOWN_BAD_LINES
                else ""
            )
            print(f"jaxlm: warning: skipping {example}{more}", file=sys.stderr, flush=True)

    def _abort_message(self) -> str:
        listed = self._first_bad_lines()
        return (
            f"{self.bad} of {self.read} lines were malformed (more than "
            f"{self.max_bad_fraction:.1%}); the first in file order: " + "; ".join(listed)
        )

    def _first_bad_lines(self) -> list[str]:
        """The first bad lines in file order (from the scans), each once."""
        listed: list[str] = []
        for scan in self.scans:
            for where, why in scan():
                listed.append(f"{where}: {why}")
                if len(listed) == SHOWN_BAD_LINES:
                    return listed
        return listed or sorted(self.examples, key=_file_order)


def _file_order(example: str) -> tuple[str, int]:
    """("file", line) of a "file:line: why" example, to sort examples in file order."""
    where = example.split(": ", 1)[0]
    path, _, line = where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (where, 0)


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
        self.counter.scans.append(self.bad_lines)

    def __len__(self) -> int:
        return len(self._offsets)

    def where(self, index: int) -> str:
        return f"{self.path}:{int(self._numbers[index])}"

    def __getitem__(self, index: int) -> tuple[str, Any]:
        where = self.where(index)
        with self.path.open("rb") as f:
            f.seek(int(self._offsets[index]))
            raw = f.readline()
        record, why = parse_line(raw)
        if why:
            if self.on_error == "raise":
                raise JsonlError(": ".join(self.first_bad_line(index) or (where, why)))
            self.counter.record(False, where, why)
            return where, None
        self.counter.record(True, where)
        return where, record

    def bad_lines(
        self, check: Callable[[Any], str] | None = None, *, through: int | None = None
    ) -> Iterator[tuple[str, str]]:
        """("file:line", why) of every bad line in file order (through record `through`).

        A line is bad if it is not JSON or, with `check`, if `check(record)` returns a
        reason. One sequential read: this runs only on the way to an error.
        """
        last = int(self._numbers[through]) if through is not None else None
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if last is not None and number > last:
                    return
                if not raw.strip():
                    continue
                record, why = parse_line(raw)
                if not why and check is not None:
                    why = check(record)
                if why:
                    yield f"{self.path}:{number}", why

    def first_bad_line(
        self, index: int, check: Callable[[Any], str] | None = None
    ) -> tuple[str, str] | None:
        """The first bad line in file order up to record `index` (None if none is)."""
        return next(self.bad_lines(check, through=index), None)
