"""One choice's text as its tokens arrive: whole characters, cut at a stop sequence.

Tokens become text through jaxlm.inference.streaming (a character spelt by several
byte tokens is released only once complete). Stop sequences are found in the text,
not the tokens (a sequence may span tokens or end inside one), and, as OpenAI does,
the returned text ends just before the sequence. While streaming, text that might be
the start of a stop sequence is held back until the next tokens show it is not, so
a client never receives part of a stop sequence.
"""

from __future__ import annotations

from jaxlm.inference.streaming import TextStream


class ChoiceText:
    def __init__(self, tokenizer, stops: list[str]):
        self._stream = TextStream(tokenizer)
        self._stops = stops
        self.text = ""  # every whole character so far (cut at a stop once one is found)
        self.sent = 0  # characters of `text` handed out
        self.stopped = False  # a stop sequence was found

    def push(self, token_id: int) -> str:
        """Append a token; the new text that is safe to hand out (may be "")."""
        if self.stopped:
            return ""
        self.text += self._stream.push(token_id)
        start = max(0, self.sent - max((len(s) for s in self._stops), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held())

    def finish(self) -> str:
        """The rest when generation ends without a stop sequence."""
        return self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of `text` that begins some stop sequence."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _release(self, end: int) -> str:
        end = max(end, self.sent)
        piece, self.sent = self.text[self.sent : end], end
        return piece
