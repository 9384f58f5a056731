"""Rewards for RL: one number per completion, a weighted sum of named components.

`rl.rewards` names the components and their weights, "answer=1,format=0.2,overlong=1"
(a weight defaults to 1; a weight of 0 reports a component without training on it).
`Rewards(spec).score(samples)` returns the weighted total and every component's raw
(unweighted) values, so a run's metrics show what each one contributed.

Built-in components (each a function of one `Sample`):

    answer    1 if the extracted answer equals example["answer"] (both stripped of
              surrounding whitespace), else 0. The extracted answer is the text after
              the last "</think>" when the completion has one, else the whole
              completion. Nothing else is parsed ("Answer: 357" is not 357): a
              format of your own is a function of your own.
    format    1 if the whole completion is "<think>…</think>" followed by an answer
              with a non-whitespace character, else 0: it starts with "<think>" (no
              text or whitespace before it), and has exactly one "<think>" and one
              "</think>". The reasoning may be empty.
    overlong  DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13),
              with L = max_tokens and buffer b: 0 while num_tokens <= L - b, then
              falling linearly, (L - b - num_tokens) / b, to -1 at L; -1 for a
              truncated response (it hit L without a stop token). b is
              `overlong_buffer`, or max_tokens // 4 (at least 1) when that is 0;
              a buffer longer than L is L.
    length    -num_tokens / max_tokens: a plain push towards short answers.
    digits    partial credit for a numeric answer: the share of positions, aligned
              from the right (ones with ones), where the extracted answer and
              example["answer"] have the same character, over the longer of the
              two lengths; 1 exactly when the answer is right. A denser signal than
              `answer` for a model that gets whole answers right too rarely.

Your own functions: a component "module.path:function" is imported (importlib, from
sys.path) when `Rewards` is made, and called as `function(completion, example) -> float`
for each sample (bool and int count as numbers). The caller adds batched components
with `extra` ({"reward_model": fn}, fn(list[Sample]) -> one number per sample), named
in the spec like the built-ins.

A component that fails is a RewardError (an InputError: the command line prints one
line) naming the component and the example's index in the batch, with the start of
its prompt and completion: an exception inside it (chained), a value that is not a
number (a str, None, a list), or a NaN or infinite value.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxlm.errors import InputError

SPEC_KEY = "rl.rewards"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# A component's name: a built-in or extra ("answer"), or "module.path:function".
_NAME = re.compile(r"[A-Za-z_]\w*|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# Characters of a prompt or completion shown in an error message.
SHOWN_CHARS = 40


@dataclasses.dataclass(frozen=True)
class Sample:
    """One completion to score, with what its rewards may look at."""

    prompt: str
    completion: str  # the decoded response, stop token excluded
    example: dict[str, Any]  # the dataset record; "answer" for the answer reward
    num_tokens: int  # response tokens
    truncated: bool  # reached max_tokens without a stop token
    max_tokens: int  # the response length limit


class RewardError(InputError):
    """A reward component failed on a sample; the message names the component and the
    sample's index in the batch."""


BatchedReward = Callable[[list[Sample]], Sequence[float]]


def extract_answer(completion: str) -> str:
    """The text after the last "</think>" (the whole completion without one), stripped."""
    _, close, after = completion.rpartition(THINK_CLOSE)
    return (after if close else completion).strip()


def answer_reward(sample: Sample) -> float:
    return float(extract_answer(sample.completion) == str(sample.example["answer"]).strip())


def format_reward(sample: Sample) -> float:
    text = sample.completion
    if not text.startswith(THINK_OPEN) or text.count(THINK_OPEN) != 1:
        return 0.0
    if text.count(THINK_CLOSE) != 1:
        return 0.0
    return float(bool(text.partition(THINK_CLOSE)[2].strip()))


def overlong_penalty(num_tokens: int, max_tokens: int, *, truncated: bool, buffer: int) -> float:
    """DAPO eq. 13: 0 up to max_tokens - buffer, then linear to -1 at max_tokens, and -1
    beyond it or when truncated."""
    buffer = min(buffer, max_tokens)
    if truncated or num_tokens >= max_tokens:
        return -1.0
    free = max_tokens - buffer
    if num_tokens <= free:
        return 0.0
    return (free - num_tokens) / buffer


def length_penalty(sample: Sample) -> float:
    return -sample.num_tokens / sample.max_tokens


def digits_reward(sample: Sample) -> float:
    got, want = extract_answer(sample.completion), str(sample.example["answer"]).strip()
    longest = max(len(got), len(want))
    if not longest:
        return 1.0
    same = sum(a == b for a, b in zip(reversed(got), reversed(want), strict=False))
    return same / longest


BUILT_INS = ("answer", "format", "overlong", "length", "digits")


