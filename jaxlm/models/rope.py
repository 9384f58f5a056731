"""Rotary position embeddings (RoPE), half-split layout as in Llama checkpoints.

Positions come from the batch (they reset at each packed document), so the same code
serves packed training, unpacked evaluation and cached decoding.

Dimension legend: B batch, T sequence, N heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """Inverse frequencies theta^(-2i/H) for i in [0, H/2)."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (theta**exponents)


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotate pairs (x[i], x[i + H/2]) by position * frequency[i], in float32."""
    head_dim = x_BTNH.shape[-1]
    freqs = rope_frequencies(head_dim, theta)
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * freqs
    sin = jnp.sin(angles_BTh)[:, :, None, :]
    cos = jnp.cos(angles_BTh)[:, :, None, :]
    x32 = x_BTNH.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x_BTNH.dtype)
