"""OpenAI request bodies -> checked settings, and the OpenAI error shape.

Every malformed request is answered 4xx with OpenAI's error body

    {"error": {"message": "...", "type": "invalid_request_error", "param": "n",
               "code": null}}

whose message names the field and the limit, so a client (the openai package raises
it as BadRequestError with that message) and its user see what to change. Unknown
fields are refused rather than ignored: a setting the server would silently drop
(frequency_penalty, logit_bias) gives results the caller did not ask for.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error answered with OpenAI's error body; `status` is the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.kind = (
            message,
            status,
            param,
            code,
            kind,
        )

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for (the server's command-line limits)."""

    context: int  # prompt + completion tokens
    max_tokens: int  # completion tokens per choice
    max_n: int  # choices per prompt
    max_prompts: int  # prompts in one completions request
    vocab_size: int


@dataclasses.dataclass
class Settings:
    """What is common to both endpoints, checked."""

    max_tokens: int | None  # None: as many as fit in the context
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    top_logprobs: int  # per token; 0 with `logprobs` on gives just the chosen token's
    logprobs: bool
    echo: bool = False
    ignore_eos: bool = False


# Fields each endpoint reads; the rest of OpenAI's optional fields are accepted only at
# their neutral value (see NEUTRAL), anything else is refused.
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream"}
COMMON |= {"stream_options", "logprobs", "user"}
# Not OpenAI's: end only at max_tokens or a stop sequence, never at EOS or the end of a
# turn (vLLM's name for it). Load tests use it to get outputs of a set length.
COMMON |= {"ignore_eos"}
COMPLETION_FIELDS = COMMON | {"prompt", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON | {"messages", "top_logprobs", "max_completion_tokens"}
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {}}

MAX_STOP_SEQUENCES = 4  # OpenAI's limit


def parse_json(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ApiError(
            f"the request body is not valid JSON: {error.msg} (line {error.lineno} "
            f"column {error.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _number(data: Mapping, key: str, default: float, low: float, high: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(f"'{key}' must be a number, got {json.dumps(value)}", param=key)
    if not low <= value <= high:
        raise ApiError(f"'{key}' must be between {low} and {high}, got {value}", param=key)
    return float(value)


def _integer(data: Mapping, key: str, default, low: int, high: int, why: str = ""):
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"'{key}' must be an integer, got {json.dumps(value)}", param=key)
    if not low <= value <= high:
        raise ApiError(f"'{key}' must be between {low} and {high}{why}, got {value}", param=key)
    return value


def _boolean(data: Mapping, key: str) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(f"'{key}' must be true or false, got {json.dumps(value)}", param=key)
    return value


def check_fields(data: Mapping, known: set[str]) -> None:
    for key, value in data.items():
        if key in known:
            continue
        if key in NEUTRAL:
            if value is None or value == NEUTRAL[key]:
                continue
            raise ApiError(
                f"'{key}' is not supported by this server (only {json.dumps(NEUTRAL[key])})",
                param=key,
            )
        raise ApiError(
            f"unrecognized request argument {key!r} (known: {', '.join(sorted(known))})",
            param=key,
        )


def check_model(data: Mapping, served: str) -> None:
    model = data.get("model")
    if not isinstance(model, str):
        raise ApiError("'model' is required: a string naming the served model", param="model")
    if model != served:
        raise ApiError(
            f"the model {model!r} does not exist; this server serves {served!r}",
            status=404,
            param="model",
            code="model_not_found",
        )


def _stop(data: Mapping) -> list[str]:
    stop = data.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError("'stop' must be a non-empty string or a list of them", param="stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ApiError(
            f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}",
            param="stop",
        )
    return stops


def common_settings(data: Mapping, limits: Limits, *, max_tokens_key: str) -> Settings:
    max_tokens = _integer(
        data, max_tokens_key, None, 0, limits.max_tokens, " (the server's --max-tokens)"
    )
    n = _integer(data, "n", 1, 1, limits.max_n, " (the server's --max-n)")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(f"'seed' must be an integer, got {json.dumps(seed)}", param="seed")
    options = data.get("stream_options")
    stream = _boolean(data, "stream")
    if options is not None:
        if not stream:
            raise ApiError("'stream_options' is only allowed with stream: true", param="stream")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise ApiError(
                "'stream_options' must be an object with 'include_usage'", param="stream_options"
            )
    return Settings(
        max_tokens=max_tokens,
        temperature=_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(data, "top_p", 1.0, 0.0, 1.0) or 1e-9,  # 0: only the top token
        n=n,
        stop=_stop(data),
        seed=None if seed is None else seed % 2**64,  # any JSON integer; 64 bits are used
        stream=stream,
        include_usage=bool(options and _boolean(options, "include_usage")),
        top_logprobs=0,
        logprobs=False,
        ignore_eos=_boolean(data, "ignore_eos"),
    )


