"""Show or hide a model's reasoning: the text between `<think>` and `</think>`.

Models trained on R1-style data (MiniMind's distilled reasoning set) write their
reasoning as `<think>...</think>` before the answer. `ThinkFilter` takes a reply in
the pieces it streams in, which may split a tag anywhere, and hands on only what is
to be shown. With `hide`, nothing between the tags (nor the tags, nor the blank space
right after `</think>`) is ever handed on, not even for a moment: text that could be
the start of a tag is held back until the next piece settles it. With `show` (the
default of `jaxlm generate` and `jaxlm chat`) the reply passes unchanged.

    think = ThinkFilter("hide")
    for piece in pieces:
        sys.stdout.write(think.push(piece))
    sys.stdout.write(think.finish())
    think.hidden      # the reasoning that was not shown
"""

from __future__ import annotations

from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
MODES = ("show", "hide")
ThinkMode = Literal["show", "hide"]


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the start of `tag` (0 if none)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkFilter:
    def __init__(self, mode: ThinkMode):
        if mode not in MODES:
            raise ValueError(f"think mode {mode!r} is not one of {MODES}")
        self.hide = mode == "hide"
        self.hidden = ""  # reasoning text kept from the output
        self.inside = False  # in an open <think> block (at the end: it never closed)
        self._pending = ""  # text that may be the start of a tag
        self._after_close = False  # drop the blank space that follows </think>

    def push(self, text: str) -> str:
        """What of `text` (and of text held back before it) can be shown now."""
        if not self.hide:
            return text
        self._pending += text
        shown: list[str] = []
        while True:
            tag = CLOSE if self.inside else OPEN
            at = self._pending.find(tag)
            if at < 0:
                break
            self._route(self._pending[:at], shown)
            self._pending = self._pending[at + len(tag) :]
            self.inside = not self.inside
            self._after_close = not self.inside
        keep = _partial_tag(self._pending, CLOSE if self.inside else OPEN)
        self._route(self._pending[: len(self._pending) - keep], shown)
        self._pending = self._pending[len(self._pending) - keep :]
        return "".join(shown)

    def finish(self) -> str:
        """The text held back at the end (a tag that never completed is text)."""
        shown: list[str] = []
        self._route(self._pending, shown)
        self._pending = ""
        return "".join(shown)

    def _route(self, text: str, shown: list[str]) -> None:
        if self.inside:
            self.hidden += text
            return
        if self._after_close:
            text = text.lstrip()
            self._after_close = not text
        if text:
            shown.append(text)


def split_think(text: str, mode: ThinkMode) -> tuple[str, str]:
    """(what is shown, the reasoning hidden) of a whole reply."""
    think = ThinkFilter(mode)
    shown = think.push(text) + think.finish()
    return shown, think.hidden
