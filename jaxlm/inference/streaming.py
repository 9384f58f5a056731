"""Turn a growing list of token ids into text pieces that are safe to print.

SentencePiece pieces do not map one-to-one onto characters: a character outside the
vocabulary is spelt as several byte tokens, and decoding only some of them gives
U+FFFD. So the stream decodes everything so far and prints the new suffix, holding
back a trailing U+FFFD until the bytes after it arrive (or the stream ends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[Iterable[int]], str]):
        self._decode = decode
        self.ids: list[int] = []
        self._printed = 0  # characters of decode(ids) already handed out

    def push(self, token_id: int) -> str:
        """The new printable text after appending `token_id` (may be empty)."""
        self.ids.append(int(token_id))
        text = self._decode(self.ids)
        end = len(text.rstrip(REPLACEMENT))
        new = text[self._printed : end] if end > self._printed else ""
        self._printed = max(self._printed, end)
        return new

    def finish(self) -> str:
        """Whatever is still held back (a byte sequence that never completed)."""
        text = self._decode(self.ids)
        new = text[self._printed :]
        self._printed = len(text)
        return new

    @property
    def text(self) -> str:
        return self._decode(self.ids)
