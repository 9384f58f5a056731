"""Preference pairs to `[B, 2, T]` batches (choice 0 = chosen, 1 = rejected).

Accepted records (one JSON object per line):
    {"chosen": [msgs], "rejected": [msgs]}          MiniMind's DPO format: two whole
                                                    conversations sharing the prompt
    {"prompt": str | [msgs], "chosen": str | [msgs], "rejected": str | [msgs]}

Both sides are rendered with the ChatML template (jaxlm.data.chat). Only the
*response*, the final assistant turn and its `<|im_end|>`, is supervised: earlier
assistant turns belong to the prompt. Rows are not packed (each choice is one
segment, padded to T), so per-sequence log-probabilities are plain masked sums.
A pair where either response is truncated away is skipped and counted. With
`think_loss_weight` other than 1, the response's `<think>…</think>` tokens count with
that weight in those sums (jaxlm.data.think); 0 leaves the reasoning out of them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxlm.data.chat import (
    ChatEncoder,
    ChatFormatError,
    ChatStats,
    EncodedChat,
    Message,
    encode_conversation,
    parse_conversation,
)
from jaxlm.data.jsonl import BadLineCounter, OnError
from jaxlm.data.jsonl_records import WeightedFiles, mixed_record_stream
from jaxlm.data.packing import add_targets_and_mask
from jaxlm.data.think import loss_mask_dtype
from jaxlm.errors import InputError

NO_USABLE_PAIR = (
    "no record is a usable pair (chosen and rejected both need a final assistant "
    "response that fits in seq_len)"
)
WHERE_KEY = "_where"  # "file:line" of each pair; keys starting "_" never reach a step


@dataclasses.dataclass
class PreferenceStats:
    pairs: int = 0
    encoded: int = 0
    skipped: int = 0  # a side with nothing to learn (no response, or truncated away)


def _messages(value: Any, role: str, where: str, field: str) -> list[Message]:
    if isinstance(value, str):
        return [Message(role, value)]
    return parse_conversation({"messages": value}, where=f"{where}: {field}")


def parse_preference(
    record: Mapping[str, Any], *, where: str = "<record>"
) -> tuple[list[Message], list[Message]]:
    """(chosen, rejected) conversations of either accepted format; errors name `where`."""
    if not isinstance(record, Mapping) or "chosen" not in record or "rejected" not in record:
        raise ChatFormatError(f"{where}: a preference record needs 'chosen' and 'rejected'")
    if "prompt" in record:
        prompt = _messages(record["prompt"], "user", where, "prompt")
        chosen = prompt + _messages(record["chosen"], "assistant", where, "chosen")
        rejected = prompt + _messages(record["rejected"], "assistant", where, "rejected")
    else:
        chosen = _messages(record["chosen"], "assistant", where, "chosen")
        rejected = _messages(record["rejected"], "assistant", where, "rejected")
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1].role != "assistant":
            raise ChatFormatError(f"{where}: '{name}' must end with an assistant turn")
    return chosen, rejected


def response_only(encoded: EncodedChat) -> EncodedChat:
    """Keep only the trained tokens of the last turn: the final assistant response.

    The encoder says where the last turn starts (ChatML: its `<|im_start|>`, which
    content can never produce; a model's template: its last trained span); a
    reasoning span weighted 0 inside the response leaves it whole.
    """
    if encoded.last_turn_start is None:
        raise ValueError("response_only needs an EncodedChat that knows its last turn's start")
    flags = encoded.train_token.copy()
    flags[: encoded.last_turn_start] = 0
    return EncodedChat(encoded.tokens, flags, encoded.last_turn_start)


def encode_pair(
    item,
    *,
    tokenizer: ChatEncoder,
    seq_len: int,
    stats: PreferenceStats,
    reference_logps: Mapping[str, np.ndarray] | None = None,
    think_weight: float = 1.0,
) -> dict[str, np.ndarray] | None:
    """Stage: `(where, record)` -> `{"tokens", "train_token"}` of shape [2, T], or None.

    With `reference_logps` (jaxlm.training.reference_logps: "file:line" -> the reference
    model's [chosen, rejected] log-probs), the pair also carries `ref_logps` [2].
    """
    where, record = item
    if record is None:
        return None
    stats.pairs += 1
    sides = []
    for conv in parse_preference(record, where=where):
        enc = encode_conversation(
            conv, tokenizer, max_len=seq_len, stats=ChatStats(), think_weight=think_weight
        )
        if enc is None:
            stats.skipped += 1
            return None
        sides.append(response_only(enc))
    tokens = np.zeros((2, seq_len), np.int32)
    train = np.zeros((2, seq_len), loss_mask_dtype(think_weight))
    segment_ids = np.zeros((2, seq_len), np.int32)
    for i, enc in enumerate(sides):
        n = len(enc.tokens)
        tokens[i, :n], train[i, :n], segment_ids[i, :n] = enc.tokens, enc.train_token, 1
    stats.encoded += 1
    pair = {"tokens": tokens, "train_token": train, "segment_ids": segment_ids, "where": where}
    if reference_logps is not None:
        if where not in reference_logps:
            raise InputError(
                f"{where}: no precomputed reference log-probs for this pair (the data "
                "changed after they were computed?)"
            )
        pair["ref_logps"] = np.asarray(reference_logps[where], np.float32)
    return pair


def stack_pairs(pairs: Sequence[dict[str, np.ndarray]], *, batch_size: int, pad_id: int):
    """[B, 2, T] batch in the batch schema (jaxlm.data.packing); a short last batch gets
    empty pairs."""
    seq_len = pairs[0]["tokens"].shape[-1]
    ref = [p.pop("ref_logps") for p in pairs if "ref_logps" in p]
    # Which line each pair came from (for jaxlm.training.reference_logps); not a model input.
    wheres = [p.pop("where") for p in pairs]
    batch = {k: np.zeros((batch_size, 2, seq_len), v.dtype) for k, v in pairs[0].items()}
    batch["tokens"][:] = pad_id
    for b, pair in enumerate(pairs):
        for k, v in pair.items():
            batch[k][b] = v
    flat = {k: v.reshape(batch_size * 2, seq_len) for k, v in batch.items()}
    flat["positions"] = np.where(
        flat["segment_ids"] != 0, np.arange(seq_len, dtype=np.int32), 0
    ).astype(np.int32)
    out = add_targets_and_mask(flat)
    out = {k: v.reshape(batch_size, 2, seq_len) for k, v in out.items()}
    if ref:  # [B, 2]; filler pairs get 0 (they carry no loss)
        out["ref_logps"] = np.zeros((batch_size, 2), np.float32)
        out["ref_logps"][: len(ref)] = np.stack(ref)
    return {**out, WHERE_KEY: wheres}


def validate_pair(item) -> None:
    """Raises the ChatFormatError of a `(where, record)` that is not a preference pair."""
    where, record = item
    if record is not None:
        parse_preference(record, where=where)


def preference_dataset(
    files: Sequence[Path | str],
    tokenizer: ChatEncoder,
    *,
    seq_len: int,
    batch_size: int,
    pad_id: int = 0,
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
    stats: PreferenceStats | None = None,
    reference_logps: Mapping[str, np.ndarray] | None = None,
    think_loss_weight: float = 1.0,
) -> grain.IterDataset:
    """Per-process `[B, 2, T]` preference batches from jsonl files.

    `sources` (instead of `files` and `names`): weighted sources, drawn by weight
    (jaxlm.data.jsonl_records.mixed_record_stream). `think_loss_weight`: the weight of
    the response's `<think>…</think>` tokens in its log-probability (jaxlm.data.think).
    """
    stats = stats if stats is not None else PreferenceStats()
    encoding = functools.partial(
        encode_pair, tokenizer=tokenizer, seq_len=seq_len, think_weight=think_loss_weight
    )
    pairs = mixed_record_stream(
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
        encode=functools.partial(encoding, stats=stats, reference_logps=reference_logps),
        probe=functools.partial(encoding, stats=PreferenceStats()),
        validate=validate_pair,
        nothing_usable=NO_USABLE_PAIR,
    )
    pairs = pairs.to_iter_dataset(grain.ReadOptions(num_threads=1))
    return pairs.batch(
        batch_size, batch_fn=functools.partial(stack_pairs, batch_size=batch_size, pad_id=pad_id)
    )
