"""One data source (`kind:pattern`) to a random-access Grain MapDataset of documents.

    open_source(spec, ...) -> grain.MapDataset     what pipelines use
    open_documents(spec, ...) -> DocumentSource    the same documents, plus split_keys()

Elements: a `str` per document for text kinds, an int32 array [BOS, ..., EOS] for
`tokens`, None for a record skipped in skip mode (Grain drops None). The dataset
supports len() and indexing, so it can be shuffled, sliced per process and
checkpointed by index, and it pickles without open files (each process opens lazily).
"""

from __future__ import annotations

from jaxlm.data.counters import DataCounters
from jaxlm.data.sources.arrayrecord_texts import open_arrayrecord
from jaxlm.data.sources.documents import DocumentSource, SelectedDocuments
from jaxlm.data.sources.jsonl_texts import open_jsonl
from jaxlm.data.sources.parquet_texts import open_parquet
from jaxlm.data.sources.record_checks import OnError, RecordChecks
from jaxlm.data.sources.split import check_split, kept_indices
from jaxlm.data.sources.text_files import open_stdlib, open_text_files
from jaxlm.data.sources.token_shards import open_token_shards
from jaxlm.errors import InputError
from jaxlm.source_spec import SourceSpec


def open_source(
    spec: SourceSpec,
    *,
    text_field: str = "text",
    on_error: OnError = "raise",
    counters: DataCounters | None = None,
    tokenizer_sha256: str | None = None,
    split: str = "all",
    val_fraction: float = 0.02,
):
    """The documents of `spec` in `split` as a `grain.MapDataset` (see the module doc).

    `text_field` names the jsonl field / parquet column; `tokenizer_sha256`, when given,
    must match the tokenizer a `tokens` source was written with. Counts go to
    `counters` (names in record_checks.py). Globs matching nothing raise
    FileNotFoundError naming the pattern; an empty split raises InputError.
    """
    # Grain imports JAX (~0.7 s); tokenizer tools open documents without either.
    import grain

    documents = open_documents(
        spec,
        text_field=text_field,
        on_error=on_error,
        counters=counters,
        tokenizer_sha256=tokenizer_sha256,
        split=split,
        val_fraction=val_fraction,
    )
    return grain.MapDataset.source(documents)


def open_documents(
    spec: SourceSpec,
    *,
    text_field: str = "text",
    on_error: OnError = "raise",
    counters: DataCounters | None = None,
    tokenizer_sha256: str | None = None,
    split: str = "all",
    val_fraction: float = 0.02,
) -> DocumentSource:
    """Like `open_source`, as a plain random-access DocumentSource."""
    check_split(split, val_fraction)
    checks = RecordChecks(on_error, counters)
    if spec.kind == "stdlib":  # split by file, as jaxlm.data.corpus.stdlib_files does
        return open_stdlib(split, val_fraction, checks)
    documents = _open_all(spec, text_field, checks, tokenizer_sha256)
    indices = kept_indices(documents.split_keys(), split, val_fraction)
    checks.expect(len(documents) if indices is None else len(indices))
    if indices is None:
        return documents
    if not len(indices):
        raise InputError(
            f"{spec}: the {split!r} split is empty ({len(documents)} documents, "
            f"val_fraction={val_fraction})"
        )
    return SelectedDocuments(documents, indices)


def _open_all(spec: SourceSpec, text_field: str, checks: RecordChecks, tokenizer_sha256):
    if spec.kind == "text":
        return open_text_files(spec.pattern, checks)
    if spec.kind == "jsonl":
        return open_jsonl(spec.pattern, text_field=text_field, checks=checks)
    if spec.kind == "parquet":
        return open_parquet(spec.pattern, text_field=text_field, checks=checks)
    if spec.kind == "arrayrecord":
        return open_arrayrecord(spec.pattern, checks=checks)
    if spec.kind == "tokens":
        return open_token_shards(spec.pattern, tokenizer_sha256=tokenizer_sha256, checks=checks)
    raise InputError(f"{spec}: unknown source kind {spec.kind!r}")
