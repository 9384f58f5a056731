"""Small building blocks shared by the transformer: RMSNorm and SwiGLU.

Dimension legend: B batch, T sequence, D model width, F feed-forward width.
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
    """Llama feed-forward: down(silu(x @ gate) * (x @ up))."""
    gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, w_gate_DF)
    up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, w_up_DF)
    return jnp.einsum("BTF,FD->BTD", jax.nn.silu(gate_BTF) * up_BTF, w_down_FD)
