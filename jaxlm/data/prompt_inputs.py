"""Prompts for reinforcement learning (data.format=rl): records, token ids, batches.

A prompt record is one jsonl line, either plain text or a conversation, with whatever
the reward functions need beside it (an "answer" for the built-in answer check):

    {"prompt": "12+345=", "answer": "357"}
    {"messages": [{"role": "user", "content": "What is 12 + 345?"}], "answer": "357"}

Plain prompts are encoded as BOS + text (the completion continues the text); chat
prompts as the chat layout SFT trained on up to the assistant's answer
(jaxlm.data.chat.encode_chat_prompt). Prompt sets are small (thousands, not
billions), so every record is read, checked and encoded once when the run starts: a
bad line is an InputError naming file:line before any step, and the reward functions
get the record back by its index (`example_index` in the batch).

The training stream draws prompt indices (seeded shuffle, this process's shard,
reshuffled every epoch, jsonl_records-style); each batch carries its own number
(`batch_index`), so the rollout's random key is a function of the data position a
checkpoint saves, and a resumed run samples exactly what the uninterrupted run did.

Batch (host numpy, [b] = this process's prompts):
    tokens [b, P] right-padded prompt ids    positions [b, P]    segment_ids [b, P]
    lengths [b]   example_index [b]          batch_index [b] (the same in every row)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from jaxlm.config import Config
from jaxlm.data.chat import encode_chat_prompt, parse_conversation
from jaxlm.data.jsonl_records import record_source
from jaxlm.data.posttrain_inputs import jsonl_sources
from jaxlm.data.splits import held_out_split, training_split
from jaxlm.errors import InputError


@dataclasses.dataclass(frozen=True)
class Prompt:
    where: str  # file:line
    record: dict[str, Any]  # the jsonl record, as the reward functions get it
    text: str  # the prompt as text (a conversation rendered by the tokenizer)
    ids: tuple[int, ...]  # what the policy is given


def encode_prompt(record: Any, where: str, tokenizer, max_tokens: int) -> Prompt:
    """One record's prompt; an InputError naming `where` if it is not a usable one."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a prompt record is a JSON object, got {type(record).__name__}")
    if "prompt" in record:
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: 'prompt' must be a non-empty string")
        bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        ids = [*bos, *tokenizer.encode(text)]
    elif "messages" in record or "conversations" in record:
        messages = parse_conversation(record, where=where)  # its errors name `where`
        if messages[-1].role == "assistant":
            raise InputError(
                f"{where}: a chat prompt ends with a user turn (the policy writes the "
                "assistant's answer), not an assistant one"
            )
        ids = encode_chat_prompt(messages, tokenizer)
        text = tokenizer.decode(ids)
    else:
        raise InputError(
            f"{where}: a prompt record needs 'prompt' (text) or 'messages' (a conversation); "
            f"it has {sorted(record)}"
        )
    if len(ids) > max_tokens:
        raise InputError(
            f"{where}: the prompt is {len(ids)} tokens; at most {max_tokens} fit "
            "(data.seq_len - rl.max_response_tokens)"
        )
    return Prompt(where, record, text, tuple(int(i) for i in ids))


def load_prompts(cfg: Config, tokenizer, *, held_out: bool) -> list[Prompt]:
    """Every prompt of the run's training (or held-out) split, in file order."""
    key, files, records = split_records(cfg, held_out=held_out)
    limit = prompt_slots(cfg)
    prompts = [encode_prompt(record, where, tokenizer, limit) for where, record in records]
    if not prompts:
        side = "held-out" if held_out else "training"
        raise InputError(f"{key}: no {side} prompt in {', '.join(map(str, files))}")
    return prompts


def split_records(cfg: Config, *, held_out: bool):
    """(config key, files, [(file:line, record)]) of the run's training or held-out
    split of its jsonl sources, in file order."""
    split = held_out_split(cfg) if held_out else training_split(cfg)
    sources = jsonl_sources(split.specs, split.key)
    files = [f for s in sources for f in s.files]
    names = [n for s in sources for n in s.names]
    records = record_source(
        files, split=split.split, val_fraction=cfg.data.val_fraction, names=names
    )
    return split.key, files, list(records)


def prompt_slots(cfg: Config) -> int:
    """P: the longest a prompt may be, and the width every prompt is padded to (one
    compiled rollout for all): data.seq_len - rl.max_response_tokens."""
    return cfg.data.seq_len - cfg.rl.max_response_tokens


def prompt_batch(
    prompts: Sequence[Prompt], indices: Sequence[int], slots: int, pad_id: int, batch_index: int
) -> dict[str, np.ndarray]:
    b = len(indices)
    tokens = np.full((b, slots), pad_id, np.int32)
    lengths = np.zeros(b, np.int32)
    for row, i in enumerate(indices):
        ids = prompts[i].ids
        tokens[row, : len(ids)] = ids
        lengths[row] = len(ids)
    valid = np.arange(slots)[None, :] < lengths[:, None]
    return {
        "tokens": tokens,
        "positions": np.where(valid, np.arange(slots, dtype=np.int32)[None, :], 0),
        "segment_ids": valid.astype(np.int32),
        "lengths": lengths,
        "example_index": np.asarray(indices, np.int32),
        "batch_index": np.full(b, batch_index, np.int32),
    }


def prompt_stream(
    prompts: Sequence[Prompt],
    *,
    seed: int,
    slots: int,
    pad_id: int,
    process_index: int,
    process_count: int,
    batch_size: int,
):
    """This process's endless, checkpointable prompt batches (see the module docstring)."""
    order = grain.MapDataset.range(len(prompts)).shuffle(seed)[process_index::process_count]
    if len(order) < 1:
        raise InputError(
            f"{len(prompts)} training prompts leave none for process {process_index} of "
            f"{process_count}"
        )
    batches = order.repeat(None).batch(batch_size, drop_remainder=True)
    return batches.map_with_index(
        lambda i, rows: prompt_batch(prompts, [int(r) for r in rows], slots, pad_id, i)
    )


def held_out_batches(
    prompts: Sequence[Prompt],
    *,
    slots: int,
    pad_id: int,
    process_index: int,
    process_count: int,
    batch_size: int,
) -> list[dict[str, np.ndarray]]:
    """Every held-out prompt once (this process's share), in batches of `batch_size`;
    the last batch is filled with rows whose example_index is -1 (scored as nothing),
    and every process gets the same number of batches."""
    per_process = -(-len(prompts) // process_count)
    count = -(-per_process // batch_size)
    mine = list(range(process_index, len(prompts), process_count))
    batches = []
    for k in range(count):
        rows = mine[k * batch_size : (k + 1) * batch_size]
        filler = batch_size - len(rows)
        batch = prompt_batch(prompts, rows + [0] * filler, slots, pad_id, k)
        batch["example_index"][len(rows) :] = -1
        batches.append(batch)
    return batches
