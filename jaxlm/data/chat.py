"""Conversations to token ids with an exact per-token training mask.

Two layouts: jaxlm's own ChatML (below; the default for models trained from scratch,
with a SentencePiece tokenizer), and a model's own Jinja chat template when its
tokenizer is a Hugging Face one that carries one (jaxlm.data.jinja_chat: rendered as
transformers renders it, the mask from `{% generation %}` markers or rendered
prefixes). `encode_conversation` and `encode_chat_prompt` pick the tokenizer's.

Every turn renders as

    <|im_start|>{role}\\n{content}<|im_end|>\\n

where the two markers are single special tokens (ids pinned in jaxlm.data.tokenizer),
never text that a user message could imitate. A conversation starts with BOS.

`train_token[i] = 1` marks the tokens the model learns to *produce*: the content of
every assistant turn and the `<|im_end|>` that closes it (so the model learns to
stop). The role header, system, user and tool turns, and the newline after
`<|im_end|>` are context only. With a `think_weight` other than 1, the
`<think>…</think>` spans of assistant turns get that weight instead (jaxlm.data.think);
`train_token` then holds float32 weights (int32 0/1 otherwise). Packing carries
`train_token` as a feature (jaxlm.data.packing, `features=("tokens", "train_token")`);
the loss mask of position t is then `train_token[t + 1]` within the same segment
(t's target is token t + 1).

Accepted records (one JSON object per line):
    {"conversations": [{"role": ..., "content": ...}, ...]}    MiniMind's SFT format
    {"messages": [{"role": ..., "content": ...}, ...]}         the common chat format
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from jaxlm.data.think import loss_mask_dtype, think_pieces
from jaxlm.data.tokenizer import BOS_ID, IM_END_ID, IM_START_ID
from jaxlm.errors import InputError

ROLES = ("system", "user", "assistant", "tool")
TRAINED_ROLES = frozenset({"assistant"})
TEMPLATE_NAME = "chatml"


class ChatEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def encode_literal(self, text: str) -> list[int]:
        """Encode without ever producing a chat-marker id (see Tokenizer.encode_literal)."""
        ...


class ChatFormatError(InputError):
    """A record that is not a conversation; the message names file:line."""


# Message keys a model's own chat template may read besides role and content (tool
# calls, a tool's name, reasoning); jaxlm's ChatML has no place for them.
EXTRA_KEYS = ("tool_calls", "name", "tool_call_id", "reasoning_content")


@dataclasses.dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class EncodedChat:
    """Token ids of one conversation and which of them are trained (same length)."""

    tokens: np.ndarray  # int32 [n]
    # [n] 1 where the model learns to produce the token, 0 where not; int32, or float32
    # weights when reasoning spans are weighted (encode_conversation's think_weight)
    train_token: np.ndarray
    # Index of the first token of the last message's turn (preference pairs train on
    # that response alone); None where not known.
    last_turn_start: int | None = None


@dataclasses.dataclass
class ChatStats:
    """Counters a run reports: nothing is skipped or cut silently."""

    conversations: int = 0
    encoded: int = 0
    skipped_no_assistant: int = 0
    skipped_truncated_to_nothing: int = 0
    truncated: int = 0


def parse_conversation(record: Mapping[str, Any], *, where: str = "<record>") -> list[Message]:
    """Messages of a `conversations` or `messages` record; errors name `where` (file:line)."""
    if not isinstance(record, Mapping):
        raise ChatFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    keys = [k for k in ("conversations", "messages") if k in record]
    if len(keys) != 1:
        raise ChatFormatError(
            f"{where}: expected exactly one of 'conversations' or 'messages', got keys "
            f"{sorted(record)}"
        )
    turns = record[keys[0]]
    if not isinstance(turns, Sequence) or isinstance(turns, str) or not turns:
        raise ChatFormatError(f"{where}: '{keys[0]}' must be a non-empty list of messages")
    messages = []
    for i, turn in enumerate(turns):
        here = f"{where}: {keys[0]}[{i}]"
        if not isinstance(turn, Mapping) or "role" not in turn or "content" not in turn:
            raise ChatFormatError(f"{here}: a message needs 'role' and 'content'")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ChatFormatError(f"{here}: unknown role {role!r} (known: {list(ROLES)})")
        if not isinstance(content, str):
            raise ChatFormatError(f"{here}: 'content' must be a string")
        unknown = sorted(set(turn) - {"role", "content", *EXTRA_KEYS})
        if unknown:
            raise ChatFormatError(
                f"{here}: unknown message key {unknown[0]!r} (known: role, content, "
                f"{', '.join(EXTRA_KEYS)})"
            )
        extra = {k: turn[k] for k in EXTRA_KEYS if turn.get(k) is not None}
        messages.append(Message(role, content, extra))
    return messages


def model_template(tokenizer):
    """The tokenizer's Jinja chat template (jaxlm.data.jinja_chat), or None for ChatML."""
    template = getattr(tokenizer, "chat_template", None)
    if getattr(tokenizer, "kind", None) == "huggingface" and template is None:
        raise InputError(
            f"tokenizer {tokenizer.path} has no chat_template (tokenizer_config.json or "
            "chat_template.jinja); chat data and chat need one"
        )
    return template if hasattr(template, "encode_conversation") else None


