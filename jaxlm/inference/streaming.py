"""Turn a growing list of token ids into text pieces that are safe to print.

Tokens do not map one-to-one onto characters: SentencePiece spells a character
outside its vocabulary as 2 to 4 byte-fallback tokens, and a byte-level BPE token
(Qwen, Llama-3) may end in the first bytes of a character that the next token
finishes. Decoding only some of them gives U+FFFD. So the stream holds back the
trailing tokens that carry the unfinished start of a UTF-8 character, prints them
once the character's last byte arrives, and drops them if generation ends first (max
tokens, a stop token, Ctrl-C): a cut in the middle of a character never prints a
replacement character. Bytes that can never become a character (a continuation byte
with no lead, a lead followed by an ASCII byte) are the model's own output and decode
to U+FFFD as the tokenizer decodes them.

Works with any tokenizer that says which bytes each id stands for (`piece_bytes`).

    stream = TextStream(tokenizer)
    for token in tokens:
        sys.stdout.write(stream.push(token))
    stream.finish()            # always "": an unfinished character is dropped
    stream.text == complete_text(tokenizer, tokens)
"""

from __future__ import annotations

from collections.abc import Sequence


def _utf8_length(lead: int) -> int:
    """Bytes of the UTF-8 character that starts with byte `lead` (1 for ASCII and for
    bytes that cannot start a multi-byte character)."""
    if lead >> 5 == 0b110:
        return 2
    if lead >> 4 == 0b1110:
        return 3
    if lead >> 3 == 0b11110:
        return 4
    return 1


def unfinished_bytes(data: bytes) -> int:
    """How many trailing bytes of `data` begin a UTF-8 character not yet complete."""
    tail = data[-3:]
    for count, byte in enumerate(reversed(tail), 1):
        if byte & 0xC0 == 0x80:  # a continuation byte: its lead is further back
            continue
        return count if count < _utf8_length(byte) else 0
    return 0


def _last_bytes(tokenizer, ids: Sequence[int], end: int) -> bytes:
    """At least the last 3 bytes of ids[:end] (fewer only when that is all there is)."""
    data, start = b"", end
    while start > 0 and len(data) < 3:
        start -= 1
        data = tokenizer.piece_bytes(ids[start]) + data
    return data


def unfinished_tail(tokenizer, ids: Sequence[int]) -> int:
    """How many trailing ids to hold so the rest ends on a character boundary.

    Holding the ids that carry an unfinished character is not always enough: a
    byte-level BPE token can finish one character and start the next (Qwen's
    b"\xa5\xe6\x99" ends "工" and begins "智"), so once it is held the token before it
    ends inside "工" in turn. Walk back until the kept prefix ends cleanly.
    """
    held = 0
    while held < len(ids) and unfinished_bytes(_last_bytes(tokenizer, ids, len(ids) - held)):
        held += 1
    return held


def complete_text(tokenizer, ids: Sequence[int]) -> str:
    """The text of `ids` without a trailing unfinished character."""
    ids = [int(i) for i in ids]
    return tokenizer.decode(ids[: len(ids) - unfinished_tail(tokenizer, ids)])


class TextStream:
    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._printed = 0  # characters of the complete text already handed out

    def push(self, token_id: int) -> str:
        """The new printable text after appending `token_id` (may be empty)."""
        self.ids.append(int(token_id))
        text = complete_text(self._tokenizer, self.ids)
        new = text[self._printed :]
        self._printed = max(self._printed, len(text))
        return new

    def finish(self) -> str:
        """What is left to print when generation ends: nothing, since an unfinished
        character is dropped (kept as a method so callers need not know that)."""
        return ""

    @property
    def text(self) -> str:
        return complete_text(self._tokenizer, self.ids)
