"""The tied head's CPU table gradient (jaxlm.models.unembed.tied_unembed).

The same logits and gradients as autodiff of the plain einsum over the transposed
table, bit for bit in float32, close in bfloat16; and the compiled gradient no longer
copies the [tokens, V] logits gradient transposed, which is what it is for.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.unembed import tied_unembed, unembed

B, T, D, V = 4, 128, 64, 1024


def plain_tied(x_BTD, table_VD):
    return unembed(x_BTD, table_VD.T)


def head_loss(head):
    """Cross-entropy over the head's logits, as the train step's loss reads them."""

    def loss(x, table, targets):
        logp = jax.nn.log_softmax(head(x, table))
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def inputs(dtype, t=T):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, t, D)), dtype)
    table = jnp.asarray(rng.standard_normal((V, D)) * 0.05, dtype)
    targets = jnp.asarray(rng.integers(0, V, (B, t)), jnp.int32)
    return x, table, targets


@pytest.mark.parametrize("t", [T, 37])
def test_float32_logits_and_gradients_equal_autodiff_bit_for_bit(t):
    args = inputs(jnp.float32, t)
    ours = head_loss(tied_unembed)(*args)
    plain = head_loss(plain_tied)(*args)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_gradients_keep_their_dtypes_and_stay_close_to_autodiff():
    args = inputs(jnp.bfloat16)
    (_, (dx, dtable)) = head_loss(tied_unembed)(*args)
    (_, (dx_ref, dtable_ref)) = head_loss(plain_tied)(*args)
    assert dx.dtype == dtable.dtype == jnp.bfloat16
    for a, b in ((dx, dx_ref), (dtable, dtable_ref)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.abs(b).max())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU path's layout")
def test_logits_gradient_is_not_copied_transposed():
    args = inputs(jnp.float32)
    transposed = re.compile(rf"f32\[{V},{B * T}\]|f32\[{V},{B},{T}\]")
    assert not transposed.search(head_loss(tied_unembed).lower(*args).compile().as_text())
    # The plain einsum's compiled gradient does copy it: the check can fail.
    assert transposed.search(head_loss(plain_tied).lower(*args).compile().as_text())