def _chatml_only(messages: Sequence[Message]) -> None:
    for message in messages:
        if message.extra:
            raise ChatFormatError(
                f"message key {sorted(message.extra)[0]!r}: jaxlm's ChatML template renders "
                "role and content only (a model with its own chat template can use it)"
            )


def encode_turn(
    message: Message, tokenizer: ChatEncoder, think_weight: float = 1.0
) -> tuple[list[int], list[float]]:
    """Token ids of one rendered turn and its train flags (loss weights).

    `think_weight` is the weight of an assistant turn's `<think>…</think>` tokens
    (jaxlm.data.think); 1.0 encodes the content whole, exactly as without it.
    """
    header = [IM_START_ID, *tokenizer.encode(f"{message.role}\n")]
    trained = 1 if message.role in TRAINED_ROLES else 0
    # Content is untrusted: a literal "<|im_end|>" in it must stay text.
    if trained and think_weight != 1.0:
        body, body_flags = [], []
        for piece, in_think in think_pieces(message.content):
            ids = tokenizer.encode_literal(piece)
            body += ids
            body_flags += [think_weight if in_think else 1] * len(ids)
    else:
        body = tokenizer.encode_literal(message.content)
        body_flags = [trained] * len(body)
    body, body_flags = [*body, IM_END_ID], [*body_flags, trained]
    trailer = tokenizer.encode("\n")
    tokens = header + body + trailer
    flags = [0] * len(header) + body_flags + [0] * len(trailer)
    return tokens, flags


def encode_conversation(
    messages: Sequence[Message],
    tokenizer: ChatEncoder,
    *,
    max_len: int,
    stats: ChatStats | None = None,
    think_weight: float = 1.0,
) -> EncodedChat | None:
    """BOS + rendered turns, cut to `max_len` tokens; None when there is nothing to learn.

    `think_weight`: the loss weight of reasoning spans in assistant turns (see
    encode_turn); the flags are float32 weights when it is neither 0 nor 1.

    Truncation keeps the beginning (the prompt and the first answers). A conversation
    with no assistant turn, or whose trained tokens all fall past `max_len`, returns
    None and is counted in `stats`; a cut that keeps some trained tokens is counted as
    truncated.
    """
    stats = stats if stats is not None else ChatStats()
    stats.conversations += 1
    if not any(m.role in TRAINED_ROLES for m in messages):
        stats.skipped_no_assistant += 1
        return None
    template = model_template(tokenizer)
    if template is not None:
        tokens, weights, last_start = template.encode_conversation(
            messages, think_weight=think_weight
        )
        flags = [w if think_weight not in (0.0, 1.0) else int(w) for w in weights]
    else:
        _chatml_only(messages)
        tokens, flags = [BOS_ID], [0]
        for message in messages:
            turn_tokens, turn_flags = encode_turn(message, tokenizer, think_weight)
            last_start = len(tokens)
            tokens += turn_tokens
            flags += turn_flags
    if len(tokens) > max_len:
        tokens, flags = tokens[:max_len], flags[:max_len]
        if not any(flags):
            stats.skipped_truncated_to_nothing += 1
            return None
        stats.truncated += 1
    stats.encoded += 1
    flags_array = np.asarray(flags, loss_mask_dtype(think_weight))
    return EncodedChat(np.asarray(tokens, np.int32), flags_array, last_start)


def encode_chat_prompt(messages: Sequence[Message], tokenizer: ChatEncoder) -> list[int]:
    """BOS + rendered turns + the assistant header: what generation continues from.

    Token for token what SFT trained on up to the point where the answer starts, so a
    chat model sees at inference exactly the layout it learnt.
    """
    template = model_template(tokenizer)
    if template is not None:
        return template.encode_prompt(messages)
    _chatml_only(messages)
    tokens = [BOS_ID]
    for message in messages:
        tokens += encode_turn(message, tokenizer)[0]
    return [*tokens, IM_START_ID, *tokenizer.encode("assistant\n")]
