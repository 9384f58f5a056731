"""Pretraining on JSON-lines text records (MiniMind's `{"text": ...}` format).

    jsonl lines (MapDataset over all files) -> seeded shuffle -> this process's shard
    -> repeat -> tokenize record[text_field] -> IterDataset -> split long documents
    -> window-shuffle pieces -> pack -> batch

Each record is one document `[BOS] + encode(text) + [EOS]`. A record without the
text field (or with a non-string one) is an error naming file:line: it usually means
the wrong `text_field`. Empty documents are dropped and counted.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import grain

from jaxlm.data.jsonl import BadLineCounter, JsonlError, OnError, record_stream
from jaxlm.data.packing import PackerName, TextEncoder, document_tokens, packed_batches


@dataclasses.dataclass
class DocumentStats:
    documents: int = 0
    empty: int = 0


def record_document(item, *, tokenizer: TextEncoder, text_field: str, stats: DocumentStats):
    """Stage: `(where, record)` -> `{"tokens"}`, or None (malformed-and-skipped or empty)."""
    where, record = item
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise JsonlError(f"{where}: expected an object with a string field '{text_field}'")
    stats.documents += 1
    text = record[text_field]
    if not text.strip():
        stats.empty += 1
        return None
    return {"tokens": document_tokens(text, tokenizer)}


def jsonl_pretrain_dataset(
    files: Sequence[Path | str],
    tokenizer: TextEncoder,
    *,
    seq_len: int,
    batch_size: int,
    text_field: str = "text",
    packer: PackerName = "first_fit",
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    on_error: OnError = "raise",
    bad_lines: BadLineCounter | None = None,
    stats: DocumentStats | None = None,
    shuffle_window: int = 16384,
) -> grain.IterDataset:
    """Packed pretraining batches for this process from jsonl text records."""
    stats = stats if stats is not None else DocumentStats()
    lines = record_stream(
        files,
        seed=seed,
        shuffle=shuffle,
        repeat=repeat,
        process_index=process_index,
        process_count=process_count,
        on_error=on_error,
        bad_lines=bad_lines,
    )
    to_doc = functools.partial(
        record_document, tokenizer=tokenizer, text_field=text_field, stats=stats
    )
    # One reader thread: the counters are plain integers updated by this stage.
    documents = lines.map(to_doc).to_iter_dataset(grain.ReadOptions(num_threads=1))
    return packed_batches(
        documents,
        seq_len=seq_len,
        batch_size=batch_size,
        packer=packer,
        pad_id=tokenizer.pad_id,
        seed=seed,
        shuffle_bins=shuffle,
        shuffle_window=shuffle_window if shuffle else 0,
    )
