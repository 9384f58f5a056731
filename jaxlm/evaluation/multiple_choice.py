"""Log-likelihood multiple choice, scored as the common LM benchmarks score it.

Input: JSON lines `{"context": str, "choices": [str, ...], "answer": int}` (other keys
are ignored; an "id" is copied to the per-example results). `jaxlm data
multiple-choice` writes such a set offline (jaxlm.data.stdlib_multiple_choice).

    examples = read_examples("mc.jsonl")
    results = score_examples(model.graphdef, model.params, model.tokenizer, examples,
                             max_len=512)
    summarize(results)    # {"count", "accuracy", "acc_norm", "chance", ...}

The rule of lm-evaluation-harness's `multiple_choice` tasks (ARC, HellaSwag, PIQA):

    score(choice)  = sum over the choice's tokens of log p(token | context, earlier tokens)
    accuracy       = share of examples whose highest-scoring choice is the answer
    acc_norm       = the same with score / (UTF-8 bytes of the choice)

Normalisation by bytes: a long choice sums more negative terms, so the raw score
favours short choices; dividing by length removes most of that. The harness divides
by characters; UTF-8 bytes are the same for ASCII text and, like bits per byte, do not
depend on the tokenizer, so models with different tokenizers are compared on the same
scale (dividing by tokens would reward a tokenizer that cuts text finely). Ties go to
the lower choice index (numpy's argmax).

Tokenization: `[BOS] + encode(context)` (every jaxlm document and conversation starts
with BOS, jaxlm.data.packing / jaxlm.data.chat) followed by `encode(choice)`, encoded
on its own: the boundary is where the record puts it, never merged into a piece that
spans context and choice, so every choice is scored on the same context tokens. Put
the separating whitespace at the start of the choice (" Paris", "\\n    return x"),
as the harness does. Special markers written in the text (`<|im_start|>`,
`<|im_end|>`) become their special tokens, so a ChatML prompt can be given as text; an
SFT run encodes each turn's content apart from its `role\\n` header, which a context
string cannot express, so the tokens at that seam can differ slightly.

Length: a row is context + choice; when longer than `max_len` + 1 tokens its
beginning is dropped (the context keeps its end, positions restart at 0, as in a
training piece cut from a long document), and the results count such contexts. A
choice longer than `max_len` keeps its last `max_len` tokens scored and is counted in
`choices_truncated`: its score then covers less than the whole choice.

Batches: rows are sorted by length and right-padded to a bucket length (a power of
two from 16, at most `max_len`), in batches of a fixed row count, so one jitted scoring
function compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.data.packing import document_prefix
from jaxlm.errors import InputError
from jaxlm.evaluation.language_model import mesh_context, place_batch
from jaxlm.training.losses import token_nll
from jaxlm.training.steps import forward

_MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Example:
    context: str
    choices: tuple[str, ...]
    answer: int
    where: str = "<example>"  # file:line, for messages
    id: Any = None


@dataclasses.dataclass(frozen=True)
class ExampleResult:
    where: str
    id: Any
    answer: int
    scores: tuple[float, ...]  # summed log-probabilities, nats
    tokens: tuple[int, ...]  # scored tokens per choice
    bytes: tuple[int, ...]  # UTF-8 bytes per choice
    context_truncated: bool
    choices_truncated: int

    @property
    def pred(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def pred_norm(self) -> int:
        return int(np.argmax(np.asarray(self.scores) / np.asarray(self.bytes)))

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "pred": self.pred,
            "pred_norm": self.pred_norm,
            "correct": self.pred == self.answer,
            "correct_norm": self.pred_norm == self.answer,
        }


def parse_example(record: Any, where: str) -> Example:
    """An Example from a decoded JSON record; InputError naming `where` and the key."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("context", "choices", "answer"):
        if key not in record:
            raise InputError(f"{where}: missing key '{key}' (need context, choices, answer)")
    context, choices, answer = record["context"], record["choices"], record["answer"]
    if not isinstance(context, str):
        raise InputError(f"{where}: 'context' must be a string, got {type(context).__name__}")
    if not isinstance(choices, list) or len(choices) < 2:
        got = f"{len(choices)} choices" if isinstance(choices, list) else type(choices).__name__
        raise InputError(f"{where}: 'choices' must be a list of at least 2 strings, got {got}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice:
            raise InputError(f"{where}: 'choices[{i}]' must be a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise InputError(f"{where}: 'answer' must be an integer index, got {answer!r}")
    if not 0 <= answer < len(choices):
        raise InputError(
            f"{where}: 'answer' {answer} is out of range for {len(choices)} choices "
            f"(0..{len(choices) - 1})"
        )
    return Example(context, tuple(choices), answer, where, record.get("id"))


def read_examples(path: Path | str) -> list[Example]:
    """The records of a jsonl file (blank lines skipped); errors name file:line and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such multiple-choice file: {path}")
    examples = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{where}: not UTF-8 ({error.reason})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{where}: not valid JSON ({error.msg})") from None
            examples.append(parse_example(record, where))
    if not examples:
        raise InputError(f"{path}: no records (expected lines of context, choices, answer)")
    return examples


@dataclasses.dataclass(frozen=True)
class _Row:
    inputs: np.ndarray  # int32, at most max_len
    targets: np.ndarray  # inputs shifted by one
    scored: int  # the last `scored` targets are the choice's tokens
    context_truncated: bool
    choice_truncated: bool


def choice_row(context_ids: Sequence[int], choice_ids: Sequence[int], max_len: int) -> _Row:
    """Inputs and targets of one (context, choice) row, cut to `max_len` from the left."""
    full = np.asarray([*context_ids, *choice_ids], np.int32)
    start = max(0, len(full) - 1 - max_len)
    targets = full[start + 1 :]
    scored = min(len(choice_ids), len(targets))
    return _Row(full[start:-1], targets, scored, start > 0, scored < len(choice_ids))


def bucket_length(length: int, max_len: int) -> int:
    """The padded length of a batch whose longest row has `length` tokens."""
    return min(max_len, max(_MIN_BUCKET, 1 << (length - 1).bit_length()))


def pack_rows(rows: Sequence[_Row], batch_size: int, length: int, pad_id: int) -> dict:
    """Right-padded `[batch_size, length]` arrays in the batch schema (jaxlm.data.packing)."""
    shape = (batch_size, length)
    batch = {
        "tokens": np.full(shape, pad_id, np.int32),
        "targets": np.zeros(shape, np.int32),
        "loss_mask": np.zeros(shape, np.int32),
        "segment_ids": np.zeros(shape, np.int32),
        "positions": np.zeros(shape, np.int32),
    }
    for i, row in enumerate(rows):
        n = len(row.inputs)
        batch["tokens"][i, :n] = row.inputs
        batch["targets"][i, :n] = row.targets
        batch["loss_mask"][i, n - row.scored : n] = 1
        batch["segment_ids"][i, :n] = 1
        batch["positions"][i, :n] = np.arange(n)
    return batch


def choice_logprob_fn(graphdef):
    """jit of (params, batch) -> [B] summed log p(target) over each row's loss_mask."""

    def choice_logprobs(params, batch):
        nll_BT, _ = token_nll(forward(graphdef, params, batch), batch["targets"])
        return -jnp.sum(nll_BT * batch["loss_mask"].astype(jnp.float32), axis=-1)

    return jax.jit(choice_logprobs)


def score_examples(
    graphdef,
    params,
    tokenizer,
    examples: Sequence[Example],
    *,
    max_len: int,
    batch_size: int = 16,
    mesh=None,
) -> list[ExampleResult]:
    """Every choice's summed log-likelihood given its context (see the module docstring).

    `tokenizer` needs `bos_id`, `pad_id` and `encode`; with `mesh`, batches are sharded
    over it (batch_size must divide by its data-parallel size) and params must be
    placed on it already.
    """

    if max_len < 1 or batch_size < 1:
        raise InputError(f"max_len and batch_size must be positive, got {max_len}, {batch_size}")
    rows, owners = [], []
    for e_index, example in enumerate(examples):
        context = [*document_prefix(tokenizer), *tokenizer.encode(example.context)]
        for c_index, choice in enumerate(example.choices):
            rows.append(choice_row(context, tokenizer.encode(choice), max_len))
            owners.append((e_index, c_index))
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].inputs), i))
    score_fn = choice_logprob_fn(graphdef)
    pending = []  # dispatched before any result is fetched
    scores = np.zeros(len(rows), np.float64)
    with mesh_context(mesh):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            length = bucket_length(len(rows[chunk[0]].inputs), max_len)
            batch = pack_rows([rows[i] for i in chunk], batch_size, length, tokenizer.pad_id)
            pending.append((chunk, score_fn(params, place_batch(batch, mesh))))
        for chunk, out in pending:
            scores[chunk] = np.asarray(jax.device_get(out))[: len(chunk)]

    per_example: list[list[int]] = [[] for _ in examples]
    for row_index, (e_index, _) in enumerate(owners):
        per_example[e_index].append(row_index)
    results = []
    for example, row_ids in zip(examples, per_example, strict=True):
        results.append(
            ExampleResult(
                where=example.where,
                id=example.id,
                answer=example.answer,
                scores=tuple(float(scores[i]) for i in row_ids),
                tokens=tuple(rows[i].scored for i in row_ids),
                bytes=tuple(len(c.encode("utf-8")) for c in example.choices),
                context_truncated=any(rows[i].context_truncated for i in row_ids),
                choices_truncated=sum(rows[i].choice_truncated for i in row_ids),
            )
        )
    return results


def summarize(results: Sequence[ExampleResult]) -> dict[str, float]:
    """Accuracy and acc_norm (with binomial standard errors), chance level, counts."""
    n = len(results)
    if n == 0:
        raise InputError("no multiple-choice examples to summarize")
    acc = sum(r.pred == r.answer for r in results) / n
    acc_norm = sum(r.pred_norm == r.answer for r in results) / n
    return {
        "count": n,
        "accuracy": acc,
        "accuracy_stderr": _stderr(acc, n),
        "acc_norm": acc_norm,
        "acc_norm_stderr": _stderr(acc_norm, n),
        "chance": sum(1 / len(r.scores) for r in results) / n,
        "contexts_truncated": sum(r.context_truncated for r in results),
        "choices_truncated": sum(r.choices_truncated for r in results),
    }


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
