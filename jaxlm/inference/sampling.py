"""From logits to the next token: penalties, temperature, top-k, top-p, min-p, sampling.

The filters are applied in this order, each to the output of the previous one (the
order most libraries use, so settings carry over):

1. repetition penalty p (Keskar et al. 2019, CTRL): a token already in the row's
   prompt or output has its logit divided by p if positive, multiplied by p if not;
2. temperature: logits / t; t = 0 means greedy (argmax, no randomness at all);
3. top-k: keep the k largest logits (ties with the k-th are kept too);
4. top-p (nucleus, Holtzman et al. 2020): keep the smallest set of most likely tokens
   whose probability reaches p;
5. min-p (Nguyen et al. 2024): keep tokens whose probability is at least
   min_p * the largest probability.

Removed tokens get logit -inf, so they can never be drawn. All settings are static
(a frozen dataclass, hashable), so each combination compiles once.

Dimension legend: B batch, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm.errors import InputError


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, f"temperature={self.temperature} must be >= 0"),
            (self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0 turns it off)"),
            (0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]"),
            (0 <= self.min_p <= 1, f"min_p={self.min_p} must be in [0, 1]"),
            (self.repetition_penalty > 0, f"repetition_penalty={self.repetition_penalty} > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"sampling: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def penalize_repeats(logits_BV: jax.Array, seen_BV: jax.Array, penalty: float) -> jax.Array:
    """CTRL's repetition penalty on the tokens marked in `seen_BV`."""
    if penalty == 1.0:
        return logits_BV
    penalized = jnp.where(logits_BV > 0, logits_BV / penalty, logits_BV * penalty)
    return jnp.where(seen_BV, penalized, logits_BV)


def keep_top_k(logits_BV: jax.Array, k: int) -> jax.Array:
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    kth_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)


def keep_top_p(logits_BV: jax.Array, p: float) -> jax.Array:
    if p >= 1.0:
        return logits_BV
    order_BV = jnp.argsort(-logits_BV, axis=-1)
    sorted_BV = jnp.take_along_axis(logits_BV, order_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep a token if the mass of the tokens ranked above it has not yet reached p:
    # the most likely token is always kept.
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_sorted_BV = mass_before_BV < p
    rows_B1 = jnp.arange(logits_BV.shape[0])[:, None]
    keep_BV = jnp.zeros_like(keep_sorted_BV).at[rows_B1, order_BV].set(keep_sorted_BV)
    return jnp.where(keep_BV, logits_BV, -jnp.inf)


def keep_min_p(logits_BV: jax.Array, min_p: float) -> jax.Array:
    if min_p <= 0.0:
        return logits_BV
    # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
    threshold_B1 = jnp.max(logits_BV, axis=-1, keepdims=True) + jnp.log(min_p)
    return jnp.where(logits_BV >= threshold_B1, logits_BV, -jnp.inf)


def filtered_logits(logits_BV: jax.Array, seen_BV: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Logits after every filter (temperature applied); -inf marks removed tokens."""
    logits_BV = penalize_repeats(logits_BV.astype(jnp.float32), seen_BV, cfg.repetition_penalty)
    if cfg.greedy:
        return logits_BV
    logits_BV = logits_BV / cfg.temperature
    logits_BV = keep_top_k(logits_BV, cfg.top_k)
    logits_BV = keep_top_p(logits_BV, cfg.top_p)
    return keep_min_p(logits_BV, cfg.min_p)


def below_limit(logits_BV: jax.Array, token_limit: int | None) -> jax.Array:
    """Logits with the ids >= token_limit removed (-inf); unchanged for None.

    An imported model may have more embedding rows than its tokenizer has tokens (Qwen
    pads its table to a multiple of 128): those ids have no text, so generation must
    never draw one (decoding it would fail).
    """
    if token_limit is None or token_limit >= logits_BV.shape[-1]:
        return logits_BV
    return jnp.where(jnp.arange(logits_BV.shape[-1]) < token_limit, logits_BV, -jnp.inf)


def sample(
    logits_BV: jax.Array, seen_BV: jax.Array, key: jax.Array, cfg: SamplingConfig
) -> jax.Array:
    """Next token ids [B] (int32)."""
    logits_BV = filtered_logits(logits_BV, seen_BV, cfg)
    if cfg.greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)
