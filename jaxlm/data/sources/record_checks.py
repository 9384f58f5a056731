"""What happens to a record that cannot be used, and the counts every source keeps.

`on_error="raise"` (the default) stops at the first bad record with an InputError
naming where it is (file:line, file + record or row). `on_error="skip"` returns None
for it instead (Grain drops None elements), counts it and prints the first few on
stderr, but still aborts once the bad records exceed what
`jaxlm.data.jsonl.bad_line_allowance` grants (about `max_bad_fraction`, and none
at all in a small source): a wrong `text_field` must not silently train on nothing.

Counter names (in the DataCounters passed to open_source):

    records             records read (each access; a repeated epoch counts again)
    malformed_records   records skipped as unusable (skip mode only)
    empty_records       texts that are empty (parquet nulls included)
"""

from __future__ import annotations

from typing import Literal

from jaxlm.data.counters import DataCounters
from jaxlm.data.jsonl import BadLineCounter, BadLineScan
from jaxlm.errors import InputError

OnError = Literal["raise", "skip"]


class RecordChecks:
    """Shared by all files of one source: the error policy, the counters, the bad-record cap."""

    def __init__(
        self,
        on_error: OnError = "raise",
        counters: DataCounters | None = None,
        *,
        max_bad_fraction: float = 0.01,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.counters = counters if counters is not None else DataCounters()
        self.max_bad_fraction = max_bad_fraction
        self.expected: int | None = None
        self.scans: list[BadLineScan] = []
        self._bad_cap = self._new_cap()

    def _new_cap(self) -> BadLineCounter:
        return BadLineCounter(
            max_bad_fraction=self.max_bad_fraction, expected=self.expected, scans=self.scans
        )

    def expect(self, records: int) -> None:
        """The records one pass over the source reads (the cap judges small sources whole)."""
        self.expected = records
        self._bad_cap.expected = records

    @property
    def skipping(self) -> bool:
        return self.on_error == "skip"

    def good(self, *, empty: bool = False) -> None:
        self.counters.add("records")
        if empty:
            self.counters.add("empty_records")
        if self.skipping:
            self._bad_cap.record(True, "")

    def bad(self, where: str, why: str) -> None:
        """Raises InputError("where: why"), or counts the record as skipped (skip mode)."""
        if not self.skipping:
            raise InputError(f"{where}: {why}")
        self.counters.add("records")
        self.counters.add("malformed_records")
        self._bad_cap.record(False, where, why)

    def __getstate__(self) -> dict:
        # The cap holds a lock, which cannot be pickled; a worker process starts its own.
        # The counters are a DataCounters, which pickles to a fresh zeroed copy by design.
        state = dict(self.__dict__)
        del state["_bad_cap"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bad_cap = self._new_cap()
