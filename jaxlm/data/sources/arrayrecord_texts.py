"""`arrayrecord:` sources: every record of an ArrayRecord file is one UTF-8 document.

Reading goes through Grain's ArrayRecordDataSource, which opens its reader lazily and
drops it when pickled, so the source travels to worker processes as names and counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlm.data.sources.documents import ConcatDocuments
from jaxlm.data.sources.paths import matching_files, relative_names
from jaxlm.data.sources.record_checks import RecordChecks
from jaxlm.data.sources.split import record_keys
from jaxlm.errors import InputError


class ArrayRecordTexts:
    """Record i of one ArrayRecord file, decoded as UTF-8."""

    def __init__(self, path: Path, name: str, *, checks: RecordChecks):
        # Grain (and with it JAX) loads only when an ArrayRecord source is opened.
        from grain.sources import ArrayRecordDataSource

        self.path = str(path)
        self.name = name
        self.checks = checks
        try:  # reads the file's footer to count its records
            self._records = ArrayRecordDataSource(self.path)
        except (RuntimeError, ValueError) as error:
            raise InputError(f"{self.path}: not a readable ArrayRecord file ({error})") from error

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> str | None:
        data = self._records[index]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            where = f"{self.path}: record {index}"
            self.checks.bad(where, f"not valid UTF-8 (byte {error.start}: {error.reason})")
            return None
        self.checks.good(empty=not text)
        return text

    def split_keys(self) -> np.ndarray:
        return record_keys(self.name, len(self))


def open_arrayrecord(pattern: str, *, checks: RecordChecks) -> ConcatDocuments:
    files = matching_files(pattern)
    names = relative_names(files, pattern)
    return ConcatDocuments(
        [
            ArrayRecordTexts(path, name, checks=checks)
            for path, name in zip(files, names, strict=True)
        ]
    )
