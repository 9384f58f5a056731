"""The formulas of policy-gradient RL on language models, as pure jnp functions.

Notation: N responses (rows), R response slots, mask_NR the response tokens, A the
advantage, π the policy being trained, π_old the policy that sampled (its log-probs
come with the rollout), π_ref the frozen reference, ε_low / ε_high the clip range.

Advantages (one scalar per response, shared by its tokens)
    group_advantages   GRPO (Shao et al. 2024, DeepSeekMath): G responses per prompt,
                       A_i = (r_i - mean_g r) / (std_g r + eps), std with n - 1 (as
                       TRL); Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
                       Training") drops the division: A_i = r_i - mean_g r. A group
                       whose rewards are all equal gets A = 0 either way.
    gae                PPO (Schulman et al. 2016/2017): per-token
                       delta_t = r_t + γ V_{t+1} - V_t,  A_t = delta_t + γ λ A_{t+1},
                       V after a response's last token = 0; returns = A + V.

Per-token terms
    clipped_surrogate  -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A), ρ = π / π_old
                       (DAPO's clip-higher is ε_high > ε_low, Yu et al. 2025)
    kl_k3              π_ref/π - log(π_ref/π) - 1 >= 0, Schulman's k3 estimator of
                       KL(π || π_ref) from samples of π (what GRPO adds, times β)
    clipped_value_loss ½ max((V - G)², (V_old + clip(V - V_old, ±c) - G)²)

Aggregation (how per-token losses become one number; `token_weights`)
    sequence  mean over each response's tokens, then over responses (GRPO paper)
    token     sum over all tokens / all tokens of the batch (DAPO)
    constant  sum over all tokens / (responses x R) (Dr.GRPO: no length bias)
Each returns per-token weights and a denominator, both *summed* over micro-batches
and devices before the division, so gradient accumulation equals the whole batch
(as losses.py does for next-token sums). Rows with `valid_N` False (a group dropped
by dynamic sampling, padding) weigh exactly 0 and count in no denominator.

tests/test_rl_losses.py checks every function against a direct numpy reference,
degenerate cases included.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Aggregation = Literal["sequence", "token", "constant"]


def group_advantages(
    rewards_N: jax.Array, group_size: int, *, scale_by_std: bool, eps: float = 1e-4
) -> jax.Array:
    """Group-relative advantages [N]; rows i*G .. i*G + G - 1 answer prompt i."""
    if group_size < 2:
        raise ValueError(f"group advantages need group_size >= 2, got {group_size}")
    r_GK = rewards_N.astype(jnp.float32).reshape(-1, group_size)
    centred_GK = r_GK - r_GK.mean(axis=1, keepdims=True)
    if scale_by_std:
        std_G1 = jnp.sqrt(jnp.sum(centred_GK**2, axis=1, keepdims=True) / (group_size - 1))
        centred_GK = centred_GK / (std_G1 + eps)
    return centred_GK.reshape(-1)


def groups_with_signal(rewards_N: jax.Array, group_size: int) -> jax.Array:
    """[N] bool: the row's group has rewards that are not all equal (DAPO's dynamic
    sampling keeps only those: an all-equal group has zero advantage everywhere)."""
    r_GK = rewards_N.reshape(-1, group_size)
    varied_G = jnp.max(r_GK, axis=1) > jnp.min(r_GK, axis=1)
    return jnp.repeat(varied_G, group_size)


def clipped_surrogate(
    logps_NR: jax.Array,
    old_logps_NR: jax.Array,
    advantages_NR: jax.Array,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[jax.Array, jax.Array]:
    """Per-token policy loss [N, R] and whether the clip was active [N, R]."""
    ratio_NR = jnp.exp(logps_NR - old_logps_NR)
    unclipped_NR = ratio_NR * advantages_NR
    clipped_NR = jnp.clip(ratio_NR, 1.0 - clip_low, 1.0 + clip_high) * advantages_NR
    return -jnp.minimum(unclipped_NR, clipped_NR), clipped_NR < unclipped_NR


def kl_k3(logps_NR: jax.Array, ref_logps_NR: jax.Array) -> jax.Array:
    """Per-token k3 estimate of KL(π || π_ref) [N, R] (>= 0, unbiased under π)."""
    log_ratio_NR = ref_logps_NR - logps_NR
    return jnp.exp(log_ratio_NR) - log_ratio_NR - 1.0


def token_weights(
    mask_NR: jax.Array, valid_N: jax.Array, aggregation: Aggregation
) -> tuple[jax.Array, jax.Array]:
    """(per-token weights [N, R], denominator): loss = Σ w l / Σ denominator."""
    mask_NR = mask_NR.astype(jnp.float32) * valid_N.astype(jnp.float32)[:, None]
    lengths_N = mask_NR.sum(axis=1)
    if aggregation == "sequence":
        weights_NR = mask_NR / jnp.maximum(lengths_N, 1.0)[:, None]
        return weights_NR, jnp.sum(lengths_N > 0).astype(jnp.float32)
    if aggregation == "token":
        return mask_NR, lengths_N.sum()
    if aggregation == "constant":
        rows = jnp.sum(valid_N.astype(jnp.float32))
        return mask_NR, rows * mask_NR.shape[1]
    raise ValueError(f"unknown aggregation {aggregation!r}")


def gae(
    rewards_NR: jax.Array,
    values_NR: jax.Array,
    mask_NR: jax.Array,
    *,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns) [N, R] by generalised advantage estimation, right to left
    over each response's tokens; slots outside `mask_NR` get 0 and stop the recursion."""
    mask_NR = mask_NR.astype(jnp.float32)
    rewards_NR = rewards_NR * mask_NR
    values_NR = values_NR * mask_NR

    def back(carry, x):
        next_value_N, next_adv_N = carry
        reward_N, value_N, m_N = x
        delta_N = reward_N + gamma * next_value_N - value_N
        adv_N = (delta_N + gamma * lam * next_adv_N) * m_N
        # A masked slot hands on nothing: the slot before a response's end sees V = 0.
        return (value_N * m_N, adv_N), adv_N

    zeros_N = jnp.zeros(rewards_NR.shape[0], jnp.float32)
    xs = (rewards_NR.T, values_NR.T, mask_NR.T)
    _, adv_RN = jax.lax.scan(back, (zeros_N, zeros_N), xs, reverse=True)
    advantages_NR = adv_RN.T
    return advantages_NR, (advantages_NR + values_NR) * mask_NR


def masked_whiten(x_NR: jax.Array, mask_NR: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / std over the masked tokens (PPO's advantage normalisation)."""
    m = mask_NR.astype(jnp.float32)
    count = jnp.maximum(m.sum(), 1.0)
    mean = jnp.sum(x_NR * m) / count
    var = jnp.sum(((x_NR - mean) ** 2) * m) / count
    return (x_NR - mean) * jax.lax.rsqrt(var + eps) * m


def clipped_value_loss(
    values_NR: jax.Array, old_values_NR: jax.Array, returns_NR: jax.Array, *, clip: float
) -> jax.Array:
    """Per-token PPO value loss [N, R] with the old values' clip range (clip <= 0: none)."""
    plain_NR = (values_NR - returns_NR) ** 2
    if clip <= 0:
        return 0.5 * plain_NR
    clipped_NR = old_values_NR + jnp.clip(values_NR - old_values_NR, -clip, clip)
    return 0.5 * jnp.maximum(plain_NR, (clipped_NR - returns_NR) ** 2)
