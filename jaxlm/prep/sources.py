"""Input documents for cleaning: paths or globs of text files and JSON-lines files.

A text file is one document; its origin is the path. A jsonl line is one document,
`record[text_field]`; its origin is `path:line`. Documents are yielded one at a time
so a large corpus is never held in memory.

Bad input names where it is: a path that does not exist or a glob that matches
nothing (FileNotFoundError), a line that is not JSON or lacks a string `text_field`,
a file that is not UTF-8 (JsonlError / InputError with `file:line`). With a
`BadLineCounter` such lines and files are skipped and counted instead, and the run
still stops once too large a fraction is bad (a wrong file is not "cleaned" into
nothing).
"""

from __future__ import annotations

import dataclasses
import glob
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from jaxlm.data.jsonl import BadLineCounter, JsonlError
from jaxlm.errors import InputError

Format = Literal["auto", "text", "jsonl"]
FORMATS: tuple[str, ...] = ("auto", "text", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class Document:
    source: str  # "path:line" for a jsonl record, "path" for a text file
    text: str


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named by `patterns` (paths or globs, `**` recursing), in the order given.

    A glob's matches are sorted; a file named twice is read once, where first named.
    """
    if not patterns:
        raise InputError("no input given: name text or jsonl files (paths or globs)")
    files: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        if _GLOB_CHARS & set(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise FileNotFoundError(f"{pattern}: no files match this glob")
        else:
            path = Path(pattern)
            if path.is_dir():
                raise InputError(f"{path}: is a directory; name files or a glob like {path}/**/*")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            matches = [path]
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def file_format(path: Path, fmt: Format = "auto") -> Literal["text", "jsonl"]:
    """`fmt`, or for "auto" jsonl by suffix (.jsonl, .ndjson) and text otherwise."""
    if fmt == "auto":
        return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format {fmt!r}; choose one of {list(FORMATS)}")
    return fmt


def read_documents(
    files: Sequence[Path],
    *,
    text_field: str = "text",
    fmt: Format = "auto",
    bad_lines: BadLineCounter | None = None,
) -> Iterator[Document]:
    """Every document of `files` in order. `bad_lines` given: skip and count bad ones."""
    for path in files:
        if file_format(path, fmt) == "jsonl":
            yield from _jsonl_documents(path, text_field, bad_lines)
        else:
            document = _text_document(path, bad_lines)
            if document is not None:
                yield document


def _text_document(path: Path, bad_lines: BadLineCounter | None) -> Document | None:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        why = f"not valid UTF-8 (byte {e.start}: {e.reason})"
        if bad_lines is None:
            raise InputError(f"{path}: {why}") from None
        bad_lines.record(False, str(path), why)
        return None
    if bad_lines is not None:
        bad_lines.record(True, str(path))
    return Document(str(path), text)


def _jsonl_documents(
    path: Path, text_field: str, bad_lines: BadLineCounter | None
) -> Iterator[Document]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is not part of the first record
            where = f"{path}:{number}"
            text, why = _record_text(raw, text_field)
            if why:
                if bad_lines is None:
                    raise JsonlError(f"{where}: {why}")
                bad_lines.record(False, where, why)
                continue
            if bad_lines is not None:
                bad_lines.record(True, where)
            yield Document(where, text)


def _record_text(raw: bytes, text_field: str) -> tuple[str, str]:
    """(text, "") for a good line, ("", why) for a bad one."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as e:
        return "", f"not valid JSON ({e.msg} at column {e.colno})"
    except UnicodeDecodeError as e:
        return "", f"not valid UTF-8 (byte {e.start} of the line: {e.reason})"
    if not isinstance(record, dict):
        kind = type(record).__name__
        return "", f"expected a JSON object with a string field '{text_field}', got {kind}"
    if text_field not in record:
        keys = sorted(record)[:8]
        return "", f"no field '{text_field}' (keys: {keys}); set --text-field"
    if not isinstance(record[text_field], str):
        kind = type(record[text_field]).__name__
        return "", f"field '{text_field}' is {kind}, expected a string"
    return record[text_field], ""
