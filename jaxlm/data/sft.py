"""The SFT input pipeline: chat jsonl files to packed batches that train only assistant tokens.

    jsonl lines (MapDataset over all files) -> seeded shuffle -> this process's shard
    -> repeat -> parse + ChatML-encode (None = skipped, counted) -> IterDataset
    -> pack (tokens + train_token) -> batch -> targets and loss_mask

Records are `{"conversations": [...]}` (MiniMind) or `{"messages": [...]}`; see
jaxlm.data.chat for the template and masks, jaxlm.data.jsonl for bad-line handling.
A conversation longer than `seq_len` is truncated (kept prefix) before packing, so
each one is a single segment.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import grain

from jaxlm.data.chat import ChatEncoder, ChatStats, encode_conversation, parse_conversation
from jaxlm.data.jsonl import BadLineCounter, OnError
from jaxlm.data.jsonl_records import WeightedFiles, mixed_record_stream
from jaxlm.data.packing import PackerName, packed_batches

NOTHING_TO_LEARN = (
    "no record has trainable tokens (no conversation has an assistant turn that fits in "
    "seq_len); chat data needs assistant turns to learn from"
)


def encode_record(
    item, *, tokenizer: ChatEncoder, seq_len: int, stats: ChatStats, think_weight: float = 1.0
):
    """Stage: `(where, record)` -> `{"tokens", "train_token"}`, or None when skipped."""
    where, record = item
    if record is None:  # a malformed line in skip mode, already counted
        return None
    encoded = encode_conversation(
        parse_conversation(record, where=where),
        tokenizer,
        max_len=seq_len,
        stats=stats,
        think_weight=think_weight,
    )
    if encoded is None:
        return None
    return {"tokens": encoded.tokens, "train_token": encoded.train_token}


def validate_record(item) -> None:
    """Raises the ChatFormatError of a `(where, record)` that is not a conversation."""
    where, record = item
    if record is not None:
        parse_conversation(record, where=where)


def sft_dataset(
    files: Sequence[Path | str],
    tokenizer: ChatEncoder,
    *,
    seq_len: int,
    batch_size: int,
    pad_id: int = 0,
    packer: PackerName = "first_fit",
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    on_error: OnError = "raise",
    bad_lines: BadLineCounter | None = None,
    split: str = "all",
    val_fraction: float = 0.1,
    names: list[str] | None = None,
    sources: Sequence[WeightedFiles] | None = None,
    stats: ChatStats | None = None,
    think_loss_weight: float = 1.0,
) -> grain.IterDataset:
    """Packed SFT batches for this process; `stats` and `bad_lines` count what was skipped.

    `sources` (instead of `files` and `names`): weighted sources, drawn by weight
    (jaxlm.data.jsonl_records.mixed_record_stream). `think_loss_weight`: the loss
    weight of `<think>…</think>` spans in assistant turns (jaxlm.data.think).
    """
    stats = stats if stats is not None else ChatStats()
    encoding = functools.partial(
        encode_record, tokenizer=tokenizer, seq_len=seq_len, think_weight=think_loss_weight
    )
    encoded = mixed_record_stream(
        sources or [WeightedFiles(list(files), names)],
        seed=seed,
        shuffle=shuffle,
        repeat=repeat,
        process_index=process_index,
        process_count=process_count,
        on_error=on_error,
        bad_lines=bad_lines,
        split=split,
        val_fraction=val_fraction,
        encode=functools.partial(encoding, stats=stats),
        probe=functools.partial(encoding, stats=ChatStats()),
        validate=validate_record,
        nothing_usable=NOTHING_TO_LEARN,
    )
    # One reader thread: the counters are plain integers updated by the encode stage.
    documents = encoded.to_iter_dataset(grain.ReadOptions(num_threads=1))
    return packed_batches(
        documents,
        seq_len=seq_len,
        batch_size=batch_size,
        packer=packer,
        pad_id=pad_id,
        seed=seed,
        shuffle_bins=shuffle,
        features=("tokens", "train_token"),
    )
