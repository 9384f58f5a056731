"""Show a batch the way the model sees it: segments, positions, and loss.

`render_batch` prints each row of a packed `[B, T]` batch (pretraining, SFT) segment
by segment: its segment id, position range, how many of its tokens are trained, and
the decoded text in which every stretch of tokens that carries NO loss is wrapped in
⟦…⟧ (prompts, system and user turns, role headers, the last token of a document,
padding), and every stretch trained with a weight other than 1 (e.g. a down-weighted
`<think>` span: jaxlm.data.think) in ⟨…⟩×w. `render_pairs` does the same for a
preference batch `[B, 2, T]`: each pair's chosen and rejected conversation, where only
the final response carries loss. `token_table` lists single tokens; `plot_batch` draws
the grid (segments as colours, untrained tokens hatched) to a PNG.

The loss mask lives on the input position t and trains the prediction of targets[t]
(= tokens[t + 1]); a token is shown as "trained" when some position predicts it,
i.e. when loss_mask[t - 1] is not 0, which is what a reader of a chat transcript means.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxlm.analysis.plotting import new_figure

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"
WEIGHT_OPEN, WEIGHT_CLOSE = "⟨", "⟩"


def token_weights(batch: dict[str, np.ndarray]) -> np.ndarray:
    """[..., T] float: the loss weight on predicting token t (loss_mask[t - 1]; 0 at t = 0)."""
    weights = np.zeros(batch["loss_mask"].shape, dtype=np.float32)
    weights[..., 1:] = batch["loss_mask"][..., :-1]
    return weights


def predicted(batch: dict[str, np.ndarray]) -> np.ndarray:
    """[..., T] bool: token t is a training target (loss_mask[t - 1] != 0)."""
    return token_weights(batch) != 0


def _legend(batch: dict[str, np.ndarray]) -> str:
    mask = batch["loss_mask"]
    carried = f"{int(np.count_nonzero(mask))} carry loss"
    legend = f"{MASK_OPEN}…{MASK_CLOSE} = no loss"
    if np.any((mask != 0) & (mask != 1)):
        carried += f" (total weight {float(mask.sum()):g})"
        legend += f", {WEIGHT_OPEN}…{WEIGHT_CLOSE}×w = loss weight w"
    return f"{carried}; {legend}"


def render_batch(
    batch: dict[str, np.ndarray],
    decode: Callable[[list[int]], str],
    *,
    rows: int | None = None,
    max_chars: int = 400,
) -> str:
    """A readable dump of the first `rows` rows; texts longer than `max_chars` are cut."""
    tokens, segments = batch["tokens"], batch["segment_ids"]
    B, T = tokens.shape
    real = int((segments != 0).sum())
    lines = [f"batch [{B}, {T}]: {real} real tokens ({real / tokens.size:.1%}), {_legend(batch)}"]
    weights = token_weights(batch)
    for row in range(B if rows is None else min(rows, B)):
        seg_row = segments[row]
        lines.append(f"row {row}: {len(np.unique(seg_row[seg_row != 0]))} segments, "
                     f"{int((seg_row == 0).sum())} padding")  # fmt: skip
        lines += _segments(batch, weights, row, decode, max_chars, indent="  ")
    return "\n".join(lines)


def render_pairs(
    batch: dict[str, np.ndarray],
    decode: Callable[[list[int]], str],
    *,
    rows: int | None = None,
    max_chars: int = 400,
    wheres: list[str] | None = None,
) -> str:
    """A preference batch `[B, 2, T]`: per pair (`wheres`: its file:line), the chosen
    and the rejected conversation with their masks."""
    B, _, T = batch["tokens"].shape
    valid = int(np.sum(np.all(batch["loss_mask"].sum(axis=-1) > 0, axis=-1)))
    lines = [
        f"pairs [{B}, 2, {T}]: {valid} with a response on both sides, {_legend(batch)}; "
        "only the final assistant response carries loss"
    ]
    weights = token_weights(batch)
    for pair in range(B if rows is None else min(rows, B)):
        where = f" ({wheres[pair]})" if wheres and pair < len(wheres) else ""
        if not batch["segment_ids"][pair].any():
            lines.append(f"pair {pair}: empty (filler)")
            continue
        lines.append(f"pair {pair}{where}:")
        for choice, name in enumerate(("chosen", "rejected")):
            side = {key: batch[key][pair] for key in ("tokens", "segment_ids", "positions")}
            for line in _segments(side, weights[pair], choice, decode, max_chars, indent=""):
                lines.append(f"  {name:8s} {line}")
    return "\n".join(lines)


def _segments(batch, weights, row, decode, max_chars, *, indent) -> list[str]:
    tokens, segments, positions = batch["tokens"], batch["segment_ids"], batch["positions"]
    seg_row = segments[row]
    lines = []
    for seg in np.unique(seg_row[seg_row != 0]):
        where = np.flatnonzero(seg_row == seg)
        pos = positions[row, where]
        text = _marked_text(tokens[row, where], weights[row, where], decode)
        if len(text) > max_chars:
            text = text[: max_chars // 2] + " … " + text[-max_chars // 2 :]
        trained = int(np.count_nonzero(weights[row, where]))
        lines.append(
            f"{indent}seg {int(seg)} cols {where[0]}-{where[-1]} pos {int(pos[0])}-{int(pos[-1])} "
            f"trained {trained}/{len(where)}: {text!r}"
        )
    return lines


def _marked_text(tokens: np.ndarray, weights: np.ndarray, decode) -> str:
    """Decoded text with untrained stretches in ⟦…⟧ and other-than-1 weights in ⟨…⟩×w."""
    parts, start = [], 0
    for end in range(1, len(tokens) + 1):
        if end == len(tokens) or weights[end] != weights[start]:
            text = decode([int(t) for t in tokens[start:end]])
            weight = float(weights[start])
            if text and weight == 0:
                text = f"{MASK_OPEN}{text}{MASK_CLOSE}"
            elif text and weight != 1:
                text = f"{WEIGHT_OPEN}{text}{WEIGHT_CLOSE}×{weight:g}"
            parts.append(text)  # an untrained BOS alone decodes to "" and shows nothing
            start = end
    return "".join(parts)


def _rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[B, 2, T] preference batches as [2B, T] rows (chosen, rejected, chosen, ...)."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items() if not k.startswith("_")}


def token_table(
    batch: dict[str, np.ndarray], piece: Callable[[int], str], *, row: int = 0, limit: int = 64
) -> str:
    """One line per token of `row`: column, id, piece, segment, position, target, loss
    weight. Preference batches count rows as chosen, rejected, chosen, ..."""
    batch = _rows(batch)
    lines = ["col    id  piece                 seg  pos  target  loss"]
    for t in range(min(limit, batch["tokens"].shape[1])):
        token = int(batch["tokens"][row, t])
        lines.append(
            f"{t:3d} {token:5d}  {piece(token)!r:20.20s} {int(batch['segment_ids'][row, t]):4d} "
            f"{int(batch['positions'][row, t]):4d} {int(batch['targets'][row, t]):7d} "
            f"{float(batch['loss_mask'][row, t]):5g}"
        )
    return "\n".join(lines)


def plot_batch(batch: dict[str, np.ndarray], out_png: Path) -> Path:
    """[B, T] picture: colour = segment (white = padding), grey overlay = no loss."""
    batch = _rows(batch)
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
