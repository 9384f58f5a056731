"""The text that `jaxlm tokenizer train|eval|extend` read, named on the command line.

Each input is a data source as configs write them (jaxlm.source_spec):

    stdlib              the embedded corpus
    text:GLOB           text files, one document per file
    jsonl:GLOB          JSON lines, the document is record[--text-field]
    parquet:GLOB        parquet rows, the document is column --text-field
    arrayrecord:GLOB    one UTF-8 document per record

and a bare path or glob is read by its suffix: `.jsonl` as jsonl, `.parquet` as
parquet, anything else as text. Every input is opened before any is read, so a
missing file fails at once, naming the pattern, not after minutes of training.

Split "auto" (the default) reads the whole of every file given, but only one side of
the stdlib: its training files when training a tokenizer, its held-out files when
evaluating one, so an evaluation on `stdlib` never scores text the tokenizer was
trained on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from jaxlm.data.sources import open_documents
from jaxlm.errors import InputError
from jaxlm.source_spec import SOURCE_KINDS, SourceSpec

SPLIT_CHOICES = ("auto", "all", "train", "validation")
_SUFFIX_KINDS = {".jsonl": "jsonl", ".parquet": "parquet"}


def parse_input(text: str) -> SourceSpec:
    """`kind:pattern`, `stdlib`, or a bare path/glob whose kind follows from its suffix."""
    kind, sep, pattern = text.partition(":")
    if text == "stdlib":
        return SourceSpec("stdlib")
    if sep and kind in SOURCE_KINDS:
        if kind == "tokens":
            raise InputError(f"input {text!r}: a tokenizer reads text, not pre-tokenized shards")
        if kind == "stdlib" or not pattern:
            raise InputError(f"input {text!r}: write 'stdlib' alone, or '{kind}:PATH'")
        return SourceSpec(kind, pattern)
    suffix = next((s for s in _SUFFIX_KINDS if text.endswith(s)), None)
    return SourceSpec(_SUFFIX_KINDS.get(suffix, "text"), text)


def open_inputs(
    inputs: Sequence[str],
    *,
    text_field: str = "text",
    split: str = "auto",
    stdlib_split: str = "train",
    val_fraction: float = 0.02,
) -> list[tuple[SourceSpec, object]]:
    """(spec, random-access documents) of every input, all opened up front."""

    if split not in SPLIT_CHOICES:
        raise InputError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    if not inputs:
        raise InputError("no input given (e.g. 'stdlib', 'corpus/*.txt' or 'data.jsonl')")
    opened = []
    for text in inputs:
        spec = parse_input(text)
        spec_split = split
        if split == "auto":
            spec_split = stdlib_split if spec.kind == "stdlib" else "all"
        documents = open_documents(
            spec, text_field=text_field, split=spec_split, val_fraction=val_fraction
        )
        opened.append((spec, documents))
    return opened


def iter_texts(opened: Sequence[tuple[SourceSpec, object]]) -> Iterator[str]:
    """Every document of every input, in order (inputs in the order given)."""
    for _, documents in opened:
        for index in range(len(documents)):
            text = documents[index]
            if text:  # None is a record skipped as malformed; "" has nothing to learn
                yield text


def read_texts(opened: Sequence[tuple[SourceSpec, object]], max_chars: int) -> list[str]:
    """Documents until `max_chars` characters in all (the last one cut to fit)."""
    texts, remaining = [], max_chars
    for text in iter_texts(opened):
        if remaining <= 0:
            break
        texts.append(text[:remaining])
        remaining -= len(texts[-1])
    return texts
