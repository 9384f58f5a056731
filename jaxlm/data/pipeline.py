"""The pretraining input pipeline: document sources to packed per-process batches.

    per source (MapDataset of documents):
        seeded shuffle (new order each epoch) -> this process's shard -> repeat
        -> tokenize (text -> [BOS] + ids + [EOS]; empty documents dropped and counted)
    mix sources by weight (training) or concatenate them (evaluation)
    -> IterDataset (reader threads) -> split long documents -> window-shuffle pieces
    -> pack -> batch (+ targets, loss_mask, counts) -> optional worker processes

A source is a Grain MapDataset whose elements are documents: a `str` of text, an
int32 array of tokens that already holds BOS/EOS (pre-tokenized shards), or None (a
record skipped in skip mode). `jaxlm.data.sources.open_source` makes one from a spec
such as `jsonl:data/*.jsonl`; `dataset_from_specs` does that for a whole mixture.

Everything is numpy and deterministic for a given seed; iterators are checkpointable
(`get_state()` / `set_state()`, JSON-compatible state), also across worker processes.
See jaxlm.data.packing for the batch schema and jaxlm.data.counters for the counts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from jaxlm.data.corpus import read_text
from jaxlm.data.counters import COUNTS_KEY, DataCounters
from jaxlm.data.packing import (
    PACKERS,
    PackerName,
    TextEncoder,
    document_tokens,
    packed_batches,
    real_token_fraction,
)
from jaxlm.data.seeds import source_seed
from jaxlm.data.sources import open_source
from jaxlm.data.sources.documents import is_blank_text
from jaxlm.data.usable import RequireUsable, any_usable
from jaxlm.errors import InputError
from jaxlm.source_spec import parse_sources

__all__ = [
    "dataset_from_specs",
    "document_stream",
    "mixture_dataset",
    "pretrain_dataset",
    "real_token_fraction",
    "text_files_source",
]

# Tokenized documents read ahead per process; a few hundred KB of token ids.
_READ_AHEAD_DOCUMENTS = 64


def mixture_dataset(
    sources: Sequence[grain.MapDataset],
    tokenizer: TextEncoder,
    *,
    seq_len: int,
    batch_size: int,
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    packer: PackerName = "first_fit",
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 1,
    num_packing_bins: int | None = None,
    shuffle_window: int = 16384,
    workers: int = 0,
    counters: DataCounters | None = None,
) -> grain.IterDataset:
    """Packed batches for this process (`batch_size` rows each) from weighted sources.

    With `repeat=True` the stream is endless, every source is reshuffled each epoch,
    and each next document comes from source i with probability weights[i] / sum
    (deterministic interleaving). With `repeat=False` (evaluation) the sources are
    concatenated and every document is read exactly once; a short last batch is
    filled with all-padding rows. Processes read disjoint shards of every source:
    process i takes documents i, i + n, i + 2n, ... of each epoch's order.

    `num_threads` reader threads read and tokenize ahead (0 reads inline); `workers`
    > 0 runs the whole pipeline in that many processes (Grain multiprocess prefetch).
    `num_packing_bins` rows are packed together by first_fit / best_fit (default
    `batch_size`). With `shuffle`, pieces of documents are also shuffled within
    windows of `shuffle_window` pieces, so a batch does not hold consecutive slices
    of one long document. Counts (documents, empty documents, ...) ride in each batch
    under `COUNTS_KEY`; see jaxlm.data.counters.
    """
    names = list(names) if names is not None else [f"source {i}" for i in range(len(sources))]
    _check_arguments(sources, names, weights, seq_len, batch_size, packer, process_index,
                     process_count, num_threads, workers)  # fmt: skip
    counters = counters if counters is not None else DataCounters()
    to_document = TokenizeDocument(tokenizer, counters)
    streams = [
        document_stream(
            source,
            seed=source_seed(seed, index),
            shuffle=shuffle,
            repeat=repeat,
            process_index=process_index,
            process_count=process_count,
        ).map(
            _require_documents(source, name, to_document, process_index, process_count)
            if repeat
            else to_document
        )
        for index, (source, name) in enumerate(zip(sources, names, strict=True))
    ]
    if len(streams) == 1:
        documents = streams[0]
    elif repeat:
        documents = grain.MapDataset.mix(streams, list(weights or [1.0] * len(streams)))
    else:  # evaluation reads every document once, whatever the weights
        documents = grain.MapDataset.concatenate(streams)
    documents = documents.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=_READ_AHEAD_DOCUMENTS)
    )
    batches = packed_batches(
        documents,
        seq_len=seq_len,
        batch_size=batch_size,
        packer=packer,
        pad_id=tokenizer.pad_id,
        num_packing_bins=num_packing_bins,
        seed=seed,
        shuffle_bins=shuffle,
        shuffle_window=shuffle_window if shuffle else 0,
    )
    batches = batches.map(AttachCounts(counters))
    return in_worker_processes(batches, workers) if workers else batches


def document_stream(
    source: grain.MapDataset,
    *,
    seed: int,
    shuffle: bool,
    repeat: bool,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """Stage: the documents this process reads, in order: shuffled, sharded, repeated."""
    if shuffle:
        source = source.shuffle(seed)
    source = source[process_index::process_count]
    # Repeat after shuffle and shard: the repeat carries the epoch into the shuffle, so
    # every epoch is a new permutation, split disjointly between processes.
    return source.repeat(None) if repeat else source


def _require_documents(source, name, to_document, process_index, process_count):
    """`to_document` that ends an endless stream with nothing to train on in an error."""
    return RequireUsable(
        to_document,
        patience=len(range(process_index, len(source), process_count)),
        has_usable=functools.partial(any_usable, source, _usable_document),
        message=f"{name}: no document has text to train on (every one is empty or "
        "was skipped as malformed)",
    )


def _usable_document(document):
    """`document` unless it is a skipped record or blank text (then None)."""
    if document is None or (isinstance(document, str) and is_blank_text(document)):
        return None
    return document


class TokenizeDocument:
    """Stage: a document (text, tokens or None) -> `{"tokens": [BOS, ..., EOS]}` or None.

    Empty or whitespace-only texts are dropped (None) and counted; nothing else is.
    """

    def __init__(self, tokenizer: TextEncoder, counters: DataCounters):
        self.tokenizer = tokenizer
        self.counters = counters

    def __call__(self, document) -> dict[str, np.ndarray] | None:
        if document is None:  # a record the source skipped (and counted)
            return None
        if isinstance(document, str):
            if not document.strip():
                self.counters.add("empty_documents")
                return None
            tokens = document_tokens(document, self.tokenizer)
        else:
            tokens = np.asarray(document, dtype=np.int32)
        self.counters.add("documents")
        self.counters.add("document_tokens", len(tokens))
        return {"tokens": tokens}


class AttachCounts:
    """Stage: adds the counts gathered since the previous batch under COUNTS_KEY."""

    def __init__(self, counters: DataCounters):
        self.counters = counters

    def __call__(self, batch: dict) -> dict:
        return {**batch, COUNTS_KEY: self.counters.take()}


def in_worker_processes(dataset: grain.IterDataset, workers: int) -> grain.IterDataset:
    """Runs `dataset` in `workers` processes (Grain multiprocess prefetch).

    Each worker runs the whole chain on its own slice of the sources; Grain interleaves
    their batches round-robin and checkpoints every worker's position. Workers are
    started with `spawn`, so the program's entry point must be import-safe (behind
    `if __name__ == "__main__"`).
    """
    _mark_absl_flags_parsed()
    return dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))


def _mark_absl_flags_parsed() -> None:
    # Grain's worker code reads absl flags; a program that never ran absl.app (any
    # program but Google's) must mark them parsed or the workers fail on first access.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def dataset_from_specs(
    specs: str,
    tokenizer,
    *,
    split: str,
    text_field: str = "text",
    val_fraction: float = 0.02,
    on_error: str = "raise",
    counters: DataCounters | None = None,
    max_documents: int = 0,
    **kwargs,
) -> grain.IterDataset:
    """`mixture_dataset` over sources written as in jaxlm.source_spec.

    `split` picks the training or validation documents of every source (or "all");
    `max_documents` > 0 keeps only the first that many of each source (evaluation on
    a budget). Pre-tokenized sources must have been made with `tokenizer`.
    """

    counters = counters if counters is not None else DataCounters()
    parsed = parse_sources(specs)
    sources = []
    for spec in parsed:
        source = open_source(
            spec,
            text_field=text_field,
            on_error=on_error,
            counters=counters,
            tokenizer_sha256=getattr(tokenizer, "sha256", None),
            split=split,
            val_fraction=val_fraction,
        )
        if max_documents:
            source = source[:max_documents]
        sources.append(source)
    return mixture_dataset(
        sources,
        tokenizer,
        weights=[spec.weight for spec in parsed],
        names=[str(spec) for spec in parsed],
        counters=counters,
        **kwargs,
    )


def text_files_source(files: Sequence[Path | str]) -> grain.MapDataset:
    """A source of one document per text file (strict UTF-8; errors name the file)."""
    return grain.MapDataset.source([str(path) for path in files]).map(_read_file)


def _read_file(path: str) -> str:
    return read_text(Path(path))


def pretrain_dataset(files: Sequence[Path], tokenizer: TextEncoder, **kwargs) -> grain.IterDataset:
    """`mixture_dataset` over one source: the given text files, one document each."""
    if not files:
        raise InputError("pretrain_dataset needs at least one file, got none")
    return mixture_dataset([text_files_source(files)], tokenizer, names=["files"], **kwargs)


def _check_arguments(
    sources, names, weights, seq_len, batch_size, packer, process_index, process_count,
    num_threads, workers,
) -> None:  # fmt: skip
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (a token and its target), got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if packer not in PACKERS:
        raise ValueError(f"unknown packer {packer!r}; choose one of {PACKERS}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if not sources:
        raise InputError("the pipeline needs at least one source, got none")
    if weights is not None and (len(weights) != len(sources) or min(weights) <= 0):
        raise InputError(f"need one positive weight per source, got {list(weights)}")
    for name, source in zip(names, sources, strict=True):
        if len(source) < process_count:
            raise InputError(
                f"{name}: {len(source)} documents cannot give each of {process_count} "
                "processes a shard"
            )
