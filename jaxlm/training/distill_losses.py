"""Divergences between a student's and a teacher's next-token distributions.

Per token, with s = the student's and t = the teacher's log-probs at temperature τ
(log_softmax(logits / τ)):

    forward_kl   KL(t || s) = Σ_v p_t (log p_t - log p_s)     (mass-covering; Hinton's KD)
    reverse_kl   KL(s || t) = Σ_v p_s (log p_s - log p_t)     (mode-seeking; MiniLLM)
    jsd          β KL(t || m) + (1 - β) KL(s || m),  m = β p_t + (1 - β) p_s
                 (GKD's generalised Jensen-Shannon divergence, with TRL's convention
                 for β: β → 0 tends to 0, so β must lie strictly inside (0, 1); use
                 forward_kl or reverse_kl for the end points)

The training objective on the tokens the loss mask selects is

    alpha · CE(student, targets) + (1 - alpha) · τ² · D(t, s)

(τ² keeps the gradient's scale independent of τ, Hinton et al. 2015). Both terms are
returned as *sums* over supervised tokens (jaxlm.training.losses), so gradient
accumulation equals the large batch.

The teacher comes either as full logits (online) or as its top-k log-probs precomputed
once (offline, jaxlm.training.teacher_topk). Over top-k the divergence is taken between
the two distributions *coarsened to k + 1 outcomes*: the teacher's k tokens, each
keeping its own probability, and one tail bucket holding all the other tokens' mass
(the teacher's tail mass is stored with its top-k; the student's is computed exactly
from its full distribution). Nothing is renormalised, the result is a true divergence
(≤ the full one, by the data-processing inequality), and with k = V the tail is empty
and it equals the full divergence: the online and offline paths then give the same
loss and gradient (tests/test_distill_losses.py).

Dimension legend: B batch, T sequence, V vocabulary, K teacher's top-k.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# A log-probability standing for "no mass" (an empty tail bucket). Finite on purpose:
# -inf would give NaN gradients through logsumexp and 0 · inf, while exp(-1e30) is
# exactly 0, so a term weighted by it vanishes along with its gradient.
NO_MASS = -1e30

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


class DistillSums(NamedTuple):
    """Per-batch sums over supervised tokens; divide by `num_tokens` for means."""

    nll: jax.Array  # the student's next-token cross-entropy, nats
    divergence: jax.Array  # D(teacher, student) at the temperature, nats (no τ²)
    z: jax.Array  # squared log-partition of the student (z-loss)
    num_tokens: jax.Array


def log_probs(logits: jax.Array, temperature: float) -> jax.Array:
    """log_softmax(logits / τ) in float32."""
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def divergence(
    teacher_logp: jax.Array, student_logp: jax.Array, kind: str, beta: float = 0.5
) -> jax.Array:
    """Per-position divergence over the last axis of two log-prob arrays (each a
    distribution over the same outcomes: the vocabulary, or top-k + tail)."""
    p_t, p_s = jnp.exp(teacher_logp), jnp.exp(student_logp)
    if kind == "forward_kl":
        return jnp.sum(p_t * (teacher_logp - student_logp), axis=-1)
    if kind == "reverse_kl":
        return jnp.sum(p_s * (student_logp - teacher_logp), axis=-1)
    if kind == "jsd":
        mix = jnp.logaddexp(teacher_logp + jnp.log(beta), student_logp + jnp.log1p(-beta))
        kl_t = jnp.sum(p_t * (teacher_logp - mix), axis=-1)
        kl_s = jnp.sum(p_s * (student_logp - mix), axis=-1)
        return beta * kl_t + (1 - beta) * kl_s
    raise ValueError(f"unknown divergence {kind!r}; choose from {DIVERGENCES}")


def topk_and_tail(logp_BTV: jax.Array, ids_BTK: jax.Array) -> jax.Array:
    """[B, T, K + 1]: the log-probs of the ids, then the log of all other tokens' mass.

    The tail is a logsumexp over the tokens not among the ids (computed, never
    1 - Σ, which cancels catastrophically when the top-k hold almost everything).
    """
    picked = jnp.take_along_axis(logp_BTV, ids_BTK, axis=-1)
    # A scatter, not a comparison with arange(V): that would hold [B, T, K, V].
    flat_ids = ids_BTK.reshape(-1, ids_BTK.shape[-1])
    rows = jnp.arange(flat_ids.shape[0])[:, None]
    chosen = jnp.zeros((flat_ids.shape[0], logp_BTV.shape[-1]), bool).at[rows, flat_ids].set(True)
    chosen = chosen.reshape(logp_BTV.shape)
    tail = jax.nn.logsumexp(jnp.where(chosen, NO_MASS, logp_BTV), axis=-1)
    # With every token chosen the logsumexp is NO_MASS + log V: still no mass.
    tail = jnp.maximum(tail, NO_MASS)
    return jnp.concatenate([picked, tail[..., None]], axis=-1)


def teacher_topk(logits_BTV: jax.Array, k: int, temperature: float):
    """The teacher's top-k ids [B, T, K] (int32) and log-probs with the tail [B, T, K+1],
    at the temperature: what an offline table stores."""
    logp = log_probs(logits_BTV, temperature)
    _, ids = jax.lax.top_k(logp, k)
    return ids.astype(jnp.int32), topk_and_tail(logp, ids)


def distill_sums(
    student_logits_BTV: jax.Array,
    targets_BT: jax.Array,
    loss_mask_BT: jax.Array,
    *,
    kind: str,
    temperature: float,
    beta: float = 0.5,
    teacher_logits_BTV: jax.Array | None = None,
    teacher_ids_BTK: jax.Array | None = None,
    teacher_logp_BTK1: jax.Array | None = None,
) -> DistillSums:
    """Masked sums of the student's CE and of D(teacher, student); the teacher as full
    logits (online) or as top-k ids + log-probs with the tail bucket (offline)."""
    logits = student_logits_BTV.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BT[..., None], axis=-1)[..., 0]
    student = log_probs(logits, temperature)
    if teacher_logits_BTV is not None:
        teacher = log_probs(jax.lax.stop_gradient(teacher_logits_BTV), temperature)
    else:
        student = topk_and_tail(student, teacher_ids_BTK)
        teacher = jax.lax.stop_gradient(teacher_logp_BTK1.astype(jnp.float32))
    mask = loss_mask_BT.astype(jnp.float32)
    div = divergence(teacher, student, kind, beta)
    return DistillSums(
        nll=jnp.sum((log_z - target_logit) * mask),
        divergence=jnp.sum(div * mask),
        z=jnp.sum(jnp.square(log_z) * mask),
        num_tokens=jnp.sum(mask),
    )


def objective(sums: DistillSums, *, alpha: float, temperature: float) -> jax.Array:
    """alpha · CE + (1 - alpha) · τ² · D, summed (divide by num_tokens for the mean)."""
    return alpha * sums.nll + (1 - alpha) * temperature**2 * sums.divergence
