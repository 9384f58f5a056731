r"""A model's own Jinja chat template: rendered as transformers renders it, with exact masks.

Models imported from Hugging Face define their conversation format as a Jinja
`chat_template` (tokenizer_config.json or chat_template.jinja). jaxlm renders it the
way transformers' `apply_chat_template` does: a sandboxed, immutable Jinja
environment (a template in a downloaded directory is untrusted input: it cannot reach
Python internals, files or the network), `trim_blocks` and `lstrip_blocks`, the
`loopcontrols` extension, `raise_exception`, `strftime_now`, a `tojson` that keeps
non-ASCII text, and the special token names (bos_token, eos_token, ...) as variables.

Message content is untrusted too. Every control token a message spells (a special
added token such as `<|im_end|>`; non-special added tokens like Qwen's `<think>` and
`<tool_call>` are content the model is meant to produce) is wrapped in private-use
markers before rendering; the rendered text is cut at the markers and
those tokens are encoded as plain text, so a user who types `<|im_end|>` cannot close
their turn. Without such tokens in the content, the ids equal
`apply_chat_template(messages, tokenize=True)`.

The loss mask covers exactly what the assistant says and the token that ends its
turn. With `{% generation %}…{% endgeneration %}` in the template, the marked text
(as transformers' `return_assistant_tokens_mask`). Otherwise from rendered prefixes:
the text an assistant message adds after `render(messages[:i], add_generation_prompt=True)`,
up to and including the last control token the template writes there (`<|im_end|>`,
`<|eot_id|>`), so the newline after it is context. Each prefix must be a prefix of the
whole rendering; a template that rewrites earlier turns (Qwen3 drops the reasoning of
all but the last answer) gives no clean mask and is refused, naming the template.
A token is trained when its characters overlap a trained span, as in transformers.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import numpy as np
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from jaxlm.data.think import think_pieces
from jaxlm.errors import InputError

MARK_START, MARK_END = "\U000f0000", "\U000f0001"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(InputError):
    """A template that cannot render a conversation, or gives no clean loss mask."""


@functools.lru_cache(maxsize=8)
def _compile(source: str):
    class GenerationSpans(Extension):
        """`{% generation %}` records where its text lands in the output."""

        tags = frozenset({"generation"})

        def __init__(self, environment):
            super().__init__(environment)
            environment.extend(span_tracker=None)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_record", [])
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _record(self, caller):
            text = caller()
            tracker = self.environment.span_tracker
            if tracker is not None:
                start = len("".join(tracker["blocks"]))
                tracker["spans"].append((start, start + len(text)))
            return text

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
            sort_keys=sort_keys,
        )  # fmt: skip

    class SafeNamespace(jinja2.utils.Namespace):
        # Underscore attributes would reach interpreter internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                SafeNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            SafeNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} refused")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationSpans, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = SafeNamespace
    env.globals["dict"] = _TemplateDict()
    return env, env.from_string(source)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without the type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class JinjaChatTemplate:
    """A Hugging Face chat template bound to its tokenizer (jaxlm.data.hf_tokenizer)."""

    def __init__(self, source: str, tokenizer):
        self.source = source
        self.tokenizer = tokenizer
        self.name = f"the chat_template of {tokenizer.path}"
        try:
            self._env, self._template = _compile(source)
        except Exception as error:
            raise ChatTemplateError(f"{self.name}: does not compile ({error})") from None
        self.has_generation_markers = bool(_GENERATION_TAG.search(source))
        # Control tokens are the special added tokens (the ones transformers'
        # split_special_tokens keeps as text). Non-special added tokens such as Qwen's
        # <think> and <tool_call> are what assistant content legitimately contains, so
        # they are encoded as tokens wherever they appear, as transformers does.
        self.control_tokens = tuple(
            sorted(
                (t.content for t in tokenizer.added_tokens.values() if t.special),
                key=len,
                reverse=True,
            )
        )
        pattern = "|".join(map(re.escape, self.control_tokens)) or "(?!)"
        self._control = re.compile(pattern)
        self._pieces = re.compile(f"{MARK_START}({pattern}){MARK_END}|[{MARK_START}{MARK_END}]")

    # -- rendering

    def _mark(self, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(MARK_START, "").replace(MARK_END, "")
            return self._control.sub(lambda m: f"{MARK_START}{m.group(0)}{MARK_END}", value)
        if isinstance(value, dict):
            return {k: self._mark(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._mark(v) for v in value]
        return value

    def _messages(self, messages: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            data = {"role": m.role, "content": m.content, **dict(getattr(m, "extra", {}) or {})}
            out.append({k: v for k, v in data.items() if v is not None})
        return out

    def render(
        self,
        messages: Sequence[Any],
        *,
        add_generation_prompt: bool = False,
        tools: list | None = None,
        marked: bool = False,
        track: list | None = None,
    ) -> str:
        """The template's text for `messages`; `marked` wraps content's control tokens."""
        chat = self._messages(messages)
        if marked:
            chat, tools = self._mark(chat), self._mark(tools)
        variables = dict(self.tokenizer.special_token_names())
        tracker = None if track is None else {"blocks": [], "spans": track}
        self._env.span_tracker = tracker
        try:
            blocks = self._template.generate(
                messages=chat, tools=tools, documents=None,
                add_generation_prompt=add_generation_prompt, **variables,
            )  # fmt: skip
            if tracker is None:
                return "".join(blocks)
            for block in blocks:
                tracker["blocks"].append(block)
            return "".join(tracker["blocks"])
        except Exception as error:
            raise ChatTemplateError(f"{self.name}: rendering failed: {error}") from None
        finally:
            self._env.span_tracker = None

    # -- tokens

    def encode_marked(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of a marked rendering and each id's (start, end) in `text` (marked
        coordinates). Marked control tokens (ones a message spelt) are encoded as plain
        text, the rest as the tokenizer encodes text."""
        tok = self.tokenizer
        parts = self._pieces.split(text)  # text, token-or-None, text, ...
        ids, offsets = [], []
        position = 0
        newline = tok.encode("\n")
        for index, part in enumerate(parts):
            if index % 2 == 1:  # a marker group: the marked token, or None for a lone marker
                match = self._pieces.search(text, position)
                if part is None:
                    position = match.end()
                    continue
                start = match.start() + len(MARK_START)
                piece_ids, piece_offsets = self._encode_piece(part, True, newline, index > 0)
                if tok.piece_to_id(part) in piece_ids:
                    raise ChatTemplateError(
                        f"{self.name}: cannot keep {part!r} as text: the tokenizer produces that "
                        "token from plain text"
                    )
                ids += piece_ids
                offsets += [(start + a, start + b) for a, b in piece_offsets]
                position = match.end()
                continue
            if not part:
                continue
            piece_ids, piece_offsets = self._encode_piece(part, False, newline, index > 0)
            ids += piece_ids
            offsets += [(position + a, position + b) for a, b in piece_offsets]
            position += len(part)
        return ids, offsets

    def _encode_piece(self, piece, literal, newline, after_cut):
        tok = self.tokenizer
        if not after_cut:
            return tok.encode_with_offsets(piece, literal=literal)
        # Encoded after a newline, then the newline removed, as transformers does, so
        # SentencePiece-style tokenizers add no prefix space in the middle of a chat.
        ids, offsets = tok.encode_with_offsets("\n" + piece, literal=literal)
        if ids[: len(newline)] == newline:
            return ids[len(newline) :], [(a - 1, b - 1) for a, b in offsets[len(newline) :]]
        return tok.encode_with_offsets(piece, literal=literal)

    def encode_prompt(self, messages: Sequence[Any], *, tools: list | None = None) -> list[int]:
        """Ids of `messages` followed by the generation prompt: what generation continues."""
        text = self.render(messages, add_generation_prompt=True, tools=tools, marked=True)
        return self.encode_marked(text)[0]

    def trained_spans(
        self, messages: Sequence[Any], *, tools: list | None = None
    ) -> tuple[str, list[tuple[int, int]]]:
        """The marked rendering and the character spans the model learns to produce."""
        if self.has_generation_markers:
            spans: list[tuple[int, int]] = []
            text = self.render(messages, tools=tools, marked=True, track=spans)
            return text, [s for s in spans if s[1] > s[0]]
        text = self.render(messages, tools=tools, marked=True)
        spans = []
        for i, message in enumerate(messages):
            if message.role != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True, tools=tools, marked=True)
            upto = self.render(messages[: i + 1], tools=tools, marked=True)
            if not (upto.startswith(prompt) and text.startswith(upto)):
                raise ChatTemplateError(
                    f"{self.name}: gives no clean loss mask for this conversation (rendering "
                    f"message {i} does not extend the rendering before it, and the template has "
                    "no {% generation %} markers); add the markers around the assistant text, "
                    "or train on conversations that end with the turn to learn"
                )
            spans.append((len(prompt), self._turn_end(upto, len(prompt))))
        return text, [s for s in spans if s[1] > s[0]]

    def _turn_end(self, text: str, start: int) -> int:
        """End of the trained text: after the last control token the template writes in
        text[start:], else the text without its trailing whitespace."""
        end = None
        for match in self._control.finditer(text, start):
            before = text[match.start() - 1] if match.start() else ""
            if before != MARK_START:  # the template's own token, not one a message spelt
                end = match.end()
        return end if end is not None else len(text[:].rstrip())

    def encode_conversation(
        self, messages: Sequence[Any], *, tools: list | None = None, think_weight: float = 1.0
    ) -> tuple[list[int], np.ndarray, int]:
        """(ids, per-id loss weights, index of the first id of the last trained span)."""
        text, spans = self.trained_spans(messages, tools=tools)
        ids, offsets = self.encode_marked(text)
        weights = np.zeros(len(ids), np.float32)
        starts = np.array([a for a, _ in offsets], np.int64)
        ends = np.array([b for _, b in offsets], np.int64)
        last_start = len(ids)
        for begin, end in spans:
            inside = (ends > begin) & (starts < end)
            weights[inside] = 1.0
            hits = np.flatnonzero(inside)
            if hits.size:
                last_start = int(hits[0])
            if think_weight != 1.0:
                position = begin
                for piece, in_think in think_pieces(text[begin:end]):
                    if in_think:
                        a, b = position, position + len(piece)
                        weights[(ends > a) & (starts < b) & inside] = think_weight
                    position += len(piece)
        return ids, weights, last_start