def parse_reward_spec(text: str) -> list[tuple[str, float]]:
    """[(name, weight), ...] of "name[=weight],..." (weight 1 by default).

    Only the syntax is checked here; whether a name exists is Rewards' question.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{SPEC_KEY}: empty; name at least one reward, e.g. 'answer=1'")
    parsed: list[tuple[str, float]] = []
    for part in text.split(","):
        name, equals, weight_text = (piece.strip() for piece in part.partition("="))
        weight = 1.0
        why = ""
        if not name:
            why = "no reward name"
        elif not _NAME.fullmatch(name):
            why = f"{name!r} is not a reward name (a built-in, or module.path:function)"
        elif equals:
            try:
                weight = float(weight_text)
            except ValueError:
                why = f"weight {weight_text!r} is not a number"
            else:
                if not math.isfinite(weight):
                    why = f"weight {weight_text!r} is not finite"
        if not why and name in (n for n, _ in parsed):
            why = f"{name!r} is named twice"
        if why:
            raise InputError(
                f"{SPEC_KEY}: bad entry {part.strip()!r} in {text!r} ({why}); expected "
                "NAME or NAME=WEIGHT, comma-separated, e.g. 'answer=1,format=0.2'"
            )
        parsed.append((name, weight))
    return parsed


class Rewards:
    """The components of a reward spec, resolved once; `score` runs them on a batch."""

    def __init__(
        self,
        spec: str,
        *,
        extra: dict[str, BatchedReward] | None = None,
        overlong_buffer: int = 0,
    ):
        extra = dict(extra or {})
        clash = sorted(set(extra) & set(BUILT_INS))
        if clash:
            raise ValueError(f"extra rewards may not take a built-in's name: {clash}")
        if not isinstance(overlong_buffer, int) or overlong_buffer < 0:
            raise InputError(
                f"overlong_buffer must be an integer >= 0 (0: max_tokens // 4), "
                f"got {overlong_buffer!r}"
            )
        self.overlong_buffer = overlong_buffer
        self.weights = parse_reward_spec(spec)
        self.names = [name for name, _ in self.weights]
        self._score: dict[str, Callable[[list[Sample]], np.ndarray]] = {
            name: self._resolve(name, extra) for name in self.names
        }

    def score(self, samples: list[Sample]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(weighted total [N], {name: raw values [N]}), all float32."""
        total = np.zeros(len(samples), np.float64)
        components = {}
        for name, weight in self.weights:
            values = self._score[name](samples)
            total += weight * values
            components[name] = values.astype(np.float32)
        return total.astype(np.float32), components

    def _resolve(
        self, name: str, extra: dict[str, BatchedReward]
    ) -> Callable[[list[Sample]], np.ndarray]:
        if name in BUILT_INS:
            built_in = {
                "answer": answer_reward,
                "format": format_reward,
                "overlong": self._overlong,
                "length": length_penalty,
                "digits": digits_reward,
            }[name]
            return _per_sample(name, built_in)
        if name in extra:
            return _batched(name, extra[name])
        if ":" in name:
            function = _import_function(name)
            return _per_sample(name, lambda sample: function(sample.completion, sample.example))
        supplied = f"; supplied here: {', '.join(sorted(extra))}" if extra else ""
        raise InputError(
            f"{SPEC_KEY}: unknown reward {name!r}; built-in: {', '.join(BUILT_INS)}"
            f"{supplied}; or a function of your own as module.path:function "
            "(called as function(completion, example) -> float)"
        )

    def _overlong(self, sample: Sample) -> float:
        buffer = self.overlong_buffer or max(1, sample.max_tokens // 4)
        return overlong_penalty(
            sample.num_tokens, sample.max_tokens, truncated=sample.truncated, buffer=buffer
        )


def _import_function(name: str) -> Callable[[str, dict], Any]:
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise InputError(
            f"{SPEC_KEY}: cannot import module {module_name!r} for reward {name!r} "
            f"({_error(e)}); is its directory on PYTHONPATH?"
        ) from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(
            f"{SPEC_KEY}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
            f"function {function_name!r} for reward {name!r}"
        )
    return function


def _per_sample(name: str, function: Callable[[Sample], Any]) -> Callable[[list[Sample]], Any]:
    def score(samples: list[Sample]) -> np.ndarray:
        values = np.empty(len(samples), np.float64)
        for i, sample in enumerate(samples):
            try:
                value = function(sample)
            except Exception as e:
                raise RewardError(
                    f"reward {name!r} raised {_error(e)} on {_which(samples, i)}"
                ) from e
            values[i] = _number(name, value, samples, i)
        return values

    return score


def _batched(name: str, function: BatchedReward) -> Callable[[list[Sample]], np.ndarray]:
    def score(samples: list[Sample]) -> np.ndarray:
        try:
            values = function(samples)
        except Exception as e:
            first = f" (the first: {_which(samples, 0)})" if samples else ""
            raise RewardError(
                f"reward {name!r} raised {_error(e)} on a batch of {len(samples)} samples{first}"
            ) from e
        if isinstance(values, str | bytes | dict) or not hasattr(values, "__len__"):
            raise RewardError(
                f"reward {name!r} returned {_short(values)} ({type(values).__name__}) for a "
                f"batch of {len(samples)} samples; expected one number per sample"
            )
        if len(values) != len(samples):
            raise RewardError(
                f"reward {name!r} returned {len(values)} values for a batch of "
                f"{len(samples)} samples; expected one number per sample"
            )
        return np.array([_number(name, v, samples, i) for i, v in enumerate(values)], np.float64)

    return score


def _number(name: str, value: Any, samples: list[Sample], index: int) -> float:
    """`value` as a float, or the RewardError of a value that is no finite real number."""
    if not isinstance(value, numbers.Real | np.bool_):
        raise RewardError(
            f"reward {name!r} returned {_short(value)} ({type(value).__name__}) on "
            f"{_which(samples, index)}; expected a number"
        )
    number = float(value)
    if not math.isfinite(number):
        raise RewardError(
            f"reward {name!r} returned {number} on {_which(samples, index)}; expected a "
            "finite number"
        )
    return number


def _which(samples: list[Sample], index: int) -> str:
    sample = samples[index]
    return (
        f"example {index} of the batch (prompt {_short(sample.prompt)}, "
        f"completion {_short(sample.completion)})"
    )


def _error(error: Exception) -> str:
    """ "TypeName: message", on one line (the command line prints one line per error)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _short(value: Any) -> str:
    """repr of `value`, cut to SHOWN_CHARS (newlines escaped: messages stay one line)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
