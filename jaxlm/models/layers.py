"""Small building blocks shared by the transformer: RMSNorm and SwiGLU.

Dimension legend: B batch, T sequence, M = B * T tokens, D model width, F feed-forward
width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32 (bf16 variance is too coarse), returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale.astype(jnp.float32)).astype(x.dtype)


def swiglu(
    x_BTD: jax.Array, w_gate_DF: jax.Array, w_up_DF: jax.Array, w_down_FD: jax.Array
) -> jax.Array:
    """Llama feed-forward: down(silu(x @ gate) * (x @ up)).

    Works on the tokens flattened to one axis, M = B * T (a free reshape; any leading
    shape is accepted and restored). Same math, but XLA:CPU then fuses silu * up over
    a 2-D [M, F] array: in 3-D, between the 2-D dots, its fusion ran ~4x slower and the
    whole MLP forward took 20 ms instead of 10.5 ms (B*T=4096, D=256, F=704).
    """
    x_MD = x_BTD.reshape(-1, x_BTD.shape[-1])
    gate_MF = jnp.einsum("MD,DF->MF", x_MD, w_gate_DF)
    up_MF = jnp.einsum("MD,DF->MF", x_MD, w_up_DF)
    out_MD = jnp.einsum("MF,FD->MD", jax.nn.silu(gate_MF) * up_MF, w_down_FD)
    return out_MD.reshape(*x_BTD.shape[:-1], out_MD.shape[-1])
