"""RoPE's sin and cos tables are computed once per compiled step on CPU, exactly.

XLA:CPU counts sin and cos as cheap and would recompute them inside every fusion that
reads them (per element of the queries and keys, forward and backward);
jaxlm.models.rope routes each table through an exact reduction so that it is
materialized once. Checked here on the compiled HLO of a forward + backward over
several layers' queries and keys (one sine and one cosine in the whole program), and
against the plain expression: the same values and gradients bit for bit.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.rope import apply_rope

THETA = 10_000.0
B, T, N, H, LAYERS = 2, 128, 4, 64, 3


def plain_rope(x_BTNH, positions_BT):
    """apply_rope without scaling, written without the table materialization."""
    freqs = 1.0 / (THETA ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
    angles = positions_BT.astype(jnp.float32)[..., None] * freqs
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    first, second = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def layered_loss(rope):
    """A stand-in for a train step's attention inputs: every layer rotates its own
    queries and keys at the same positions."""

    def loss(qs, ks, positions):
        total = 0.0
        for q, k in zip(qs, ks, strict=True):
            total += jnp.sum(rope(q, positions) * rope(k, positions) ** 2)
        return total

    return loss


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    qs = [jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32) for _ in range(LAYERS)]
    ks = [jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32) for _ in range(LAYERS)]
    # Two packed documents in the second row: positions restart at 0.
    positions = np.stack([np.arange(T), np.concatenate([np.arange(40), np.arange(T - 40)])])
    return qs, ks, jnp.asarray(positions, jnp.int32)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion property")
def test_one_sin_and_one_cos_table_per_compiled_step(inputs):
    rope = lambda x, p: apply_rope(x, p, THETA)
    grad = jax.jit(jax.value_and_grad(layered_loss(rope), argnums=(0, 1)))
    hlo = grad.lower(*inputs).compile().as_text()
    assert len(re.findall(r"\bsine\(", hlo)) == 1
    assert len(re.findall(r"\bcosine\(", hlo)) == 1


def test_values_and_gradients_equal_the_plain_expression_bit_for_bit(inputs):
    rope = lambda x, p: apply_rope(x, p, THETA)
    ours = jax.jit(jax.value_and_grad(layered_loss(rope), argnums=(0, 1)))(*inputs)
    plain = jax.jit(jax.value_and_grad(layered_loss(plain_rope), argnums=(0, 1)))(*inputs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q, positions = inputs[0][0], inputs[2]
    np.testing.assert_array_equal(
        np.asarray(jax.jit(rope)(q, positions)), np.asarray(jax.jit(plain_rope)(q, positions))
    )
