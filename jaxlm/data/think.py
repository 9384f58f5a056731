"""Reasoning traces in assistant turns: `<think>…</think>` spans and their loss weight.

Reasoning data (MiniMind's R1 distillation set, DeepSeek-R1 style) writes the
reasoning inside the assistant's answer:

    <think>\\n让我想想……\\n</think>\\n答案是 8。

`data.think_loss_weight` scales the loss on those tokens: 1.0 (the default) trains
them like any answer token, 0.0 excludes them, anything between down-weights them.

What counts as the span: the whole block, *tags included*, from the first character
of `<think>` to the last of `</think>`; what follows the closing tag (newlines, the
answer) and the turn's `<|im_end|>` keep weight 1. With the tags inside the span, 0.0
removes the reasoning block as a whole from what the model learns to produce; the
answer is still learnt with the reasoning in its context. An unclosed `<think>` (a
trace cut short) runs to the end of the turn; a `</think>` without an opening tag
(templates that put `<think>` in the prompt) closes a span that starts with the turn.

With a weight other than 1 the content is encoded piece by piece, cut at the span's
edges, so no token straddles a boundary and the weighted tokens are exactly those of
the span (SentencePiece may then split the text at a tag differently than when the
content is encoded whole; with 1.0 nothing changes).
"""

from __future__ import annotations

import numpy as np

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def think_pieces(text: str) -> list[tuple[str, bool]]:
    """`text` cut into consecutive (piece, in_think) parts; "".join(pieces) == text."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    opened, closed = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    if closed != -1 and (opened == -1 or closed < opened):  # "…</think>" opens with the turn
        position = closed + len(THINK_CLOSE)
        pieces.append((text[:position], True))
    while (start := text.find(THINK_OPEN, position)) != -1:
        end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
        end = len(text) if end == -1 else end + len(THINK_CLOSE)
        if start > position:
            pieces.append((text[position:start], False))
        pieces.append((text[start:end], True))
        position = end
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces


def loss_mask_dtype(think_loss_weight: float) -> type:
    """int32 while every weight is 0 or 1 (the batch schema as ever), float32 otherwise.

    Every batch of a run, filler batches included, has the same dtype, so each step
    compiles once and all hosts run the same program.
    """
    return np.int32 if think_loss_weight in (0.0, 1.0) else np.float32
