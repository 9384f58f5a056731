"""`parquet:` sources: the document of row i is its `text_field` column value.

Parquet is read by row group, so random access decodes the whole group holding a row
(only the text column) and keeps the last few decoded groups in a small LRU cache.
In file order that is one decode per group; in a shuffled order over many large
groups it is close to one decode per row, so for long shuffled training convert
parquet once with `jaxlm data tokenize` (which reads in order) and train on `tokens:`.

A null value is an empty document (counted as empty, returned as ""). A column that
is missing or not text (string, or binary holding UTF-8) is refused when the file is
opened; a binary value that is not UTF-8 is a bad record named by file, row (0-based,
as pyarrow numbers them) and column.
"""

from __future__ import annotations

import bisect
import collections
import threading
from pathlib import Path

import numpy as np

from jaxlm.data.sources.documents import ConcatDocuments
from jaxlm.data.sources.paths import matching_files, relative_names
from jaxlm.data.sources.record_checks import RecordChecks
from jaxlm.data.sources.split import record_keys
from jaxlm.errors import InputError

# Decoded row groups kept per file; a group is typically 10k-1M rows of one column.
CACHED_ROW_GROUPS = 4


class ParquetTexts:
    """Row i of one parquet file as the text in column `column`."""

    def __init__(self, path: Path, name: str, *, column: str, checks: RecordChecks):
        import pyarrow.parquet as pq  # pyarrow loads only for parquet sources

        self.path = str(path)
        self.name = name
        self.column = column
        self.checks = checks
        try:
            with pq.ParquetFile(self.path) as parquet:
                self._binary = _text_column_is_binary(parquet.schema_arrow, self.path, column)
                metadata = parquet.metadata
                sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        except InputError:
            raise
        except Exception as error:  # pyarrow raises its own types for unreadable files
            raise InputError(f"{self.path}: not a readable parquet file ({error})") from error
        self._group_ends = np.cumsum(sizes, dtype=np.int64).tolist()
        self._open_state()

    def _open_state(self) -> None:
        # Per process, never pickled: the open file, the cache and the lock guarding them
        # (Grain reads with several threads; a ParquetFile is not safe to share).
        self._file = None
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._group_ends[-1] if self._group_ends else 0

    def __getitem__(self, index: int) -> str | None:
        group = bisect.bisect_right(self._group_ends, index)
        start = self._group_ends[group - 1] if group else 0
        value = self._row_group(group)[index - start].as_py()
        if value is None:
            self.checks.good(empty=True)
            return ""
        if self._binary:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as error:
                where = f"{self.path}: row {index}, column '{self.column}'"
                self.checks.bad(where, f"not valid UTF-8 (byte {error.start}: {error.reason})")
                return None
        self.checks.good(empty=not value)
        return value

    def _row_group(self, group: int):
        with self._lock:
            column = self._cache.get(group)
            if column is not None:
                self._cache.move_to_end(group)
                return column
            if self._file is None:
                import pyarrow.parquet as pq  # pyarrow loads only for parquet sources

                self._file = pq.ParquetFile(self.path)
            column = self._file.read_row_group(group, columns=[self.column]).column(0)
            self._cache[group] = column
            if len(self._cache) > CACHED_ROW_GROUPS:
                self._cache.popitem(last=False)
            return column

    def split_keys(self) -> np.ndarray:
        return record_keys(self.name, len(self))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for transient in ("_file", "_cache", "_lock"):
            del state[transient]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open_state()


def _text_column_is_binary(schema, path: str, column: str) -> bool:
    """Checks that `column` holds text; True when it is binary (to be decoded as UTF-8)."""
    import pyarrow as pa  # pyarrow loads only for parquet sources

    if schema.get_field_index(column) < 0:
        raise InputError(f"{path}: no column '{column}' (columns: {schema.names})")
    kind = schema.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_null(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return False
    if pa.types.is_string_view(kind):
        return False
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return True
    raise InputError(
        f"{path}: column '{column}' has type {kind} in every row (from row 0), "
        "expected a string column"
    )


def open_parquet(pattern: str, *, text_field: str, checks: RecordChecks) -> ConcatDocuments:
    files = matching_files(pattern)
    names = relative_names(files, pattern)
    return ConcatDocuments(
        [
            ParquetTexts(path, name, column=text_field, checks=checks)
            for path, name in zip(files, names, strict=True)
        ]
    )
