"""Preference objectives against their formulas, on numbers worked out by hand.

Expected values are computed here with `math` (float64), never by calling the code
under test; each test states the numbers it uses.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import PreferenceConfig
from jaxlm.training.preference_losses import (
    METRIC_SUMS,
    preference_loss,
    ranking_accuracy,
    sequence_logps,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def arr(*values) -> jax.Array:
    return jnp.asarray(values, jnp.float32)


def pref(cfg, pc, pr, rc=None, rr=None, nc=None, nr=None, valid=None):
    """preference_loss on per-pair lists; token counts default to 1 per response."""
    n = len(pc)
    nc = [1.0] * n if nc is None else nc
    nr = [1.0] * n if nr is None else nr
    rc = None if rc is None else arr(*rc)
    rr = None if rr is None else arr(*rr)
    valid = None if valid is None else jnp.asarray(valid)
    loss, sums = preference_loss(cfg, arr(*pc), arr(*pr), rc, rr, arr(*nc), arr(*nr), valid)
    return float(loss), {k: float(v) for k, v in sums.items()}


def test_sequence_logps_are_masked_fp32_sums():
    logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]]))
    targets = jnp.asarray([[0, 2, 1]])
    mask = jnp.asarray([[1, 1, 0]])
    logp, n = sequence_logps(logits.astype(jnp.bfloat16), targets, mask)
    assert logp.dtype == n.dtype == jnp.float32
    np.testing.assert_allclose(float(logp[0]), math.log(0.5) + math.log(0.8), rtol=1e-2)
    assert float(n[0]) == 2.0
    logp, _ = sequence_logps(logits, targets, mask)
    np.testing.assert_allclose(float(logp[0]), math.log(0.5) + math.log(0.8), rtol=1e-6)


def test_dpo_policy_equal_to_reference_costs_log_2_with_zero_margin():
    cfg = PreferenceConfig(beta=0.1)
    loss, sums = pref(cfg, [-12.0, -3.0], [-7.0, -9.0], [-12.0, -3.0], [-7.0, -9.0])
    np.testing.assert_allclose(loss, 2 * math.log(2), rtol=1e-6)
    assert sums["pairs"] == 2.0
    assert sums["margin_sum"] == sums["chosen_reward_sum"] == sums["rejected_reward_sum"] == 0.0
    assert sums["correct"] == 0.0  # equal rewards are not a correct ranking...
    assert sums["ties"] == 2.0  # ...but ties, which the accuracy counts half
    assert ranking_accuracy(sums["correct"], sums["ties"], sums["pairs"]) == 0.5
    assert sums["chosen_logp_sum"] == -15.0 and sums["rejected_logp_sum"] == -16.0


def test_dpo_known_margin():
    # chosen log-ratio -10 - (-12) = 2, rejected -9 - (-8) = -1: h = 3, beta h = 1.5
    cfg = PreferenceConfig(beta=0.5)
    loss, sums = pref(cfg, [-10.0], [-9.0], [-12.0], [-8.0])
    np.testing.assert_allclose(loss, math.log(1 + math.exp(-1.5)), rtol=1e-6)
    np.testing.assert_allclose(sums["chosen_reward_sum"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(sums["rejected_reward_sum"], -0.5, rtol=1e-6)
    np.testing.assert_allclose(sums["margin_sum"], 1.5, rtol=1e-6)
    assert sums["correct"] == 1.0


def test_conservative_dpo_label_smoothing():
    # h = (-5 - -6) - (-7 - -5) = 3, beta = 0.2: x = 0.6, eps = 0.25
    cfg = PreferenceConfig(beta=0.2, label_smoothing=0.25)
    loss, _ = pref(cfg, [-5.0], [-7.0], [-6.0], [-5.0])
    want = -0.75 * log_sigmoid(0.6) - 0.25 * log_sigmoid(-0.6)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # smoothing makes a perfectly separated pair cost eps * x, not 0
    loss, _ = pref(cfg, [0.0], [-500.0], [0.0], [0.0])
    np.testing.assert_allclose(loss, 0.25 * 100.0, rtol=1e-5)


def test_dpo_is_stable_for_huge_margins():
    cfg = PreferenceConfig(beta=1.0)
    loss, _ = pref(cfg, [-1.0], [-1e4], [-1.0], [-1.0])
    assert loss == 0.0
    loss, _ = pref(cfg, [-1e4], [-1.0], [-1.0], [-1.0])
    np.testing.assert_allclose(loss, 1e4 - 1.0, rtol=1e-6)


def test_ipo_is_squared_distance_to_half_inverse_beta():
    # h = (-4 - -5) - (-6 - -6.5) = 0.5; beta = 0.25: target 2, loss (0.5 - 2)^2 = 2.25
    cfg = PreferenceConfig(loss="ipo", beta=0.25, label_smoothing=0.3)  # eps unused
    loss, sums = pref(cfg, [-4.0, -1.0], [-6.0, -1.0], [-5.0, -1.0], [-6.5, -3.0])
    # second pair: h = 0 - 2 = -2: (-2 - 2)^2 = 16
    np.testing.assert_allclose(loss, 2.25 + 16.0, rtol=1e-6)
    np.testing.assert_allclose(sums["margin_sum"], 0.25 * 0.5 + 0.25 * -2.0, rtol=1e-6)
    assert sums["correct"] == 1.0


def test_simpo_length_normalised_reference_free():
    # chosen -6 over 3 tokens = -2/token, rejected -10 over 4 = -2.5/token
    # beta 2: rewards -4 and -5, margin 1; gamma 0.4: loss -log sigmoid(0.6)
    cfg = PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.4)
    loss, sums = pref(cfg, [-6.0], [-10.0], nc=[3.0], nr=[4.0])
    np.testing.assert_allclose(loss, -log_sigmoid(0.6), rtol=1e-6)
    np.testing.assert_allclose(sums["chosen_reward_sum"], -4.0, rtol=1e-6)
    np.testing.assert_allclose(sums["rejected_reward_sum"], -5.0, rtol=1e-6)
    np.testing.assert_allclose(sums["margin_sum"], 1.0, rtol=1e-6)
    assert sums["correct"] == 1.0
    # reference values, when given, change nothing
    with_ref, _ = pref(cfg, [-6.0], [-10.0], [-99.0], [3.0], nc=[3.0], nr=[4.0])
    assert with_ref == loss


def test_nll_term_adds_weighted_chosen_per_token_nll():
    # DPO at policy == reference costs log 2; chosen -6 over 4 tokens: NLL 1.5/token
    cfg = PreferenceConfig(beta=0.1, nll_weight=0.5)
    loss, sums = pref(cfg, [-6.0], [-2.0], [-6.0], [-2.0], nc=[4.0], nr=[1.0])
    np.testing.assert_allclose(loss, math.log(2) + 0.5 * 1.5, rtol=1e-6)
    np.testing.assert_allclose(sums["nll_sum"], 1.5, rtol=1e-6)


def test_invalid_pairs_contribute_nothing_not_even_nan_gradients():
    cfg = PreferenceConfig(beta=0.5)
    pc, pr = arr(-10.0, -3.0, 0.0), arr(-9.0, -1.0, 0.0)
    # the third pair has no tokens on one side, and garbage reference values
    rc, rr = arr(-12.0, -4.0, jnp.nan), arr(-8.0, -2.0, jnp.inf)
    nc, nr = arr(2.0, 1.0, 3.0), arr(2.0, 1.0, 0.0)

    def loss_fn(pc, pr):
        return preference_loss(cfg, pc, pr, rc, rr, nc, nr)

    (loss, sums), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(pc, pr)
    # pair 1: h = 2 - (-1) = 3; pair 2: h = 1 - 1 = 0
    want = math.log1p(math.exp(-1.5)) + math.log(2)
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert float(sums["pairs"]) == 2.0
    assert sorted(sums) == sorted(METRIC_SUMS)
    for g in grads:
        assert np.isfinite(np.asarray(g)).all() and float(g[2]) == 0.0
    # explicit `valid` overrides the token counts
    loss, sums = preference_loss(cfg, pc, pr, rc, rr, nc, nr, jnp.array([True, False, False]))
    np.testing.assert_allclose(float(loss), math.log1p(math.exp(-1.5)), rtol=1e-6)
    assert float(sums["pairs"]) == 1.0


def test_dpo_gradient_sign_favours_chosen():
    # d loss / d pi_c = -beta sigmoid(-beta h); at h = 0: -beta / 2
    cfg = PreferenceConfig(beta=0.5)
    grad = jax.grad(
        lambda pc: preference_loss(cfg, pc, arr(-1.0), arr(-1.0), arr(-1.0), arr(1.0), arr(1.0))[0]
    )(arr(-1.0))
    np.testing.assert_allclose(float(grad[0]), -0.25, rtol=1e-6)


def test_reference_needed_except_for_simpo():
    with pytest.raises(ValueError, match="reference"):
        pref(PreferenceConfig(loss="ipo"), [-1.0], [-2.0])


def test_logp_ranking_is_per_token_and_reference_free():
    # Chosen: -10 over 5 tokens (-2 per token); rejected: -6 over 2 tokens (-3 per token).
    # The chosen response ranks first per token although its summed log-prob is lower.
    cfg = PreferenceConfig()
    args = [jnp.array([-10.0, -4.0]), jnp.array([-6.0, -1.0]), jnp.zeros(2), jnp.zeros(2)]
    _, sums = preference_loss(cfg, *args, jnp.array([5.0, 2.0]), jnp.array([2.0, 2.0]))
    # Pair 2: -2 per token vs -0.5 per token: the rejected one ranks first.
    assert float(sums["logp_correct"]) == 1.0 and float(sums["pairs"]) == 2.0
