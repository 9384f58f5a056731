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
forward + backward takes 32-36 ms instead of 49-53 ms (PyTorch's fused SDPA: 28-30
ms; benchmarks/attention_step.py). Its gradient is written by hand in the compact
softmax form: alone that times the same, but inside the train step, where autodiff's
many passes over the scores fused poorly with the neighbouring layout copies, the
whole step is 4-5% faster (see `_blocked_attention_bwd`). GPUs keep
`jax.nn.dot_product_attention` (or cuDNN).

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
    second matmul, as `jax.nn.dot_product_attention` does. The gradient is written by
    hand (`_blocked_attention_bwd`).
    """
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    G = N // K  # query head n uses kv head n // G
    dtype = q_BTNH.dtype
    q_BKGTH = (q_BTNH * jnp.asarray(H**-0.5, dtype)).reshape(B, T, K, G, H)
    q_BKGTH = q_BKGTH.transpose(0, 2, 3, 1, 4)
    k_BKSH = k_BTKH.transpose(0, 2, 1, 3)
    v_BKSH = v_BTKH.transpose(0, 2, 1, 3)
    out_BKGTH = _blocked_attention(q_BKGTH, k_BKSH, v_BKSH, segment_ids_BT)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H).astype(dtype)


def _block_masks(segment_ids_BT: jax.Array) -> list[tuple[int, int, jax.Array]]:
    """(lo, hi, [B, 1, 1, t, hi] mask) per query block: same document, not in the future."""
    position_T = jnp.arange(segment_ids_BT.shape[1])
    masks = []
    for lo, hi in query_blocks(segment_ids_BT.shape[1]):
        causal_tS = position_T[lo:hi, None] >= position_T[None, :hi]
        same_doc_BtS = segment_ids_BT[:, lo:hi, None] == segment_ids_BT[:, None, :hi]
        masks.append((lo, hi, (same_doc_BtS & causal_tS[None])[:, None, None]))
    return masks


def _blocked_attention_fwd(q_BKGTH, k_BKSH, v_BKSH, segment_ids_BT):
    """Output [B, K, G, T, H] (q already scaled by 1/sqrt(H)), and what the backward
    reads: the inputs, the output and each block's probabilities."""
    out_blocks, probs_blocks = [], []
    for lo, hi, mask_B11tS in _block_masks(segment_ids_BT):
        scores_BKGtS = jnp.einsum(
            "BKGtH,BKSH->BKGtS",
            q_BKGTH[:, :, :, lo:hi],
            k_BKSH[:, :, :hi],
            preferred_element_type=jnp.float32,
        )
        scores_BKGtS = jnp.where(mask_B11tS, scores_BKGtS, -1e30)
        # The shift only keeps exp in range; softmax does not depend on it.
        exp_BKGtS = jnp.exp(scores_BKGtS - jnp.max(scores_BKGtS, axis=-1, keepdims=True))
        probs_BKGtS = exp_BKGtS / jnp.sum(exp_BKGtS, axis=-1, keepdims=True)
        probs_blocks.append(probs_BKGtS)
        out_blocks.append(
            jnp.einsum("BKGtS,BKSH->BKGtH", probs_BKGtS.astype(v_BKSH.dtype), v_BKSH[:, :, :hi])
        )
    out_BKGTH = jnp.concatenate(out_blocks, axis=3) if len(out_blocks) > 1 else out_blocks[0]
    return out_BKGTH, (q_BKGTH, k_BKSH, v_BKSH, segment_ids_BT, out_BKGTH, probs_blocks)


def _blocked_attention_bwd(residuals, dout_BKGTH):
    """The softmax-attention gradient in its compact form, block by block:

        dV = P^T dO    dP = dO V^T    dS = P * (dP - rowsum(dO * O))    dQ = dS K    dK = dS^T Q

    Why by hand: autodiff of the forward differentiates exp, the division by the row
    sum and the mask one by one, each a pass over the [B, K, G, t, S] scores, and XLA:CPU
    fuses those passes with the key gradients' padding and layout copies poorly. The
    compact form is one pass (dS) per block. Measured in the train step (the old and
    new step compiled in one process, steps interleaved; 2-core AMD EPYC Zen 4):
    reference shape 1051 -> 1005 ms and 1008 -> 967 ms, quickstart shape 227.8 ->
    216.0 ms, minimind-26m 4317 -> 4128 ms; losses agree to 2.2e-7 relative. Letting
    the einsums read the [B, T, heads, H] layout directly (no transposes) was slower.
    """
    q_BKGTH, k_BKSH, v_BKSH, segment_ids_BT, out_BKGTH, probs_blocks = residuals
    f32 = jnp.float32
    # rowsum(dO * O) = rowsum(P * dP): the softmax's correction, per query row.
    row_BKGT1 = jnp.sum(dout_BKGTH.astype(f32) * out_BKGTH.astype(f32), axis=-1, keepdims=True)
    dk_BKSH = jnp.zeros(k_BKSH.shape, f32)
    dv_BKSH = jnp.zeros(v_BKSH.shape, f32)
    dq_blocks = []
    for (lo, hi, _), probs_BKGtS in zip(_block_masks(segment_ids_BT), probs_blocks, strict=True):
        dout_BKGtH = dout_BKGTH[:, :, :, lo:hi]
        dv_BKSH = dv_BKSH.at[:, :, :hi].add(
            jnp.einsum(
                "BKGtS,BKGtH->BKSH",
                probs_BKGtS.astype(v_BKSH.dtype),
                dout_BKGtH,
                preferred_element_type=f32,
            )
        )
        dprobs_BKGtS = jnp.einsum(
            "BKGtH,BKSH->BKGtS", dout_BKGtH, v_BKSH[:, :, :hi], preferred_element_type=f32
        )
        # Masked positions have probability 0, so their score gradient is exactly 0.
        dscores_BKGtS = probs_BKGtS * (dprobs_BKGtS - row_BKGT1[:, :, :, lo:hi])
        dq_blocks.append(
            jnp.einsum(
                "BKGtS,BKSH->BKGtH",
                dscores_BKGtS.astype(k_BKSH.dtype),
                k_BKSH[:, :, :hi],
                preferred_element_type=f32,
            )
        )
        dk_BKSH = dk_BKSH.at[:, :, :hi].add(
            jnp.einsum(
                "BKGtS,BKGtH->BKSH",
                dscores_BKGtS.astype(q_BKGTH.dtype),
                q_BKGTH[:, :, :, lo:hi],
                preferred_element_type=f32,
            )
        )
    dq_BKGTH = jnp.concatenate(dq_blocks, axis=3) if len(dq_blocks) > 1 else dq_blocks[0]
    return (
        dq_BKGTH.astype(q_BKGTH.dtype),
        dk_BKSH.astype(k_BKSH.dtype),
        dv_BKSH.astype(v_BKSH.dtype),
        None,  # segment ids: integers, no gradient
    )


@jax.custom_vjp
def _blocked_attention(q_BKGTH, k_BKSH, v_BKSH, segment_ids_BT):
    return _blocked_attention_fwd(q_BKGTH, k_BKSH, v_BKSH, segment_ids_BT)[0]


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


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
