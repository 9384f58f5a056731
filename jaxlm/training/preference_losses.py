"""Preference-optimisation objectives on per-sequence log-probabilities.

Every objective compares a *chosen* response c with a *rejected* response r to the
same prompt. Its inputs are, per pair, the policy's summed log-probabilities of the
response tokens (πc, πr), the reference model's (rc, rr; absent for SimPO) and the
response lengths |c|, |r| in supervised tokens. With β = cfg.beta, ε =
cfg.label_smoothing, γ = cfg.simpo_gamma, σ the logistic function and

    h = (πc - rc) - (πr - rr)        the difference of policy/reference log-ratios,

the per-pair losses are

    sigmoid  -(1 - ε) log σ(β h) - ε log σ(-β h)
             DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
             Model is Secretly a Reward Model"); ε > 0 is conservative DPO (Mitchell
             2023, "A note on DPO with noisy preferences"), which assumes each label is
             flipped with probability ε.
    ipo      (h - 1 / (2β))²
             IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand
             Learning from Human Preferences", eq. 17 with τ = β). h uses *summed*
             log-probs, as written in the paper, so that switching between sigmoid and
             ipo changes only the function applied to the same h. (TRL instead
             averages log-probs over the response for IPO; with summed log-probs the
             target margin 1/(2β) is in nats per response, not per token, so long
             responses want a smaller β than under TRL.) ε is not used.
    simpo    -(1 - ε) log σ(m) - ε log σ(-m),   m = β (πc/|c| - πr/|r|) - γ
             SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
             Reference-Free Reward"): reference-free, length-normalised, with target
             reward margin γ (ε = 0 is the paper's loss; ε > 0 smooths it as above).

and with cfg.nll_weight = λ > 0 every pair adds λ · (-πc / |c|), the chosen
response's mean per-token negative log-likelihood (RPO: Pang et al. 2024, "Iterative
Reasoning Preference Optimization").

The implied rewards, used for the metrics, are β (π - r) for sigmoid and ipo (the DPO
reward up to the prompt-only partition term, which cancels in the comparison) and
β π / |y| for SimPO (its own reward). A pair is ranked correctly when the chosen
reward is strictly greater than the rejected one; equal rewards are a tie, which the
accuracy counts as half right (a coin flip's expectation), so a policy equal to its
reference, whose implied rewards are all 0, starts at accuracy 0.5, not 0.

All results are *sums over valid pairs* (both responses have at least one supervised
token): a step adds them over micro-batches and devices and divides once by the total
pair count, exactly like the token sums of losses.py. Invalid pairs (batch filler,
truncated sides) contribute exactly zero, to values and gradients alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.config import PreferenceConfig
from jaxlm.training.losses import token_nll

Sums = dict[str, jax.Array]

# Keys of the metric sums, in a fixed order (eval steps return them as they are).
METRIC_SUMS = (
    "pairs",  # valid pairs
    "correct",  # valid pairs whose chosen reward > rejected reward
    "ties",  # valid pairs whose chosen reward == rejected reward (half right in accuracy)
    "chosen_reward_sum",
    "rejected_reward_sum",
    "margin_sum",  # chosen reward - rejected reward
    "chosen_logp_sum",  # policy log-prob of the chosen response, summed over its tokens
    "rejected_logp_sum",
    "nll_sum",  # chosen response's mean per-token NLL (the RPO term before λ)
    # Valid pairs whose chosen response has the higher mean per-token log-prob under the
    # policy alone: a reference-free ranking that also scores a model before preference
    # training (whose implied DPO rewards are all 0 against itself).
    "logp_correct",
)


def ranking_accuracy(correct, ties, pairs):
    """Share of pairs ranked chosen-first, a tie counting as half a correct ranking."""
    return (correct + 0.5 * ties) / pairs


def sequence_logps(
    logits_BTV: jax.Array, targets_BT: jax.Array, loss_mask_BT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-row summed log-probability of the supervised targets, and their count (fp32)."""
    nll_BT, _ = token_nll(logits_BTV, targets_BT)
    mask_BT = loss_mask_BT.astype(jnp.float32)
    return -jnp.sum(nll_BT * mask_BT, axis=-1), jnp.sum(mask_BT, axis=-1)