def completion_settings(data: Mapping, limits: Limits) -> Settings:
    check_fields(data, COMPLETION_FIELDS)
    settings = common_settings(data, limits, max_tokens_key="max_tokens")
    if settings.max_tokens is None:
        settings.max_tokens = 16  # OpenAI's default for completions
    top = _integer(data, "logprobs", None, 0, 20)
    settings.logprobs, settings.top_logprobs = top is not None, top or 0
    settings.echo = _boolean(data, "echo")
    best_of = data.get("best_of")
    if best_of is not None and best_of != settings.n:
        raise ApiError("'best_of' is not supported (only equal to n)", param="best_of")
    if data.get("suffix") not in (None, ""):
        raise ApiError("'suffix' is not supported", param="suffix")
    if settings.max_tokens == 0 and not settings.echo:
        raise ApiError("'max_tokens' may be 0 only with echo: true", param="max_tokens")
    return settings


def chat_settings(data: Mapping, limits: Limits) -> Settings:
    check_fields(data, CHAT_FIELDS)
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    settings = common_settings(data, limits, max_tokens_key=key)
    if settings.max_tokens == 0:
        raise ApiError(f"'{key}' must be at least 1", param=key)
    settings.logprobs = _boolean(data, "logprobs")
    settings.top_logprobs = _integer(data, "top_logprobs", 0, 0, 20)
    if data.get("top_logprobs") is not None and not settings.logprobs:
        raise ApiError("'top_logprobs' needs logprobs: true", param="top_logprobs")
    return settings


def completion_prompts(data: Mapping, limits: Limits) -> list[str | list[int]]:
    """The prompts of a completions request: texts or token-id lists, as given."""
    prompt = data.get("prompt")
    where = "'prompt' must be a string, a list of strings, a list of token ids or a list of lists"
    single_ids = isinstance(prompt, list) and prompt and all(_is_id(x) for x in prompt)
    if isinstance(prompt, str) or single_ids:
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise ApiError(where + " (non-empty)", param="prompt")
    if len(prompts) > limits.max_prompts:
        raise ApiError(
            f"'prompt' holds {len(prompts)} prompts; at most {limits.max_prompts} per "
            "request (the server's --max-prompts)",
            param="prompt",
        )
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            continue
        if not isinstance(item, list) or not item or not all(_is_id(x) for x in item):
            raise ApiError(f"{where}; prompt[{i}] is not", param="prompt")
        bad = [x for x in item if not 0 <= x < limits.vocab_size]
        if bad:
            raise ApiError(
                f"prompt[{i}] holds token id {bad[0]}, outside the vocabulary "
                f"[0, {limits.vocab_size})",
                param="prompt",
            )
    return prompts


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def chat_messages(data: Mapping) -> list[dict[str, str]]:
    """{"role", "content"} dicts; content given as text parts is joined."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(f"messages[{i}] must be an object", param="messages")
        content = message.get("content")
        if isinstance(content, list):
            texts = [part.get("text") for part in content if isinstance(part, dict)]
            kinds = {part.get("type") for part in content if isinstance(part, dict)}
            if (
                len(texts) != len(content)
                or kinds - {"text"}
                or not all(isinstance(t, str) for t in texts)
            ):
                raise ApiError(
                    f"messages[{i}].content: only text parts are supported", param="messages"
                )
            content = "".join(texts)
        role = message.get("role")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def check_length(prompt_tokens: int, max_tokens: int, limits: Limits, param: str) -> None:
    """A 400 naming the context when prompt + completion cannot fit."""
    if prompt_tokens + max(max_tokens, 1) > limits.context and max_tokens > 0:
        raise ApiError(
            f"This model's maximum context length is {limits.context} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} in the completion). Please reduce the prompt or max_tokens.",
            param=param,
            code="context_length_exceeded",
        )
    if prompt_tokens > limits.context:
        raise ApiError(
            f"This model's maximum context length is {limits.context} tokens. However, "
            f"the prompt is {prompt_tokens} tokens.",
            param=param,
            code="context_length_exceeded",
        )
