"""`jsonl:` sources: the document of a line is `record[text_field]`; errors name file:line."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from jaxlm.data.jsonl import BadLineCounter, JsonlLines
from jaxlm.data.sources.documents import ConcatDocuments
from jaxlm.data.sources.paths import matching_files, relative_names
from jaxlm.data.sources.record_checks import RecordChecks
from jaxlm.data.sources.split import record_keys


class JsonlTexts:
    """Record i of one jsonl file (its i-th non-blank line) as the text of `text_field`."""

    def __init__(self, path: Path, name: str, *, text_field: str, checks: RecordChecks):
        self.name = name
        self.text_field = text_field
        self.checks = checks
        # JsonlLines returns None for bad JSON; `checks` decides (raise, or count and
        # cap), so the lines' own tally never aborts or warns.
        self._lines = JsonlLines(path, on_error="skip", counter=_silent_tally())
        checks.scans.append(self.bad_lines)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> str | None:
        where, record = self._lines[index]
        why = "not valid JSON" if record is None else self._problem(record)
        if why:
            if not self.checks.skipping:  # records are read shuffled: name the first
                where, why = self._lines.first_bad_line(index, self._problem) or (where, why)
            self.checks.bad(where, why)
            return None
        text = record[self.text_field]
        self.checks.good(empty=not text)
        return text

    def bad_lines(self):
        """("file:line", why) of every bad line of the file, in file order."""
        return self._lines.bad_lines(self._problem)

    def _problem(self, record) -> str:
        """Why `record` has no text ("" when it has)."""
        field = self.text_field
        if isinstance(record, dict) and isinstance(record.get(field), str):
            return ""
        if not isinstance(record, dict):
            return f"expected a JSON object with a string field '{field}', got {_json_type(record)}"
        if field not in record:
            return f"no field '{field}' (fields: {sorted(record)})"
        return f"field '{field}' is {_json_type(record[field])}, not a string"

    def split_keys(self) -> np.ndarray:
        return record_keys(self.name, len(self))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_lines"] = copy.copy(self._lines)
        state["_lines"].counter = None  # holds a lock; rebuilt on the other side
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lines.counter = _silent_tally()


def _silent_tally() -> BadLineCounter:
    return BadLineCounter(max_bad_fraction=1.0, warn=False)


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", bool: "a boolean", str: "a string"}.get(
        type(value), "a number"
    )


def open_jsonl(pattern: str, *, text_field: str, checks: RecordChecks) -> ConcatDocuments:
    files = matching_files(pattern)
    names = relative_names(files, pattern)
    return ConcatDocuments(
        [
            JsonlTexts(path, name, text_field=text_field, checks=checks)
            for path, name in zip(files, names, strict=True)
        ]
    )
