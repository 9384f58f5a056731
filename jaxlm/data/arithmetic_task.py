"""An embedded task with checkable answers: integer arithmetic, for RL and its warm start.

Reinforcement learning with verifiable rewards needs prompts whose answers a program can
check, easy enough that a tiny model trained for minutes on a CPU solves some of them
(a policy that never earns a reward learns nothing). Nothing is downloaded: the
problems are generated here.

Problems (`problem`, the canonical text; no spaces):

    "12+345"   a + b
    "345-12"   a - b, operands ordered so that a >= b: answers are never negative,
               so every answer is plain digits (no sign token to learn)
    "123*7"    a * d, d a single digit from 2 to 9 (with ops containing "*")

Each operand first draws its digit count uniformly from 1..`max_digits`, then a value
with exactly that many digits (one digit: 0-9); so short, easy problems are as common
as long ones, which gives a small model problems it can already solve. The factor of
"*" is always one digit.

Formats of an example (the dict `examples` returns; keys in this order):

    {"prompt": "12+345=",                       plain text; the completion is the answer
     "messages": [{"role": "user", "content": "What is 12 + 345?"}],   chat form
     "answer": "357",                           decimal digits, no sign, no spaces
     "problem": "12+345"}

The plain prompt is the problem and "=": short and tokenizer-friendly; a model
warm-started on `text_record`s ("12+345=357" documents, which pretraining ends with
EOS) completes it with the digits and then stops. The chat question spells the
operator with spaces around it ("12 - 5", "123 * 7"). `prompt_record` makes an RL
prompt record of one form: {"prompt", "answer", "problem"} or, with `chat=True`,
{"messages", "answer", "problem"}. `sft_record` turns an example into MiniMind's SFT
format (`{"conversations": [user, assistant]}`, as jaxlm.data.chat reads), the
assistant answering with the digits; with `think=True` it first works column by
column, from the ones digit:

    <think>12+345: 2+5=7, 1+4=5, 0+3=3</think>357
    <think>58+67: 8+7=15, 5+6+1=12</think>125             (+1: the carry)
    <think>52-17: 12-7=5, 5-1-1=3</think>35               (12: borrowed ten; -1: the borrow)
    <think>123*7: 3*7=21, 2*7+2=16, 1*7+1=8</think>861    (+2: the carry)

Deterministic: candidate i of a seed is drawn from sha256 of (seed, max_digits, ops, i),
not from a random generator whose algorithms may change between numpy versions: the same
arguments give the same examples on every machine and Python version.

Held out by construction: a problem is held out when the first 8 bytes of sha256 of its
split key, read as an integer, fall below `held_out_fraction * 2**64` (as
jaxlm.data.sources.split holds out documents). The split key is the canonical text,
with the operands of "+" and "*" sorted ("345+12" is keyed "12+345"), so a problem and
its commuted twin are on the same side. `examples("train", ...)` and
`examples("held_out", ...)` filter one stream of candidates by that test: they never
share a problem, however many are drawn, whatever the seed.

Draws are independent (with replacement): one-digit problems recur. `unique=True`
keeps each problem once (an evaluation set that counts every problem once); it gives
up with an InputError when the split has too few distinct problems to reach `count`.

Writing the records as jsonl: jaxlm.data.posttrain.output.write_jsonl (atomic).
RL runs read prompt files with jaxlm.data.prompt_inputs (these or anyone's).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from jaxlm.errors import InputError

OPS = "+-*"
SPLITS = ("train", "held_out")
# Up to 18 digits, an operand comes from one 64-bit draw with no visible bias.
MAX_DIGITS = 18
# Part of every candidate's hash: changing how problems are drawn means a new version,
# so that old seeds never silently give different problems under the same name.
_STREAM = "jaxlm.arithmetic_task.v1"
_PROBLEM = re.compile(r"(\d+)([-+*])(\d+)")


def examples(
    split: str,
    count: int,
    *,
    seed: int,
    max_digits: int,
    ops: str = "+-",
    held_out_fraction: float = 0.1,
    unique: bool = False,
) -> list[dict[str, Any]]:
    """The first `count` problems of `split` ("train" or "held_out") drawn from `seed`.

    `ops`: the operators to draw from, each equally often (a non-empty subset of
    "+-*"). Bad arguments are an InputError naming the argument.
    """
    _check_arguments(split, count, seed, max_digits, ops, held_out_fraction)
    want_held_out = split == "held_out"
    share = held_out_fraction if want_held_out else 1.0 - held_out_fraction
    # A give-up point for unique=True only: generous (50x the draws `count` needs on
    # average), so that it is reached only when the split is nearly exhausted.
    max_draws = max(10_000, int(50 * count / share))
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    index = 0
    while len(found) < count:
        if unique and index >= max_draws:
            raise InputError(
                f"arithmetic task: only {len(found)} distinct {split} problems with "
                f"max_digits={max_digits} and ops={ops!r} in {index} draws, fewer than "
                f"count={count}; lower count or raise max_digits"
            )
        problem = _candidate(seed, max_digits, ops, index)
        index += 1
        if is_held_out(problem, held_out_fraction) != want_held_out:
            continue
        if unique:
            if problem in seen:
                continue
            seen.add(problem)
        found.append(example(problem))
    return found


def example(problem: str) -> dict[str, Any]:
    """The example of a canonical problem text ("12+345"); see the module docstring."""
    a, op, b = _parse(problem)
    return {
        "prompt": f"{problem}=",
        "messages": [{"role": "user", "content": f"What is {a} {op} {b}?"}],
        "answer": solve(problem),
        "problem": problem,
    }


def solve(problem: str) -> str:
    """The answer of a canonical problem text, as decimal digits."""
    a, op, b = _parse(problem)
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return str(value)


def split_key(problem: str) -> str:
    """The text a problem's split is hashed from: "+" and "*" with operands sorted."""
    a, op, b = _parse(problem)
    if op in "+*" and b < a:
        a, b = b, a
    return f"{a}{op}{b}"


