"""Attention and RoPE against independent float64 numpy references.

Grouped-query attention (N=4 query heads over K=2 kv heads) on packed rows: several
documents per row, padding segment 0, RoPE positions that restart at each document.
`attention(implementation="xla")` and `naive_attention` must both equal a loop-by-loop
numpy softmax, and the mask must give a token exactly zero influence from the future
and from other documents.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.attention import attention, causal_segment_mask
from jaxlm.models.rope import apply_rope

B, T, N, K, H = 2, 13, 4, 2, 8
THETA = 10_000.0
# Row 0 packs three documents (ids 1, 2, 3) and ends in padding (id 0); row 1 is one
# document with an id that is not 1, so only equality of ids may matter.
SEGMENTS = np.array(
    [
        [1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0],
        [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    ],
    np.int32,
)


def reset_positions(segments: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... restarting wherever the segment id changes."""
    pos = np.zeros_like(segments)
    for b in range(segments.shape[0]):
        for t in range(1, segments.shape[1]):
            same = segments[b, t] == segments[b, t - 1]
            pos[b, t] = pos[b, t - 1] + 1 if same else 0
    return pos


POSITIONS = reset_positions(SEGMENTS)


def allowed(segments: np.ndarray) -> np.ndarray:
    """[B, T, S] bool: key s is visible from query t (same document, not in the future)."""
    b, t = segments.shape
    out = np.zeros((b, t, t), bool)
    for i in range(b):
        for q in range(t):
            for s in range(q + 1):
                out[i, q, s] = segments[i, q] == segments[i, s]
    return out


def reference_attention(q, k, v, segments) -> np.ndarray:
    """Loop-by-loop float64 attention; query head n reads kv head n // (N / K)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    mask = allowed(segments)
    out = np.zeros_like(q)
    for b in range(q.shape[0]):
        for n in range(q.shape[2]):
            kv = n // groups
            for t in range(q.shape[1]):
                keys = np.flatnonzero(mask[b, t])
                scores = k[b, keys, kv] @ q[b, t, n] / np.sqrt(q.shape[-1])
                p = np.exp(scores - scores.max())
                out[b, t, n] = (p / p.sum()) @ v[b, keys, kv]
    return out


@pytest.fixture(scope="module")
def qkv():
    rng = np.random.default_rng(42)
    # Scaled up so the softmax is far from uniform and a wrong mask shows.
    q = 2.0 * rng.standard_normal((B, T, N, H), np.float32)
    k = 2.0 * rng.standard_normal((B, T, K, H), np.float32)
    v = rng.standard_normal((B, T, K, H), np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


xla_attention = jax.jit(lambda q, k, v, s: attention(q, k, v, s, implementation="xla"))
rope = jax.jit(apply_rope, static_argnums=2)


def test_causal_segment_mask_matches_definition():
    mask = np.asarray(causal_segment_mask(jnp.asarray(SEGMENTS)))
    assert mask.shape == (B, 1, T, T)
    np.testing.assert_array_equal(mask[:, 0], allowed(SEGMENTS))


@pytest.mark.parametrize("implementation", ["xla", "naive"])
def test_attention_matches_reference_gqa_packed(qkv, implementation):
    """Both paths of `attention`; "naive" is `naive_attention` on `causal_segment_mask`."""
    q, k, v = qkv
    out = attention(q, k, v, jnp.asarray(SEGMENTS), implementation=implementation)
    assert out.shape == (B, T, N, H) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_attention(q, k, v, SEGMENTS), atol=1e-5, rtol=0)


def test_attention_with_rope_matches_reference(qkv):
    q, k, v = qkv
    pos = jnp.asarray(POSITIONS)
    q_rot, k_rot = rope(q, pos, THETA), rope(k, pos, THETA)
    out = xla_attention(q_rot, k_rot, v, jnp.asarray(SEGMENTS))
    expected = reference_attention(q_rot, k_rot, v, SEGMENTS)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    # Because positions restart, document 2 of row 0 equals that document run alone.
    doc = slice(4, 9)
    alone_pos = jnp.arange(5, dtype=jnp.int32)[None]
    alone = xla_attention(
        rope(q[:1, doc], alone_pos, THETA),
        rope(k[:1, doc], alone_pos, THETA),
        v[:1, doc],
        jnp.ones((1, 5), jnp.int32),
    )
    np.testing.assert_allclose(out[:1, doc], alone, atol=1e-5, rtol=0)


def test_other_documents_have_exactly_no_influence(qkv):
    """Changing document 2's keys and values changes only document 2's outputs."""
    q, k, v = qkv
    segs = jnp.asarray(SEGMENTS)
    in_doc2 = jnp.asarray(SEGMENTS == 2)[:, :, None, None]
    k2 = jnp.where(in_doc2, k + 50.0, k)
    v2 = jnp.where(in_doc2, -100.0 * v, v)
    before = np.asarray(xla_attention(q, k, v, segs))
    after = np.asarray(xla_attention(q, k2, v2, segs))
    others = SEGMENTS != 2
    np.testing.assert_array_equal(after[others], before[others])
    # ...and the perturbation is not a no-op: every document-2 output moved.
    moved = np.abs(after[SEGMENTS == 2] - before[SEGMENTS == 2]).max(axis=(-1, -2))
    assert np.all(moved > 1e-2)


@pytest.mark.parametrize("s", [3, 8, 12])
def test_future_has_exactly_no_influence(qkv, s):
    """Changing the key and value at position s leaves every earlier output bit-identical."""
    q, k, v = qkv
    segs = jnp.asarray(SEGMENTS)
    k2, v2 = k.at[:, s].add(30.0), v.at[:, s].multiply(-7.0)
    before = np.asarray(xla_attention(q, k, v, segs))
    after = np.asarray(xla_attention(q, k2, v2, segs))
    np.testing.assert_array_equal(after[:, :s], before[:, :s])
    assert np.abs(after[:, s] - before[:, s]).max() > 1e-2


def test_rope_matches_complex_rotation_reference():
    """Half-split RoPE: pair (x[i], x[i + H/2]) is the complex number rotated by pos * f_i."""
    x = np.random.default_rng(1).standard_normal((1, 5, 3, H)).astype(np.float32)
    pos = np.array([[0, 1, 2, 17, 1000]], np.int32)
    freqs = THETA ** (-np.arange(0, H, 2, dtype=np.float64) / H)
    z = (x[..., : H // 2] + 1j * x[..., H // 2 :]).astype(np.complex128)
    z = z * np.exp(1j * pos[..., None, None] * freqs)
    expected = np.concatenate([z.real, z.imag], axis=-1)
    out = np.asarray(rope(jnp.asarray(x), jnp.asarray(pos), THETA))
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    # Position 0 is the identity.
    np.testing.assert_array_equal(out[:, 0], x[:, 0])


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 1, 1, 1, H)).astype(np.float32)
    # Query positions m and key positions n for the pairs (5, 2), (45, 42), (5, 4), (0, 0).
    m = np.array([[5, 45, 5, 0]], np.int32)
    n = np.array([[2, 42, 4, 0]], np.int32)
    rq = np.asarray(rope(jnp.asarray(np.repeat(q, 4, axis=1)), jnp.asarray(m), THETA))
    rk = np.asarray(rope(jnp.asarray(np.repeat(k, 4, axis=1)), jnp.asarray(n), THETA))
    scores = np.sum(rq * rk, axis=(0, 2, 3))
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(scores[3], np.sum(q * k), atol=1e-5, rtol=0)
    assert abs(scores[0] - scores[2]) > 1e-3
