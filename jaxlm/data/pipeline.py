"""The pretraining input pipeline: text files to packed per-process batches, as Grain stages.

    files (MapDataset) -> shuffle (seeded, new order each epoch) -> this process's shard
    -> repeat -> read + tokenize -> IterDataset (reader threads) -> split long documents
    -> window-shuffle pieces -> pack -> batch (+ targets, loss_mask)

Everything is numpy and deterministic for a given seed; iterators are checkpointable
(`get_state()` / `set_state()`, state is JSON-compatible). See jaxlm.data.packing for
the batch schema.
"""

import functools
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from jaxlm.data.corpus import read_text
from jaxlm.data.packing import (
    PACKERS,
    PackerName,
    TextEncoder,
    document_tokens,
    packed_batches,
    real_token_fraction,
)

__all__ = ["pretrain_dataset", "real_token_fraction", "tokenized_file"]

# Tokenized documents read ahead per process; a few hundred KB of token ids.
_READ_AHEAD_DOCUMENTS = 64


def pretrain_dataset(
    files: Sequence[Path],
    tokenizer: TextEncoder,
    *,
    seq_len: int,
    batch_size: int,
    packer: PackerName = "first_fit",
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 1,
    num_packing_bins: int | None = None,
    shuffle_window: int = 16384,
) -> grain.IterDataset:
    """Packed batches for this process (`batch_size` rows each), one document per file.

    With `repeat=True` the stream is endless and reshuffled every epoch. With
    `repeat=False, shuffle=False` (evaluation) every document is read exactly once and
    a short last batch is filled with all-padding rows. Processes read disjoint shards
    of `files`: after each epoch's shuffle, process i takes files i, i + n, i + 2n, ...

    `num_threads` reader threads read and tokenize files ahead (0 reads inline).
    `num_packing_bins` rows are packed together by first_fit / best_fit (default
    `batch_size`); more bins waste less padding. With `shuffle`, pieces of documents
    are also shuffled within windows of `shuffle_window` pieces before packing, so a
    batch does not hold consecutive slices of one long file.
    """
    _check_arguments(files, seq_len, batch_size, packer, process_index, process_count, num_threads)
    paths = file_stream(
        files,
        seed=seed,
        shuffle=shuffle,
        repeat=repeat,
        process_index=process_index,
        process_count=process_count,
    )
    documents = paths.map(functools.partial(tokenized_file, tokenizer=tokenizer))
    documents = documents.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=_READ_AHEAD_DOCUMENTS)
    )
    return packed_batches(
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


def file_stream(
    files: Sequence[Path],
    *,
    seed: int,
    shuffle: bool,
    repeat: bool,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """The paths this process reads, in order: shuffled per epoch, sharded, repeated."""
    paths = file_source(files, seed=seed, shuffle=shuffle)
    paths = shard_for_process(paths, process_index, process_count)
    # Repeat after shuffle and shard: Grain reseeds the shuffle every epoch, and each
    # epoch's permutation is split disjointly between processes.
    return paths.repeat(None) if repeat else paths


def file_source(files: Sequence[Path], *, seed: int, shuffle: bool) -> grain.MapDataset:
    """Stage: the file list, in a seeded random order when `shuffle`."""
    paths = grain.MapDataset.source([str(path) for path in files])
    return paths.shuffle(seed) if shuffle else paths


def shard_for_process(
    paths: grain.MapDataset, process_index: int, process_count: int
) -> grain.MapDataset:
    """Stage: every `process_count`-th path, starting at `process_index`."""
    return paths[process_index::process_count]


def tokenized_file(path: str, *, tokenizer: TextEncoder) -> dict[str, np.ndarray] | None:
    """Stage: one file to `{"tokens": [BOS] + ids + [EOS]}`; None (skipped) when empty."""
    text = read_text(Path(path))
    if not text:
        return None
    return {"tokens": document_tokens(text, tokenizer)}


def _check_arguments(
    files: Sequence[Path],
    seq_len: int,
    batch_size: int,
    packer: str,
    process_index: int,
    process_count: int,
    num_threads: int,
) -> None:
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
    if not files:
        raise ValueError("pretrain_dataset needs at least one file, got none")
    if len(files) < process_count:
        raise ValueError(
            f"{len(files)} files cannot give each of {process_count} processes a shard"
        )