def is_held_out(problem: str, held_out_fraction: float) -> bool:
    """Whether `problem` belongs to the held-out split (stable; see the module docstring)."""
    digest = hashlib.sha256(split_key(problem).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") < held_out_fraction * 2**64


def working(problem: str) -> str:
    """The column-by-column working of `problem`, from the ones digit (`<think>` content)."""
    a, op, b = _parse(problem)
    steps = []
    if op == "*":
        carry = 0
        for digit in reversed(str(a)):
            value = int(digit) * b + carry
            steps.append(f"{digit}*{b}" + (f"+{carry}" if carry else "") + f"={value}")
            carry = value // 10
    else:
        width = max(len(str(a)), len(str(b)))
        column_a, column_b = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
        carry = 0  # the carry of "+", the borrow of "-"
        for da, db in zip(map(int, column_a), map(int, column_b), strict=True):
            extra = f"{op}1" if carry else ""
            if op == "+":
                value = da + db + carry
                steps.append(f"{da}+{db}{extra}={value}")
                carry = value // 10
            else:
                value = da - db - carry
                borrow = value < 0
                top = da + 10 if borrow else da
                steps.append(f"{top}-{db}{extra}={value + 10 if borrow else value}")
                carry = int(borrow)
    return f"{problem}: " + ", ".join(steps)


def sft_record(example: Mapping[str, Any], *, think: bool = False) -> dict[str, Any]:
    """MiniMind's SFT format: the chat question answered with the answer (after the
    working in `<think>…</think>`, with `think`)."""
    answer = example["answer"]
    if think:
        answer = f"<think>{working(example['problem'])}</think>{answer}"
    return {
        "conversations": [
            *(dict(message) for message in example["messages"]),
            {"role": "assistant", "content": answer},
        ]
    }


def prompt_record(example: Mapping[str, Any], *, chat: bool = False) -> dict[str, Any]:
    """An RL prompt record in one form only: {"prompt", "answer", "problem"}, or with
    `chat` {"messages", "answer", "problem"}. (An example has both forms; a reader that
    finds both takes one of them, so a prompt file states the form it means.)"""
    form = (
        {"messages": [dict(message) for message in example["messages"]]}
        if chat
        else {"prompt": example["prompt"]}
    )
    return {**form, "answer": example["answer"], "problem": example["problem"]}


def text_record(example: Mapping[str, Any]) -> dict[str, str]:
    """A pretraining document, "12+345=357": the plain prompt followed by its answer."""
    return {"text": example["prompt"] + example["answer"]}


def _check_arguments(
    split: str, count: int, seed: int, max_digits: int, ops: str, held_out_fraction: float
) -> None:
    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if split not in SPLITS:
        raise InputError(f"arithmetic task: split must be one of {SPLITS}, got {split!r}")
    if not integer(count) or count < 0:
        raise InputError(f"arithmetic task: count must be an integer >= 0, got {count!r}")
    if not integer(seed):
        raise InputError(f"arithmetic task: seed must be an integer, got {seed!r}")
    if not integer(max_digits) or not 1 <= max_digits <= MAX_DIGITS:
        raise InputError(
            f"arithmetic task: max_digits must be an integer from 1 to {MAX_DIGITS}, "
            f"got {max_digits!r}"
        )
    if not isinstance(ops, str) or not ops or len(set(ops)) != len(ops) or not set(ops) <= set(OPS):
        raise InputError(
            f"arithmetic task: ops must be distinct characters of {OPS!r}, got {ops!r}"
        )
    if isinstance(held_out_fraction, bool) or not (
        isinstance(held_out_fraction, int | float) and 0.0 < held_out_fraction < 1.0
    ):
        raise InputError(
            f"arithmetic task: held_out_fraction must be a number in (0, 1), "
            f"got {held_out_fraction!r}"
        )


def _candidate(seed: int, max_digits: int, ops: str, index: int) -> str:
    """Candidate `index` of the stream: four 64-bit words of one sha256 choose it."""
    text = f"{_STREAM}\x00{seed}\x00{max_digits}\x00{ops}\x00{index}"
    digest = hashlib.sha256(text.encode("ascii")).digest()
    w_op, w_digits, w_a, w_b = (int.from_bytes(digest[i : i + 8], "big") for i in range(0, 32, 8))
    op = ops[w_op % len(ops)]
    a = _operand(1 + w_digits % max_digits, w_a)
    if op == "*":
        return f"{a}*{2 + w_b % 8}"
    b = _operand(1 + (w_digits // max_digits) % max_digits, w_b)
    if op == "-" and a < b:
        a, b = b, a
    return f"{a}{op}{b}"


def _operand(digits: int, word: int) -> int:
    """A value with exactly `digits` digits (one digit: 0-9) from a 64-bit word."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return low + word % (10**digits - low)


def _parse(problem: str) -> tuple[int, str, int]:
    match = _PROBLEM.fullmatch(problem) if isinstance(problem, str) else None
    if match is None:
        raise InputError(
            f"arithmetic task: {problem!r} is not a problem (expected digits, one of "
            f"{OPS!r}, digits, like '12+345')"
        )
    return int(match[1]), match[2], int(match[3])


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
