"""The chat template a tokenizer is stored with, so SFT and generation render turns alike.

A template is data, not code: its name, the two marker strings (special tokens with
pinned ids) and the text layout of a turn. jaxlm implements one, ChatML, in
jaxlm.data.chat (token ids and training masks); this module only describes it, so
the description can be written next to a tokenizer (the `.json` sidecar, see
jaxlm.data.tokenizer_metadata) and checked when the tokenizer is loaded.

`render` gives the text of a conversation for display and debugging. Never encode
that text to feed a model: message content must go through `encode_literal`, which
jaxlm.data.chat does, so typed markers stay text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from jaxlm.errors import InputError


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """How conversations are laid out: BOS, then one `turn` per message."""

    name: str
    im_start: str
    im_end: str
    # {im_start}, {im_end}, {role} and {content} are filled in per message.
    turn: str = "{im_start}{role}\n{content}{im_end}\n"
    # What a prompt ends with so the model writes the assistant's answer next;
    # generation stops at the `im_end` token.
    generation_prompt: str = "{im_start}assistant\n"
    starts_with_bos: bool = True

    @property
    def stop_piece(self) -> str:
        return self.im_end

    def render(self, messages: Sequence[Any], *, add_generation_prompt: bool = False) -> str:
        """The text of `messages` (objects with .role and .content), without BOS."""
        markers = {"im_start": self.im_start, "im_end": self.im_end}
        text = "".join(
            self.turn.format(role=m.role, content=m.content, **markers) for m in messages
        )
        if add_generation_prompt:
            text += self.generation_prompt.format(**markers)
        return text

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHATML = ChatTemplate(name="chatml", im_start="<|im_start|>", im_end="<|im_end|>")
TEMPLATES: dict[str, ChatTemplate] = {CHATML.name: CHATML}


def template_from_json(data: Any, *, where: str) -> ChatTemplate:
    """The known template `data` describes; anything else is an error naming `where`.

    jaxlm renders only the templates it implements, so a stored description must
    match one of them exactly: a tokenizer saved with a different layout would
    otherwise be trained and prompted in two different formats.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise InputError(f"{where}: 'chat_template' must be an object with a 'name'")
    known = TEMPLATES.get(data["name"])
    if known is None:
        raise InputError(
            f"{where}: unknown chat template {data['name']!r} (jaxlm implements {list(TEMPLATES)})"
        )
    if dict(data) != known.to_json():
        raise InputError(
            f"{where}: chat template {known.name!r} is stored as {dict(data)}, which differs "
            f"from the one jaxlm implements: {known.to_json()}"
        )
    return known
