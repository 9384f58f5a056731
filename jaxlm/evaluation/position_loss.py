"""Mean next-token loss by position: how well a model uses (and extends) its context.

    result = position_loss(cfg, graphdef, params, documents, seq_len=512)
    result.loss    numpy [T]: mean loss (nats) of predicting token p + 1 from tokens 0..p
    result.docs    how many documents the means are over

Every document of at least T + 1 tokens is cut to its first T + 1 tokens and put in a
row of its own, starting at position 0 (no packing: position p of every row is the
document's p-th token). Documents shorter than that are skipped, so every position
averages the same documents and the curve compares positions like for like. Loss
climbing past the training length shows a model failing to extrapolate; RoPE
scaling (jaxlm.models.rope) is meant to keep it flat or falling.

The forward pass is `nnx.merge(graphdef, params)(tokens)` (float32 logits), jitted
once per batch shape; the last batch is padded with empty rows that are left out of
the means.

Dimension legend: B batch, T sequence, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import Config, ModelConfig
from jaxlm.training.losses import token_nll


class PositionLoss(NamedTuple):
    loss: np.ndarray  # [T] float64 mean next-token loss at each position, nats
    docs: int  # documents averaged at every position


def document_rows(
    documents: Iterable[Sequence[int] | np.ndarray], seq_len: int, *, max_docs: int = 0
) -> np.ndarray:
    """int32 [N, T + 1]: the first T + 1 tokens of each document that has that many.

    In the documents' order; at most `max_docs` rows when it is > 0.
    """
    rows = []
    for doc in documents:
        tokens = np.asarray(doc, dtype=np.int32)
        if tokens.ndim != 1:
            raise ValueError(f"a document must be a 1-D token sequence, got shape {tokens.shape}")
        if len(tokens) >= seq_len + 1:
            rows.append(tokens[: seq_len + 1])
            if max_docs and len(rows) == max_docs:
                break
    return np.stack(rows) if rows else np.zeros((0, seq_len + 1), np.int32)


@partial(jax.jit, static_argnums=0)
def _row_losses(graphdef: nnx.GraphDef, params: nnx.State, rows_BT1: jax.Array) -> jax.Array:
    """float32 [B, T]: the next-token loss at every position of every row."""
    model = nnx.merge(graphdef, params)
    logits_BTV = model(rows_BT1[:, :-1])
    nll_BT, _ = token_nll(logits_BTV, rows_BT1[:, 1:])
    return nll_BT


def position_loss(
    cfg: Config | ModelConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    documents: Iterable[Sequence[int] | np.ndarray],
    *,
    seq_len: int,
    batch_size: int = 8,
    max_docs: int = 0,
) -> PositionLoss:
    """Per-position mean loss over documents of at least `seq_len` + 1 tokens.

    `cfg` is the model's config (a Config or its ModelConfig; LoadedModel.cfg fits):
    it must be the one `graphdef` was built from, and its model.max_seq_len must allow
    `seq_len` (override it to evaluate past the training length). Raises ValueError
    when no document is long enough.
    """
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    built_with = getattr(nnx.merge(graphdef, params), "cfg", model_cfg)
    if built_with != model_cfg:
        raise ValueError("position_loss: graphdef was built from another ModelConfig than cfg")
    if seq_len > model_cfg.max_seq_len:
        raise ValueError(
            f"position_loss: seq_len={seq_len} exceeds model.max_seq_len="
            f"{model_cfg.max_seq_len}; override model.max_seq_len to evaluate past it"
        )
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    rows = document_rows(documents, seq_len, max_docs=max_docs)
    if not len(rows):
        raise ValueError(f"position_loss: no document has {seq_len + 1} tokens or more")
    params = jax.device_put(params)  # once, not per batch (host numpy from a checkpoint)
    total_T = np.zeros(seq_len, np.float64)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        real = len(batch)
        if real < batch_size:  # one compiled shape: pad with rows left out of the sums
            batch = np.concatenate([batch, np.zeros((batch_size - real, seq_len + 1), np.int32)])
        nll_BT = np.asarray(_row_losses(graphdef, params, jnp.asarray(batch)))
        total_T += nll_BT[:real].astype(np.float64).sum(axis=0)
    return PositionLoss(loss=total_T / len(rows), docs=len(rows))


def mean_over(loss_T: np.ndarray, start: int, stop: int) -> float:
    """Mean of a position-loss curve over positions [start, stop)."""
    window = np.asarray(loss_T)[start:stop]
    if not len(window):
        raise ValueError(f"positions [{start}, {stop}) are outside a curve of {len(loss_T)}")
    return float(window.mean())
