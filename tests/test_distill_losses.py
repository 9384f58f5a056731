"""Distillation divergences against numpy on fixed logits (jaxlm.training.distill_losses)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.training.distill_losses import (
    distill_sums,
    divergence,
    objective,
    teacher_topk,
    topk_and_tail,
)

B, T, V = 2, 5, 11


def _logits(seed, scale=3.0):
    return np.random.default_rng(seed).normal(size=(B, T, V)).astype(np.float32) * scale


def _np_logp(logits, tau):
    z = logits.astype(np.float64) / tau
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_div(t, s, kind, beta):
    pt, ps = np.exp(t), np.exp(s)
    if kind == "forward_kl":
        return (pt * (t - s)).sum(-1)
    if kind == "reverse_kl":
        return (ps * (s - t)).sum(-1)
    m = beta * pt + (1 - beta) * ps
    return beta * (pt * (t - np.log(m))).sum(-1) + (1 - beta) * (ps * (s - np.log(m))).sum(-1)


MASK = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], np.int32)


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_divergences_match_numpy_with_temperature_and_mask(kind, beta, tau):
    student, teacher = _logits(0), _logits(1)
    targets = np.random.default_rng(2).integers(0, V, (B, T)).astype(np.int32)
    sums = distill_sums(
        jnp.asarray(student),
        jnp.asarray(targets),
        jnp.asarray(MASK),
        kind=kind,
        temperature=tau,
        beta=beta,
        teacher_logits_BTV=jnp.asarray(teacher),
    )
    per_token = _np_div(_np_logp(teacher, tau), _np_logp(student, tau), kind, beta)
    np.testing.assert_allclose(float(sums.divergence), (per_token * MASK).sum(), rtol=2e-5)
    nll = -np.take_along_axis(_np_logp(student, 1.0), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.nll), (nll * MASK).sum(), rtol=2e-6)
    assert float(sums.num_tokens) == MASK.sum()
    # The objective: alpha CE + (1 - alpha) tau^2 D.
    want = 0.3 * (nll * MASK).sum() + 0.7 * tau**2 * (per_token * MASK).sum()
    np.testing.assert_allclose(float(objective(sums, alpha=0.3, temperature=tau)), want, rtol=2e-5)


def test_jsd_is_symmetric_at_one_half_bounded_by_log_2_and_zero_on_equal_inputs():
    """Properties any JSD has, beyond the numpy formula check above."""
    t, s = jnp.asarray(_np_logp(_logits(3), 1.0)), jnp.asarray(_np_logp(_logits(4), 1.0))
    j = divergence(t, s, "jsd", 0.5)
    np.testing.assert_allclose(j, divergence(s, t, "jsd", 0.5), rtol=1e-5)
    assert float(jnp.max(j)) < np.log(2) and float(jnp.min(j)) > 0
    np.testing.assert_allclose(divergence(t, t, "jsd", 0.3), 0.0, atol=1e-6)
    np.testing.assert_allclose(divergence(t, t, "forward_kl"), 0.0, atol=1e-6)


def test_top_k_tail_bucket_matches_numpy_coarsening():
    k, tau = 3, 1.5
    student, teacher = _logits(5), _logits(6)
    ids, t_k1 = teacher_topk(jnp.asarray(teacher), k, tau)
    t = _np_logp(teacher, tau)
    want_ids = np.argsort(-t, axis=-1)[..., :k]
    np.testing.assert_array_equal(np.sort(np.asarray(ids), -1), np.sort(want_ids, -1))
    s = _np_logp(student, tau)

    def coarse(logp):
        picked = np.take_along_axis(logp, want_ids, -1)
        rest = np.ones_like(logp, bool)
        np.put_along_axis(rest, want_ids, False, -1)
        tail = np.log((np.exp(logp) * rest).sum(-1))
        return np.concatenate([picked, tail[..., None]], -1)

    np.testing.assert_allclose(
        np.sort(np.asarray(t_k1)[..., :k], -1), np.sort(coarse(t)[..., :k], -1), rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(t_k1)[..., k], coarse(t)[..., k], rtol=1e-5)
    targets = np.zeros((B, T), np.int32)
    sums = distill_sums(
        jnp.asarray(student),
        jnp.asarray(targets),
        jnp.asarray(MASK),
        kind="forward_kl",
        temperature=tau,
        teacher_ids_BTK=ids,
        teacher_logp_BTK1=t_k1,
    )
    ct, cs = coarse(t), coarse(s)
    want = ((np.exp(ct) * (ct - cs)).sum(-1) * MASK).sum()
    np.testing.assert_allclose(float(sums.divergence), want, rtol=1e-5)
    # Coarsening never increases a KL (data processing): below the full divergence.
    assert want < ((_np_div(t, s, "forward_kl", 0) * MASK).sum())


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_top_k_complete_offline_gives_the_online_loss_and_gradient(kind):
    """k = V: the tail is empty, so the table path is the online path exactly."""
    student, teacher = jnp.asarray(_logits(7)), jnp.asarray(_logits(8))
    targets = jnp.asarray(np.random.default_rng(9).integers(0, V, (B, T)).astype(np.int32))
    ids, t_k1 = teacher_topk(teacher, V, 2.0)
    assert float(jnp.max(t_k1[..., V])) < -1e29  # no tail mass at all

    def loss(s, **teacher_kw):
        sums = distill_sums(s, targets, jnp.asarray(MASK), kind=kind, temperature=2.0, **teacher_kw)
        return objective(sums, alpha=0.25, temperature=2.0)

    online, g_online = jax.value_and_grad(loss)(student, teacher_logits_BTV=teacher)
    offline, g_offline = jax.value_and_grad(loss)(
        student, teacher_ids_BTK=ids, teacher_logp_BTK1=t_k1
    )
    np.testing.assert_allclose(float(offline), float(online), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g_offline), np.asarray(g_online), atol=2e-6)
    assert np.all(np.isfinite(np.asarray(g_offline)))
    # And the teacher gets no gradient from the loss.
    g_teacher = jax.grad(lambda t: loss(student, teacher_logits_BTV=t))(teacher)
    assert float(jnp.max(jnp.abs(g_teacher))) == 0.0


def test_tail_of_all_but_one_token_is_computed_not_cancelled():
    """A teacher whose top token holds 1 - 1e-9: the tail (log 1e-9) comes out right,
    where 1 - sum would give 0 in float32."""
    logits = np.zeros((1, 1, V), np.float32)
    logits[0, 0, 4] = np.log(1e9 * (V - 1))
    logp = jax.nn.log_softmax(jnp.asarray(logits))
    out = topk_and_tail(logp, jnp.asarray([[[4]]], jnp.int32))
    np.testing.assert_allclose(float(out[0, 0, 1]), np.log(1e-9), rtol=1e-3)
