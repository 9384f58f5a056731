"""Segment-aware causal attention with grouped-query heads.

A token attends to earlier tokens of its own packed document only: the mask is
`causal & (segment_q == segment_k)`. Padding (segment 0) attends to padding, so no
softmax row is empty; padding never carries loss.

`attention` dispatches to `jax.nn.dot_product_attention` ("xla" or "cudnn") or to
`naive_attention`, the plain-einsum reference that tests compare against.

Dimension legend: B batch, T query length, S key length, N query heads, K kv heads,
G = N / K query heads per kv head, H head dim.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp


def segment_mask(segment_ids_q_BT: jax.Array, segment_ids_k_BS: jax.Array) -> jax.Array:
    """[B, 1, T, S] boolean: same document (causality is added separately)."""
    return (segment_ids_q_BT[:, :, None] == segment_ids_k_BS[:, None, :])[:, None]


def causal_segment_mask(segment_ids_BT: jax.Array) -> jax.Array:
    """[B, 1, T, T] boolean: same document and not in the future."""
    T = segment_ids_BT.shape[1]
    causal_TT = jnp.tril(jnp.ones((T, T), dtype=bool))
    return segment_mask(segment_ids_BT, segment_ids_BT) & causal_TT[None, None]


def naive_attention(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_B1TS: jax.Array
) -> jax.Array:
    """Reference attention in float32 with explicit head repetition (tests only)."""
    N, K = q_BTNH.shape[2], k_BSKH.shape[2]
    k_BSNH = jnp.repeat(k_BSKH, N // K, axis=2).astype(jnp.float32)
    v_BSNH = jnp.repeat(v_BSKH, N // K, axis=2).astype(jnp.float32)
    q_BTNH32 = q_BTNH.astype(jnp.float32)
    scores_BNTS = jnp.einsum("BTNH,BSNH->BNTS", q_BTNH32, k_BSNH) / jnp.sqrt(q_BTNH.shape[-1])
    scores_BNTS = jnp.where(mask_B1TS, scores_BNTS, -1e30)
    probs_BNTS = jax.nn.softmax(scores_BNTS, axis=-1)
    out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs_BNTS, v_BSNH)
    return out_BTNH.astype(q_BTNH.dtype)


def attention(
    q_BTNH: jax.Array,
    k_BTKH: jax.Array,
    v_BTKH: jax.Array,
    segment_ids_BT: jax.Array,
    *,
    implementation: Literal["xla", "cudnn", "naive"] = "xla",
) -> jax.Array:
    """Causal attention within packed documents."""
    if implementation == "naive":
        return naive_attention(q_BTNH, k_BTKH, v_BTKH, causal_segment_mask(segment_ids_BT))
    return jax.nn.dot_product_attention(
        q_BTNH,
        k_BTKH,
        v_BTKH,
        mask=segment_mask(segment_ids_BT, segment_ids_BT),
        is_causal=True,
        implementation=implementation,
    )
