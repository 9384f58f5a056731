"""Blocked causal attention (the CPU path of implementation="xla") against references.

Rows long enough to split into query blocks (T=256: 4 blocks of 64; T=192: 3), packed
with documents that cross block boundaries and end in padding, grouped-query heads.
Outputs must match the float64 loop reference of test_attention, gradients must match
autodiff of `naive_attention`, and a key must have exactly no influence on earlier
queries even when it sits in a later block.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import reference_attention

from jaxlm.models.attention import (
    attention,
    blocked_causal_attention,
    causal_segment_mask,
    naive_attention,
    query_blocks,
)

N, K, H = 4, 2, 16


def packed_segments(T: int) -> np.ndarray:
    """Row 0: documents of 50, 90, 70 tokens then padding (they straddle the 64-token
    block edges); row 1: one document with an id other than 1."""
    row0 = np.zeros(T, np.int32)
    edges = [0, 50, 140, min(210, T - 10)]
    for doc, (lo, hi) in enumerate(itertools.pairwise(edges), start=1):
        row0[lo:hi] = doc
    return np.stack([row0, np.full(T, 5, np.int32)])


def qkv(T: int, dtype=jnp.float32, kv_heads: int = K):
    rng = np.random.default_rng(T)
    q = 2.0 * rng.standard_normal((2, T, N, H), np.float32)
    k = 2.0 * rng.standard_normal((2, T, kv_heads, H), np.float32)
    v = rng.standard_normal((2, T, kv_heads, H), np.float32)
    return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def test_query_blocks():
    assert query_blocks(256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert query_blocks(192) == [(0, 64), (64, 128), (128, 192)]
    assert query_blocks(2048) == [(lo, lo + 256) for lo in range(0, 2048, 256)]  # 8 at most
    assert query_blocks(64) == [(0, 64)]  # short: one block
    assert query_blocks(200) == [(0, 200)]  # does not split evenly: one block


@pytest.mark.parametrize("T", [256, 192])
def test_blocked_matches_float64_reference(T):
    q, k, v = qkv(T)
    segments = packed_segments(T)
    out = jax.jit(blocked_causal_attention)(q, k, v, jnp.asarray(segments))
    assert out.shape == (2, T, N, H) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_attention(q, k, v, segments), atol=2e-5, rtol=0)


def test_cpu_xla_and_blocked_names_run_the_blocked_path():
    q, k, v = qkv(256)
    segs = jnp.asarray(packed_segments(256))
    blocked = jax.jit(blocked_causal_attention)(q, k, v, segs)
    for impl in ("xla", "blocked"):
        out = jax.jit(lambda q, k, v, s, impl=impl: attention(q, k, v, s, implementation=impl))
        np.testing.assert_array_equal(out(q, k, v, segs), blocked)
    # Short rows go to jax.nn.dot_product_attention under either name.
    short = [a[:, :32] for a in (q, k, v)]
    expected = jax.nn.dot_product_attention(
        *short, mask=causal_segment_mask(segs[:, :32]), implementation="xla"
    )
    got = attention(*short, segs[:, :32], implementation="blocked")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kv_heads", [K, N], ids=["grouped", "one_query_head_per_kv_head"])
def test_blocked_gradients_match_naive(kv_heads):
    """The hand-written backward against autodiff of the plain-einsum reference."""
    q, k, v = qkv(256, kv_heads=kv_heads)
    segs = jnp.asarray(packed_segments(256))
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal((2, 256, N, H)), jnp.float32)

    def grads(fn):
        return jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v)[1](cotangent))(q, k, v)

    got = grads(lambda q, k, v: blocked_causal_attention(q, k, v, segs))
    want = grads(lambda q, k, v: naive_attention(q, k, v, causal_segment_mask(segs)))
    for name, a, b in zip("qkv", got, want, strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("s", [63, 64, 130, 255])
def test_a_later_key_has_exactly_no_influence(s):
    """Changing key/value s (at and around block edges) leaves every earlier output
    bit-identical and moves output s."""
    q, k, v = qkv(256)
    segs = jnp.asarray(np.full((2, 256), 3, np.int32))
    run = jax.jit(blocked_causal_attention)
    before = np.asarray(run(q, k, v, segs))
    after = np.asarray(run(q, k.at[:, s].add(30.0), v.at[:, s].multiply(-7.0), segs))
    np.testing.assert_array_equal(after[:, :s], before[:, :s])
    assert np.abs(after[:, s] - before[:, s]).max() > 1e-2


def test_bfloat16_inputs_stay_bfloat16_and_close():
    q, k, v = qkv(256)
    segs = jnp.asarray(packed_segments(256))
    full = blocked_causal_attention(q, k, v, segs)
    half = blocked_causal_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), segs)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(half.astype(jnp.float32), full, atol=0.05, rtol=0)


@pytest.mark.parametrize("s", [64, 130])
def test_keys_only_later_queries_see_get_exactly_zero_gradient(s):
    """A cotangent on queries before s gives keys/values from s on exactly zero
    gradient (masked probabilities are 0, so the hand-written dS is exactly 0 there)."""
    q, k, v = qkv(256)
    segs = jnp.asarray(np.full((2, 256), 3, np.int32))
    cotangent = np.random.default_rng(2).standard_normal((2, 256, N, H)).astype(np.float32)
    cotangent[:, s:] = 0.0
    vjp = jax.vjp(lambda q, k, v: blocked_causal_attention(q, k, v, segs), q, k, v)[1]
    dq, dk, dv = vjp(jnp.asarray(cotangent))
    assert not np.any(np.asarray(dk)[:, s:]) and not np.any(np.asarray(dv)[:, s:])
    assert np.abs(np.asarray(dk)[:, :s]).max() > 1e-3
    assert not np.any(np.asarray(dq)[:, s:])


def test_gradients_under_remat_and_in_bfloat16():
    """jax.checkpoint around the layer recomputes the forward and gives the same
    gradient; bfloat16 inputs get bfloat16 gradients close to the float32 ones."""
    q, k, v = qkv(256)
    segs = jnp.asarray(packed_segments(256))

    def loss(q, k, v):
        return jnp.sum(jnp.sin(blocked_causal_attention(q, k, v, segs).astype(jnp.float32)))

    plain = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(plain, remat, strict=True):
        np.testing.assert_array_equal(a, b)
    half = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
    for name, a, b in zip("qkv", half, plain, strict=True):
        assert a.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(
            a.astype(jnp.float32), b, atol=0.05 * scale, rtol=0, err_msg=name
        )