def _smoothed_logistic(x: jax.Array, eps: float) -> jax.Array:
    """-(1 - ε) log σ(x) - ε log σ(-x), stable for any x (log_sigmoid never exps a big x)."""
    return -(1.0 - eps) * jax.nn.log_sigmoid(x) - eps * jax.nn.log_sigmoid(-x)


def _per_token(logp: jax.Array, num_tokens: jax.Array) -> jax.Array:
    # max(., 1): invalid pairs have no tokens; 0/0 would poison gradients through `where`.
    return logp / jnp.maximum(num_tokens, 1.0)


def pair_losses_and_rewards(
    cfg: PreferenceConfig,
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array | None,
    ref_rejected: jax.Array | None,
    chosen_tokens: jax.Array,
    rejected_tokens: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-pair loss (without masking) and the implied chosen / rejected rewards."""
    beta = cfg.beta
    if cfg.loss == "simpo":
        chosen_reward = beta * _per_token(policy_chosen, chosen_tokens)
        rejected_reward = beta * _per_token(policy_rejected, rejected_tokens)
        loss = _smoothed_logistic(
            chosen_reward - rejected_reward - cfg.simpo_gamma, cfg.label_smoothing
        )
    else:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"preference.loss={cfg.loss!r} needs reference log-probs")
        chosen_ratio = policy_chosen - ref_chosen
        rejected_ratio = policy_rejected - ref_rejected
        h = chosen_ratio - rejected_ratio
        chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
        if cfg.loss == "sigmoid":
            loss = _smoothed_logistic(beta * h, cfg.label_smoothing)
        elif cfg.loss == "ipo":
            loss = jnp.square(h - 1.0 / (2.0 * beta))
        else:
            raise ValueError(f"unknown preference.loss {cfg.loss!r}")
    if cfg.nll_weight > 0:
        loss = loss + cfg.nll_weight * -_per_token(policy_chosen, chosen_tokens)
    return loss, chosen_reward, rejected_reward


def preference_loss(
    cfg: PreferenceConfig,
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array | None,
    ref_rejected: jax.Array | None,
    chosen_tokens: jax.Array,
    rejected_tokens: jax.Array,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, Sums]:
    """Summed per-pair loss over valid pairs, and metric sums (keys: METRIC_SUMS).

    Every argument is a [B] array of per-pair values: summed response log-probs,
    supervised token counts, and `valid` (default: both token counts > 0). The
    reference log-probs may be None for SimPO, which ignores them.
    """
    f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
    chosen_tokens, rejected_tokens = f32(chosen_tokens), f32(rejected_tokens)
    if valid is None:
        valid = (chosen_tokens > 0) & (rejected_tokens > 0)
    # Zero the inputs of invalid pairs before any arithmetic: a NaN or inf in a filler
    # pair (e.g. a precomputed reference value) must not leak into the gradient of the
    # valid ones through a `where` on the result (0 * NaN = NaN in the backward pass).
    clean = lambda x: None if x is None else jnp.where(valid, f32(x), 0.0)
    pc, pr, rc, rr = map(clean, (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    loss, chosen_reward, rejected_reward = pair_losses_and_rewards(
        cfg, pc, pr, rc, rr, chosen_tokens, rejected_tokens
    )
    total = lambda x: jnp.sum(jnp.where(valid, x, 0.0))
    sums = {
        "pairs": total(jnp.ones_like(loss)),
        "correct": total((chosen_reward > rejected_reward).astype(jnp.float32)),
        "ties": total((chosen_reward == rejected_reward).astype(jnp.float32)),
        "chosen_reward_sum": total(chosen_reward),
        "rejected_reward_sum": total(rejected_reward),
        "margin_sum": total(chosen_reward - rejected_reward),
        "chosen_logp_sum": total(pc),
        "rejected_logp_sum": total(pr),
        "nll_sum": total(-_per_token(pc, chosen_tokens)),
        "logp_correct": total(
            (_per_token(pc, chosen_tokens) > _per_token(pr, rejected_tokens)).astype(jnp.float32)
        ),
    }
    return total(loss), sums
