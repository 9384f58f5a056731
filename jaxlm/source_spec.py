"""The text form of data sources, as written in configs and on the command line.

    SOURCES := SOURCE ("," SOURCE)*
    SOURCE  := KIND [":" PATTERN] ["@" WEIGHT]

    stdlib                        the embedded corpus (the interpreter's stdlib source)
    text:corpus/**/*.txt          text files, one document per file (glob, ** recurses)
    jsonl:data/pretrain.jsonl     JSON lines; the document is record[data.text_field]
    parquet:data/*.parquet        parquet rows; the document is column data.text_field
    arrayrecord:data/*.array_record   ArrayRecord files, one UTF-8 document per record
    tokens:shards/wiki            pre-tokenized shards written by `jaxlm data tokenize`

Weights are relative shares of documents drawn from each source (default 1), e.g.
`jsonl:web.jsonl@3,stdlib@1` draws three web documents for every stdlib file. This
module only parses; it imports nothing heavy, so configs can validate early. It sits at
the package root, beside config, because `DataConfig` checks its sources with it; the
readers behind each kind are in jaxlm.data.sources.
"""

from __future__ import annotations

import dataclasses

from jaxlm.errors import InputError

SOURCE_KINDS = ("stdlib", "text", "jsonl", "parquet", "arrayrecord", "tokens")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str
    pattern: str = ""
    weight: float = 1.0

    def __str__(self) -> str:
        text = f"{self.kind}:{self.pattern}" if self.pattern else self.kind
        return text if self.weight == 1.0 else f"{text}@{self.weight:g}"


def parse_sources(text: str, *, key: str = "data.sources") -> list[SourceSpec]:
    """Parses a comma-separated list of sources; errors name `key` and the bad part."""
    specs = [parse_source(part.strip(), key=key) for part in text.split(",") if part.strip()]
    if not specs:
        raise InputError(f"{key}: no data source given (e.g. 'stdlib' or 'jsonl:data.jsonl')")
    return specs


def has_weights(text: str) -> bool:
    """Whether any source of `text` has a weight written (`@W`, even `@1`).

    Chat and preference sources without weights are one pool of records, as before
    mixtures existed (jaxlm.data.posttrain_inputs); written weights make a mixture.
    A pattern cannot itself hold "@": parse_source reads everything after it as the
    weight.
    """
    return any("@" in part for part in text.split(","))


def parse_source(text: str, *, key: str = "data.sources") -> SourceSpec:
    body, at, weight_text = text.rpartition("@") if "@" in text else (text, "", "")
    weight = 1.0
    if at:
        try:
            weight = float(weight_text)
        except ValueError:
            raise InputError(f"{key}: weight {weight_text!r} in {text!r} is not a number") from None
        if not weight > 0:
            raise InputError(f"{key}: weight in {text!r} must be positive")
    kind, _, pattern = body.partition(":")
    kind = kind.strip()
    if kind not in SOURCE_KINDS:
        raise InputError(f"{key}: unknown source kind {kind!r} in {text!r}; kinds: {SOURCE_KINDS}")
    if kind == "stdlib" and pattern:
        raise InputError(f"{key}: 'stdlib' takes no path (got {text!r})")
    if kind != "stdlib" and not pattern.strip():
        raise InputError(f"{key}: {kind!r} needs a path, e.g. '{kind}:path/to/data'")
    return SourceSpec(kind, pattern.strip(), weight)
