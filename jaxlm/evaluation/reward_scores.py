"""Scoring responses with a reward model: `jaxlm reward score`.

    model = load_model("exports/rm")                       # model.score_head=true
    for scored in score_records(model, "records.jsonl", seq_len=256, batch_size=16):
        scored.where, scored.scores                         # [r] or [r_chosen, r_rejected]
    summary = summarize(scored_list)

Accepted records (one JSON object per line):

    {"prompt": str | [msgs], "response": str}      one response to a prompt
    {"messages": [msgs]} / {"conversations": ...}  a conversation ending in an assistant
                                                   turn (the response scored)
    {"chosen": ..., "rejected": ...}               a preference pair, in either format
                                                   jaxlm.data.preference reads: both
                                                   scored, and the pair ranked

Every response is rendered and cut exactly as reward-model training renders one side
of a pair (jaxlm.data.chat.encode_conversation with the model's tokenizer and its chat
template, then preference.response_only; padding and targets as preference.stack_pairs),
and its score is read where training reads it (reward_model_steps.response_end: the
position whose input is the response's last token, its end token), so a pair from the
run's data scores here exactly as in the run's eval. A conversation longer than
seq_len is cut there and its response scored at the cut, as training does, and the
record is flagged `truncated`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxlm.data.chat import (
    ChatFormatError,
    ChatStats,
    Message,
    encode_conversation,
    parse_conversation,
)
from jaxlm.data.jsonl import parse_line
from jaxlm.data.packing import add_targets_and_mask
from jaxlm.data.preference import parse_preference, response_only
from jaxlm.data.think import loss_mask_dtype
from jaxlm.errors import InputError
from jaxlm.evaluation.language_model import mesh_context, place_batch
from jaxlm.inference.loading import LoadedModel
from jaxlm.training.reward_model_steps import response_end, sequence_scores

RECORD_FORMS = (
    '{"prompt", "response"}, {"messages": [...]} (ending in an assistant turn) or '
    '{"chosen", "rejected"}'
)


@dataclasses.dataclass
class Scored:
    """One input record and its scores."""

    where: str  # file:line
    record: dict[str, Any]
    scores: list[float]  # [score], or [chosen, rejected] for a pair
    truncated: bool  # a conversation was longer than seq_len (scored at the cut)

    @property
    def is_pair(self) -> bool:
        return len(self.scores) == 2

    def output(self) -> dict[str, Any]:
        """The record with its scores added (the command's output line)."""
        out = dict(self.record)
        if self.is_pair:
            out["chosen_score"], out["rejected_score"] = self.scores
        else:
            out["score"] = self.scores[0]
        if self.truncated:
            out["truncated"] = True
        return out


def conversations(record: Any, where: str) -> list[list[Message]]:
    """The conversation(s) of a record whose final assistant turns are scored."""
    if not isinstance(record, dict):
        raise ChatFormatError(f"{where}: expected a JSON object, one of {RECORD_FORMS}")
    if "chosen" in record or "rejected" in record:
        return list(parse_preference(record, where=where))
    if "response" in record:
        if "prompt" not in record or not isinstance(record["response"], str):
            raise ChatFormatError(
                f"{where}: a response record needs 'prompt' and a string 'response'"
            )
        prompt = record["prompt"]
        if isinstance(prompt, str):
            conv = [Message("user", prompt)]
        else:
            conv = parse_conversation({"messages": prompt}, where=f"{where}: prompt")
        return [[*conv, Message("assistant", record["response"])]]
    if "messages" in record or "conversations" in record:
        conv = parse_conversation(record, where=where)
        if conv[-1].role != "assistant":
            raise ChatFormatError(f"{where}: the conversation must end with an assistant turn")
        return [conv]
    raise ChatFormatError(f"{where}: keys {sorted(record)}; expected one of {RECORD_FORMS}")


def encode_rows(
    convs: Sequence[list[Message]],
    tokenizer,
    *,
    seq_len: int,
    pad_id: int,
    where: str,
    think_weight: float = 1.0,
) -> tuple[dict[str, np.ndarray], bool]:
    """Rows [n, T] of the batch schema for the responses of `convs`, and whether any was
    cut; the layout of one side of preference.encode_pair and stack_pairs."""
    n = len(convs)
    tokens = np.full((n, seq_len), pad_id, np.int32)
    train = np.zeros((n, seq_len), loss_mask_dtype(think_weight))
    segment_ids = np.zeros((n, seq_len), np.int32)
    truncated = False
    for i, conv in enumerate(convs):
        stats = ChatStats()
        enc = encode_conversation(
            conv, tokenizer, max_len=seq_len, stats=stats, think_weight=think_weight
        )
        if enc is None:
            raise InputError(
                f"{where}: the response does not fit in {seq_len} tokens (raise --seq-len)"
            )
        enc = response_only(enc)
        k = len(enc.tokens)
        tokens[i, :k], train[i, :k], segment_ids[i, :k] = enc.tokens, enc.train_token, 1
        truncated |= stats.truncated > 0
    positions = np.where(segment_ids != 0, np.arange(seq_len, dtype=np.int32), 0)
    rows = {
        "tokens": tokens,
        "train_token": train,
        "segment_ids": segment_ids,
        "positions": positions.astype(np.int32),
    }
    return add_targets_and_mask(rows), truncated


def _read(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            record, why = parse_line(raw)
            if why:
                raise InputError(f"{where}: {why}")
            yield where, record


def _scorer(model: LoadedModel):
    score = functools.partial(sequence_scores, model.graphdef)

    def run(params, rows):
        last_B, _ = response_end(rows["loss_mask"])
        return score(params, rows["tokens"], rows["positions"], rows["segment_ids"], last_B)

    return jax.jit(run)


def score_records(
    model: LoadedModel, path: Path | str, *, seq_len: int, batch_size: int
) -> Iterator[Scored]:
    """Each record of the jsonl file `path` with its scores, in file order (module
    docstring); batches of `batch_size` rows of `seq_len` tokens."""
    if not model.cfg.model.score_head:
        raise InputError(
            f"{model.source}: not a reward model (no score head); train one with "
            "data.format=reward and model.score_head=true"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    run = _scorer(model)
    pad_id = model.tokenizer.pad_id
    think_weight = model.cfg.data.think_loss_weight
    pending: list[tuple[Scored, dict[str, np.ndarray]]] = []

    def flush() -> Iterator[Scored]:
        rows = {k: np.concatenate([r[k] for _, r in pending]) for k in pending[0][1]}
        n = len(rows["tokens"])
        # Every batch has the same shape (one compilation); filler rows are discarded.
        padded = {k: np.zeros((batch_size, *v.shape[1:]), v.dtype) for k, v in rows.items()}
        for k, v in rows.items():
            padded[k][:n] = v
        with mesh_context(model.mesh):
            scores = np.asarray(jax.device_get(run(model.params, place_batch(padded, model.mesh))))
        i = 0
        for scored, r in pending:
            m = len(r["tokens"])
            scored.scores = [float(s) for s in scores[i : i + m]]
            i += m
            yield scored
        pending.clear()

    queued = 0
    seen = 0
    for where, record in _read(path):
        seen += 1
        convs = conversations(record, where)
        rows, truncated = encode_rows(
            convs,
            model.tokenizer,
            seq_len=seq_len,
            pad_id=pad_id,
            where=where,
            think_weight=think_weight,
        )
        if queued + len(convs) > batch_size:
            yield from flush()
            queued = 0
        pending.append((Scored(where, record, [], truncated), rows))
        queued += len(convs)
    if pending:
        yield from flush()
    if not seen:
        raise InputError(f"{path}: no records")


def summarize(scored: Sequence[Scored]) -> dict[str, float]:
    """Counts and means; for pairs the accuracy (chosen scored higher, a tie counting
    half, as reward-model training's eval counts it) and the mean margin."""
    responses = [s for x in scored for s in x.scores]
    pairs = np.asarray([x.scores for x in scored if x.is_pair], np.float64).reshape(-1, 2)
    out: dict[str, float] = {
        "records": len(scored),
        "responses": len(responses),
        "mean_score": float(np.mean(responses)) if responses else 0.0,
        "truncated": sum(x.truncated for x in scored),
        "pairs": len(pairs),
    }
    if len(pairs):
        margin = pairs[:, 0] - pairs[:, 1]
        out["pair_accuracy"] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
        out["pair_ties"] = float(np.mean(margin == 0))
        out["mean_margin"] = float(np.mean(margin))
    return out
