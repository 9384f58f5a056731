"""The tied output head, logits = x @ E^T in float32, with a CPU-shaped table gradient.

The head is the step's largest matmul (at the reference shape, [4096 tokens, 256] x
[256, 8192 vocab], three times per step: forward, input gradient, weight gradient).
With tied embeddings the weight is the [V, D] embedding table read transposed, so its
gradient is wanted as [V, D]: autodiff writes x^T dlogits and a transpose, XLA:CPU
folds the transpose into the dot and computes dlogits^T x instead, whose operand is
the [tokens, V] logits gradient contracted on its major axis, so it first copies all
of it transposed (128 MB at the reference shape, 33 ms) and then runs the dot.
`tied_unembed` computes the same x^T dlogits with the small operand transposed (x^T,
4 MB), keeps the [D, V] result, and transposes that (8 MB); optimization barriers keep
XLA from folding either transpose back into the dot. Alone, its logits and gradients
are bit for bit what autodiff gives (tests check it, and so did a check at the
quickstart's shape with masked tokens); inside a whole train step XLA fuses the
neighbours differently and the losses are not always bitwise the same: identical in
the golden test and at the benchmark shapes over 14-21 steps, but in the quickstart's
1600 steps they first differ in the 8th digit near step 40 (held-out 1.5416 against
1.5434 bits/byte at the end: rounding, not a different curve). Faster: interleaved
A/Bs of the train step on a 2-core AMD EPYC Zen 4 (old and new compiled in one
process, steps alternated): reference shape 933 -> 893 ms and 914 -> 878 ms,
quickstart shape 227 -> 202 ms, minimind-26m 3872 -> 3865 ms (its head is a smaller
part of its step).

An untied head's [D, V] weight needs no transpose: autodiff's x^T dlogits runs without
the copy there, so it keeps the plain path. Only the CPU backend takes this one;
elsewhere (GPU: cuBLAS reads either layout) the plain einsum and autodiff are used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tied_unembed(x_BTD: jax.Array, table_VD: jax.Array) -> jax.Array:
    """Float32 logits [B, T, V] = x @ table^T; on CPU with the table gradient above."""
    if jax.default_backend() != "cpu":
        return unembed(x_BTD, table_VD.T)
    return _tied_unembed_cpu(x_BTD, table_VD)


def unembed(x_BTD: jax.Array, w_DV: jax.Array) -> jax.Array:
    """Float32 logits [B, T, V] = x @ w, plain autodiff."""
    return jnp.einsum("BTD,DV->BTV", x_BTD, w_DV, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _tied_unembed_cpu(x_BTD: jax.Array, table_VD: jax.Array) -> jax.Array:
    return unembed(x_BTD, table_VD.T)


def _tied_unembed_fwd(x_BTD, table_VD):
    return unembed(x_BTD, table_VD.T), (x_BTD, table_VD)


def _tied_unembed_bwd(residuals, dlogits_BTV):
    x_BTD, table_VD = residuals
    # The input gradient as autodiff writes it, dlogits E (no transpose of the large
    # operand is needed there).
    dx_BTD = jax.lax.dot_general(
        dlogits_BTV, table_VD, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32
    ).astype(x_BTD.dtype)
    # The table gradient: the dot_general autodiff's transpose rule writes, x^T dlogits
    # (operand dtypes, float32 result, then the table's dtype), with x^T materialized
    # rather than folded into the dot, and the [D, V] result transposed after it.
    B, T, D = x_BTD.shape
    x_DK = jax.lax.optimization_barrier(x_BTD.reshape(B * T, D).T)
    dw_DV = jax.lax.dot_general(
        x_DK,
        dlogits_BTV.reshape(B * T, -1),
        (((1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    dtable_VD = jax.lax.optimization_barrier(dw_DV).T
    return dx_BTD, dtable_VD.astype(table_VD.dtype)


_tied_unembed_cpu.defvjp(_tied_unembed_fwd, _tied_unembed_bwd)
