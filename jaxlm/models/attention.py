"""Segment-aware causal attention with grouped-query heads.

A token attends to earlier tokens of its own packed document only: the mask is
`causal & (segment_q == segment_k)`. Padding (segment 0) attends to padding, so no
softmax row is empty; padding never carries loss.

`attention` dispatches to `jax.nn.dot_product_attention` ("xla" or "cudnn"), to
`blocked_causal_attention` ("blocked"; what "xla" runs on the CPU backend), or to
`naive_attention`, the plain-einsum reference that tests compare against.

Why a CPU-specific path: XLA:CPU runs the [B*N] small batched matmuls of attention
on one thread and spends more time on the [B, N, T, T] mask, softmax and their
gradients than on the matmuls. Splitting the queries into blocks that only see the
keys up to their own end skips the masked upper triangle (at 4 blocks, 10/16 of the
work) and gives the thunk executor independent pieces to run side by side. At the
train benchmark's reference shape (B16 T256 N4 H64, 2-core AMD EPYC) one layer's
forward + backward takes 32-35 ms instead of 53 ms (PyTorch's fused SDPA: 28 ms;
benchmarks/attention_step.py). GPUs keep `jax.nn.dot_product_attention` (or cuDNN).

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


MIN_BLOCK = 64  # query rows per block: smaller blocks lose more to per-op overhead
MAX_BLOCKS = 8  # bounds the unrolled graph; (n + 1) / 2n of the work is left at n blocks


def query_blocks(T: int) -> list[tuple[int, int]]:
    """[lo, hi) query ranges for `blocked_causal_attention`: one block when T is short
    or does not split evenly (then it is plain masked attention)."""
    size = max(MIN_BLOCK, -(-T // MAX_BLOCKS))
    if size >= T or T % size:
        return [(0, T)]
    return [(lo, lo + size) for lo in range(0, T, size)]


def blocked_causal_attention(
    q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, segment_ids_BT: jax.Array
) -> jax.Array:
    """Causal attention within packed documents, computed per block of queries.

    Query block [lo, hi) attends to keys [0, hi) only: everything after is masked by
    causality, so those scores are never computed. Each block is an exact softmax over
    its own key prefix (no running max/sum as in flash attention: the whole prefix is
    in one block), so the result equals full masked attention up to float rounding.
    Scores and softmax are float32; the probabilities are cast to v's dtype for the
    second matmul, as `jax.nn.dot_product_attention` does.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    G = N // K  # query head n uses kv head n // G
    dtype = q_BTNH.dtype
    q_BKGTH = (q_BTNH * jnp.asarray(H**-0.5, dtype)).reshape(B, T, K, G, H)
    q_BKGTH = q_BKGTH.transpose(0, 2, 3, 1, 4)
    k_BKSH = k_BTKH.transpose(0, 2, 1, 3)
    v_BKSH = v_BTKH.transpose(0, 2, 1, 3)
    position_T = jnp.arange(T)
    out_blocks = []
    for lo, hi in query_blocks(T):
        scores_BKGtS = jnp.einsum(
            "BKGtH,BKSH->BKGtS",
            q_BKGTH[:, :, :, lo:hi],
            k_BKSH[:, :, :hi],
            preferred_element_type=jnp.float32,
        )
        causal_tS = position_T[lo:hi, None] >= position_T[None, :hi]
        same_doc_BtS = segment_ids_BT[:, lo:hi, None] == segment_ids_BT[:, None, :hi]
        mask_B11tS = (same_doc_BtS & causal_tS[None])[:, None, None]
        scores_BKGtS = jnp.where(mask_B11tS, scores_BKGtS, -1e30)
        # The shift only keeps exp in range; softmax does not depend on it, so its
        # gradient is skipped (saves the backward of the max).
        shift_BKGt1 = jax.lax.stop_gradient(jnp.max(scores_BKGtS, axis=-1, keepdims=True))
        exp_BKGtS = jnp.exp(scores_BKGtS - shift_BKGt1)
        probs_BKGtS = exp_BKGtS / jnp.sum(exp_BKGtS, axis=-1, keepdims=True)
        out_blocks.append(
            jnp.einsum("BKGtS,BKSH->BKGtH", probs_BKGtS.astype(v_BKSH.dtype), v_BKSH[:, :, :hi])
        )
    out_BKGTH = jnp.concatenate(out_blocks, axis=3) if len(out_blocks) > 1 else out_blocks[0]
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H).astype(dtype)


def attention(
    q_BTNH: jax.Array,
    k_BTKH: jax.Array,
    v_BTKH: jax.Array,
    segment_ids_BT: jax.Array,
    *,
    implementation: Literal["xla", "cudnn", "blocked", "naive"] = "xla",
) -> jax.Array:
    """Causal attention within packed documents.

    "xla" on the CPU backend runs `blocked_causal_attention` when the sequence splits
    into more than one block (T >= 128); elsewhere, and for shorter sequences (nothing
    to skip), `jax.nn.dot_product_attention`.
    """
    if implementation == "naive":
        return naive_attention(q_BTNH, k_BTKH, v_BTKH, causal_segment_mask(segment_ids_BT))
    blocked = implementation == "blocked" or (
        implementation == "xla" and jax.default_backend() == "cpu"
    )
    if blocked:
        if len(query_blocks(q_BTNH.shape[1])) > 1:
            return blocked_causal_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
        implementation = "xla"
    return jax.nn.dot_product_attention(
        q_BTNH,
        k_BTKH,
        v_BTKH,
        mask=segment_mask(segment_ids_BT, segment_ids_BT),
        is_causal=True,
        implementation=implementation,
    )
