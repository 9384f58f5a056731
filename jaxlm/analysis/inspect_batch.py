"""Show a packed batch the way the model sees it: segments, positions, and loss.

`render_batch` prints each row segment by segment: its segment id, position range,
how many of its tokens are trained, and the decoded text in which every stretch of
tokens that carries NO loss is wrapped in ⟦…⟧ (prompts, system turns, the last token
of a document, padding). `token_table` lists single tokens; `plot_batch` draws the
[B, T] grid (segments as colours, untrained tokens hatched) to a PNG.

The loss mask lives on the input position t and trains the prediction of targets[t]
(= tokens[t + 1]); a token is shown as "trained" when some position predicts it,
i.e. when loss_mask[t - 1] is 1, which is what a reader of a chat transcript means.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxlm.analysis.plotting import new_figure

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"


def predicted(batch: dict[str, np.ndarray]) -> np.ndarray:
    """[B, T] bool: token t is a training target (loss_mask[t - 1] == 1)."""
    mask = np.zeros_like(batch["loss_mask"], dtype=bool)
    mask[:, 1:] = batch["loss_mask"][:, :-1] != 0
    return mask


def render_batch(
    batch: dict[str, np.ndarray],
    decode: Callable[[list[int]], str],
    *,
    rows: int | None = None,
    max_chars: int = 400,
) -> str:
    """A readable dump of the first `rows` rows; texts longer than `max_chars` are cut."""
    trained = predicted(batch)
    tokens, segments, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    B, T = tokens.shape
    real = int((segments != 0).sum())
    lines = [
        f"batch [{B}, {T}]: {real} real tokens ({real / tokens.size:.1%}), "
        f"{int(batch['loss_mask'].sum())} carry loss; {MASK_OPEN}…{MASK_CLOSE} = no loss"
    ]
    for row in range(B if rows is None else min(rows, B)):
        seg_row = segments[row]
        lines.append(f"row {row}: {len(np.unique(seg_row[seg_row != 0]))} segments, "
                     f"{int((seg_row == 0).sum())} padding")  # fmt: skip
        for seg in np.unique(seg_row[seg_row != 0]):
            where = np.flatnonzero(seg_row == seg)
            pos = positions[row, where]
            text = _marked_text(tokens[row, where], trained[row, where], decode)
            if len(text) > max_chars:
                text = text[: max_chars // 2] + " … " + text[-max_chars // 2 :]
            lines.append(
                f"  seg {int(seg)} cols {where[0]}-{where[-1]} pos {int(pos[0])}-{int(pos[-1])} "
                f"trained {int(trained[row, where].sum())}/{len(where)}: {text!r}"
            )
    return "\n".join(lines)


def _marked_text(tokens: np.ndarray, trained: np.ndarray, decode) -> str:
    """Decoded text with untrained stretches wrapped in MASK_OPEN…MASK_CLOSE."""
    parts, start = [], 0
    for end in range(1, len(tokens) + 1):
        if end == len(tokens) or trained[end] != trained[start]:
            text = decode([int(t) for t in tokens[start:end]])
            if text and not trained[start]:
                text = f"{MASK_OPEN}{text}{MASK_CLOSE}"
            parts.append(text)  # an untrained BOS alone decodes to "" and shows nothing
            start = end
    return "".join(parts)


def token_table(
    batch: dict[str, np.ndarray], piece: Callable[[int], str], *, row: int = 0, limit: int = 64
) -> str:
    """One line per token of `row`: column, id, piece, segment, position, target, loss."""
    lines = ["col    id  piece                 seg  pos  target  loss"]
    for t in range(min(limit, batch["tokens"].shape[1])):
        token = int(batch["tokens"][row, t])
        lines.append(
            f"{t:3d} {token:5d}  {piece(token)!r:20.20s} {int(batch['segment_ids'][row, t]):4d} "
            f"{int(batch['positions'][row, t]):4d} {int(batch['targets'][row, t]):7d} "
            f"{int(batch['loss_mask'][row, t]):5d}"
        )
    return "\n".join(lines)


def plot_batch(batch: dict[str, np.ndarray], out_png: Path) -> Path:
    """[B, T] picture: colour = segment (white = padding), grey overlay = no loss."""
    segments = batch["segment_ids"].astype(float)
    shown = np.ma.masked_where(segments == 0, segments)
    B, T = segments.shape
    fig = new_figure(figsize=(min(16, 2 + T / 32), 1 + B * 0.35), dpi=120)
    ax = fig.subplots()
    ax.imshow(shown, aspect="auto", cmap="tab20", interpolation="nearest")
    no_loss = (batch["loss_mask"] == 0) & (batch["segment_ids"] != 0)
    ax.imshow(np.ma.masked_where(~no_loss, no_loss), aspect="auto", cmap="Greys",
              alpha=0.45, vmin=0, vmax=1, interpolation="nearest")  # fmt: skip
    ax.set_xlabel("position in row (grey: no loss at this position)")
    ax.set_ylabel("row")
    ax.set_title("packed batch: one colour per segment, white = padding")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
