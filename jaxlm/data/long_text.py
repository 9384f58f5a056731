"""Encoding a text of any length in bounded memory.

A tokenizer returns a Python list (about 36 bytes per token), and SentencePiece's own
working memory grows with the text it is given, so one long line cost tens of
bytes per character of text.
`encode_ids` encodes a long text `ENCODE_CHARS` characters at a time into int32, so
what is held beyond the text and its int32 ids stays bounded, and the ids are the
same as encoding the text whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

# Characters encoded at a time: about 4 MB of Python ids at most.
ENCODE_CHARS = 1 << 16


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def encode_ids(text: str, tokenizer: Encoder, max_chars: int = ENCODE_CHARS) -> np.ndarray:
    """`tokenizer.encode(text)` as int32, encoded `max_chars` characters at a time.

    Pieces end where a run of spaces starts. jaxlm's tokenizers (identity
    normalisation, no dummy prefix) start a word there and no token spans it, so the
    ids are exactly those of encoding the text whole. Only a stretch of more than
    `max_chars` characters without such a place is cut inside it (the tokens at that
    cut may then differ).
    """
    if len(text) <= max_chars:
        return np.asarray(tokenizer.encode(text), dtype=np.int32)
    parts = [
        np.asarray(tokenizer.encode(part), dtype=np.int32) for part in text_pieces(text, max_chars)
    ]
    return np.concatenate(parts)


def text_pieces(text: str, max_chars: int) -> Iterator[str]:
    """`text` in consecutive pieces of at most `max_chars`, cut where spaces start."""
    start = 0
    while len(text) - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        while cut > start and text[cut - 1] == " ":  # to the start of the run of spaces
            cut -= 1
        if cut <= start:  # no place to cut between words
            cut = start + max_chars
        yield text[start:cut]
        start = cut
    yield text[start:]
