"""RL formulas (jaxlm.training.rl_losses) against direct numpy references.

Each reference below is written from the papers' equations with plain loops, on fixed
inputs, degenerate cases included: all-equal rewards, zero-length and truncated
responses, rows dropped by dynamic sampling.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.training import rl_losses

REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, -1.0, 0.0, 3.0], np.float32)
G = 4


def _ref_group_advantages(rewards, group, scale, eps=1e-4):
    out = np.zeros_like(rewards)
    for start in range(0, len(rewards), group):
        r = rewards[start : start + group].astype(np.float64)
        a = r - r.mean()
        if scale:
            a = a / (r.std(ddof=1) + eps)
        out[start : start + group] = a
    return out


@pytest.mark.parametrize("scale", [True, False], ids=["grpo", "dr_grpo"])
def test_group_advantages(scale):
    got = rl_losses.group_advantages(jnp.asarray(REWARDS), G, scale_by_std=scale)
    np.testing.assert_allclose(got, _ref_group_advantages(REWARDS, G, scale), atol=1e-6)
    # the all-equal group (rows 4..7) has nothing to learn from: exactly zero
    assert np.all(np.asarray(got)[4:8] == 0.0)


def test_group_of_one_is_refused():
    with pytest.raises(ValueError, match="group_size"):
        rl_losses.group_advantages(jnp.ones(4), 1, scale_by_std=True)


def test_groups_with_signal_drops_all_equal_groups():
    got = rl_losses.groups_with_signal(jnp.asarray(REWARDS), G)
    assert np.asarray(got).tolist() == [True] * 4 + [False] * 4 + [True] * 4


LOGPS = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.1]], np.float32))
OLD = np.log(np.array([[0.4, 0.3, 0.9], [0.1, 0.35, 0.2]], np.float32))
ADV = np.array([[1.5] * 3, [-2.0] * 3], np.float32)


def test_clipped_surrogate_matches_the_ppo_formula_and_clip_higher():
    for low, high in [(0.2, 0.2), (0.2, 0.28)]:
        loss, clipped = rl_losses.clipped_surrogate(
            jnp.asarray(LOGPS), jnp.asarray(OLD), jnp.asarray(ADV), clip_low=low, clip_high=high
        )
        for i in range(2):
            for t in range(3):
                ratio = np.exp(LOGPS[i, t] - OLD[i, t])
                a = ADV[i, t]
                want = -min(ratio * a, np.clip(ratio, 1 - low, 1 + high) * a)
                assert loss[i, t] == pytest.approx(want, rel=1e-5)
                assert bool(clipped[i, t]) == (np.clip(ratio, 1 - low, 1 + high) * a < ratio * a)
    # ratio 1.25 with A > 0: clipped at 1.2, not at 1.28
    ratio, zero, one = jnp.log(jnp.array([[1.25]])), jnp.zeros((1, 1)), jnp.ones((1, 1))
    _, c = rl_losses.clipped_surrogate(ratio, zero, one, clip_low=0.2, clip_high=0.2)
    _, h = rl_losses.clipped_surrogate(ratio, zero, one, clip_low=0.2, clip_high=0.28)
    assert bool(c[0, 0]) and not bool(h[0, 0])


def test_policy_gradient_sign_raising_a_good_tokens_logp_lowers_the_loss():
    def loss(logp, adv):
        out, _ = rl_losses.clipped_surrogate(
            logp, jax.lax.stop_gradient(logp), adv, clip_low=0.2, clip_high=0.2
        )
        return out.sum()

    logp = jnp.log(jnp.array([[0.3]]))
    assert float(jax.grad(loss)(logp, jnp.array([[2.0]]))[0, 0]) < 0  # gradient descent raises it
    assert float(jax.grad(loss)(logp, jnp.array([[-2.0]]))[0, 0]) > 0
    assert float(jax.grad(loss)(logp, jnp.array([[0.0]]))[0, 0]) == 0


def test_kl_k3_matches_its_definition_and_is_zero_at_equality():
    ref = np.log(np.array([[0.45, 0.2, 0.5], [0.3, 0.9, 0.1]], np.float32))
    got = rl_losses.kl_k3(jnp.asarray(LOGPS), jnp.asarray(ref))
    want = np.exp(ref - LOGPS) - (ref - LOGPS) - 1
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(got) >= 0)
    assert np.all(np.asarray(rl_losses.kl_k3(jnp.asarray(LOGPS), jnp.asarray(LOGPS))) == 0)
    # an unbiased estimator: its mean under π approaches KL(π || π_ref)
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3])
    draws = np.random.default_rng(0).choice(3, 200_000, p=p)
    est = np.asarray(rl_losses.kl_k3(jnp.log(p[draws]), jnp.log(q[draws]))).mean()
    assert est == pytest.approx(np.sum(p * np.log(p / q)), rel=0.02)


# rows: 3 tokens; 1 token; zero-length; truncated (all 4); dropped by dynamic sampling
MASK = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
VALID = np.array([True, True, True, True, False])
PER_TOKEN = np.arange(20, dtype=np.float32).reshape(5, 4) + 1.0


def _ref_aggregate(mode):
    rows = [i for i in range(5) if VALID[i]]
    if mode == "sequence":
        means = [PER_TOKEN[i][MASK[i] > 0].mean() for i in rows if MASK[i].sum() > 0]
        return float(np.mean(means))
    total = sum(PER_TOKEN[i][MASK[i] > 0].sum() for i in rows)
    if mode == "token":
        return float(total / sum(MASK[i].sum() for i in rows))
    return float(total / (len(rows) * 4))


@pytest.mark.parametrize("mode", ["sequence", "token", "constant"])
def test_aggregations(mode):
    w, denom = rl_losses.token_weights(jnp.asarray(MASK), jnp.asarray(VALID), mode)
    got = float(jnp.sum(w * PER_TOKEN) / denom)
    assert got == pytest.approx(_ref_aggregate(mode), rel=1e-6)
    assert np.all(np.asarray(w)[4] == 0) and np.all(np.asarray(w)[2] == 0)


@pytest.mark.parametrize("mode", ["sequence", "token", "constant"])
def test_aggregation_sums_add_up_across_micro_batches(mode):
    w, denom = rl_losses.token_weights(jnp.asarray(MASK), jnp.asarray(VALID), mode)
    num, den = 0.0, 0.0
    for rows in ([0, 3], [1, 2, 4]):
        wi, di = rl_losses.token_weights(jnp.asarray(MASK[rows]), jnp.asarray(VALID[rows]), mode)
        num += float(jnp.sum(wi * PER_TOKEN[rows]))
        den += float(di)
    assert num / den == pytest.approx(float(jnp.sum(w * PER_TOKEN) / denom), rel=1e-6)


def test_gae_matches_a_hand_computed_example():
    # One response of 3 tokens (reward only at the end) and one of 2, γ = 0.9, λ = 0.8.
    rewards = np.array([[0.0, 0.0, 1.0, 0.0], [0.5, -1.0, 0.0, 0.0]], np.float32)
    values = np.array([[0.2, 0.4, 0.6, 9.0], [0.1, 0.3, 9.0, 9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    g, lam = 0.9, 0.8
    # by hand, row 0: d2 = 1 - 0.6 = 0.4; d1 = 0 + 0.9*0.6 - 0.4 = 0.14;
    # d0 = 0.9*0.4 - 0.2 = 0.16; A2 = 0.4; A1 = 0.14 + 0.72*0.4 = 0.428;
    # A0 = 0.16 + 0.72*0.428 = 0.46816
    # row 1: d1 = -1 - 0.3 = -1.3; d0 = 0.5 + 0.9*0.3 - 0.1 = 0.67;
    # A1 = -1.3; A0 = 0.67 + 0.72*(-1.3) = -0.266
    want = np.array([[0.46816, 0.428, 0.4, 0], [-0.266, -1.3, 0, 0]], np.float32)
    adv, ret = rl_losses.gae(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=g, lam=lam
    )
    np.testing.assert_allclose(adv, want, atol=1e-6)
    np.testing.assert_allclose(ret, (want + values) * mask, atol=1e-6)
    # λ = 1, γ = 1: the advantage is the return-to-go minus the value
    adv1, _ = rl_losses.gae(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=1.0, lam=1.0
    )
    to_go = np.cumsum(rewards[:, ::-1] * mask[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(adv1, (to_go - values) * mask, atol=1e-6)


def test_clipped_value_loss():
    v = np.array([[1.0, 0.0, 2.0]], np.float32)
    old = np.array([[0.5, 0.5, 0.5]], np.float32)
    ret = np.array([[0.0, 1.0, 3.0]], np.float32)
    got = rl_losses.clipped_value_loss(jnp.asarray(v), jnp.asarray(old), jnp.asarray(ret), clip=0.2)
    want = []
    for a, o, r in zip(v[0], old[0], ret[0], strict=True):
        c = o + np.clip(a - o, -0.2, 0.2)
        want.append(0.5 * max((a - r) ** 2, (c - r) ** 2))
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    plain = rl_losses.clipped_value_loss(jnp.asarray(v), jnp.asarray(old), jnp.asarray(ret), clip=0)
    np.testing.assert_allclose(plain, 0.5 * (v - ret) ** 2)


def test_masked_whiten():
    x = np.array([[1.0, 2.0, 3.0, 100.0]], np.float32)
    m = np.array([[1, 1, 1, 0]], np.float32)
    got = np.asarray(rl_losses.masked_whiten(jnp.asarray(x), jnp.asarray(m)))
    want = (np.array([1.0, 2.0, 3.0]) - 2.0) / np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(got[0, :3], want, rtol=1e-5)
    assert got[0, 3] == 0
