"""Losses as sums over supervised tokens, so micro-batches and hosts add up exactly.

A step divides the summed loss by the summed token count once, over the whole global
batch; averaging per-micro-batch means instead would weight micro-batches with few
supervised tokens too heavily, and gradient accumulation would no longer equal the
large-batch step.

Dimension legend: B batch, T sequence, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    """Per-batch sums; divide by `num_tokens` for means."""

    nll: jax.Array  # summed next-token negative log-likelihood, nats
    z: jax.Array  # summed squared log-partition (PaLM's z-loss term)
    num_tokens: jax.Array  # supervised tokens (sum of loss_mask)


def token_nll(logits_BTV: jax.Array, targets_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood and log-partition, both float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return log_z_BT - target_logit_BT, log_z_BT


def next_token_loss_sums(
    logits_BTV: jax.Array, targets_BT: jax.Array, loss_mask_BT: jax.Array
) -> LossSums:
    """Masked sums of cross-entropy and z-loss; serves pretraining and SFT alike."""
    nll_BT, log_z_BT = token_nll(logits_BTV, targets_BT)
    mask_BT = loss_mask_BT.astype(jnp.float32)
    return LossSums(
        nll=jnp.sum(nll_BT * mask_BT),
        z=jnp.sum(jnp.square(log_z_BT) * mask_BT),
        num_tokens=jnp.sum(mask_BT),
    )


def safe_mean(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, defined as 0 when nothing was supervised (never 0/0 = NaN)."""
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)
