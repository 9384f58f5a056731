"""Sampling where every row of the batch has its own settings, key and log-probs.

A server's decode batch mixes requests with different temperatures, nucleus masses
and seeds, so the settings are arrays here ([B]), not the static SamplingConfig of
jaxlm.inference.sampling (which compiles once per setting: fine for one command's
batch, one compilation per request mix here).

Row independence is the point: a request's tokens must not depend on what else is in
the batch. So every row draws with its own key (`fold_in(request key, token index)`,
through vmap), and top-p is applied row by row: a row with top_p = 1 keeps its full
distribution even when another row's filter runs (a batch-wide shortcut would change
which float sums a row sees).

Log-probs are the model's own distribution (log-softmax of the raw logits, before
temperature and top-p), as OpenAI's `logprobs` and lm-evaluation-harness read them.

Dimension legend: B batch, V vocabulary, N top log-probs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm.inference.sampling import below_limit


def _ordered_keys(x_BV: jax.Array) -> jax.Array:
    """uint32 keys that sort as the float32 values do (-inf included)."""
    bits = jax.lax.bitcast_convert_type(x_BV.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def top_p_rows(logits_BV: jax.Array, top_p_B: jax.Array) -> jax.Array:
    """Each row keeps its smallest most-likely set of mass >= top_p (ties kept too);
    rows with top_p >= 1 are returned unchanged.

    No sort: XLA's sort on CPU takes ~0.6 ms per 4096-wide row, more than a small
    model's whole decode step. The cut is found instead by bisection on the values'
    ordered bit patterns: 32 halvings of the uint32 range find exactly the largest
    threshold t whose tokens {logit >= t} still hold mass >= top_p.
    """
    probs_BV = jax.nn.softmax(logits_BV, axis=-1)
    keys_BV = _ordered_keys(logits_BV)

    def mass_at_least(t_B):
        return jnp.sum(jnp.where(keys_BV >= t_B[:, None], probs_BV, 0.0), axis=-1)

    def halve(_, bounds):
        lo_B, hi_B = bounds  # mass(>= lo) >= top_p > mass(>= hi)
        mid_B = lo_B + (hi_B - lo_B) // 2
        enough_B = mass_at_least(mid_B) >= top_p_B
        return jnp.where(enough_B, mid_B, lo_B), jnp.where(enough_B, hi_B, mid_B)

    lo_B = jnp.min(keys_BV, axis=-1)
    hi_B = jnp.max(keys_BV, axis=-1) + 1  # finite logits: no overflow
    lo_B, _ = jax.lax.fori_loop(0, 32, halve, (lo_B, hi_B))
    filtered_BV = jnp.where(keys_BV >= lo_B[:, None], logits_BV, -jnp.inf)
    return jnp.where((top_p_B < 1.0)[:, None], filtered_BV, logits_BV)


def sample_rows(
    logits_BV: jax.Array,
    keys_B: jax.Array,
    temperature_B: jax.Array,
    top_p_B: jax.Array,
    *,
    top_n: int,
    token_limit: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(tokens [B], their log-probs [B], top-N ids [B, N], top-N log-probs [B, N]).

    temperature 0 is greedy (argmax of the raw logits). `top_n` is static: 0 skips the
    top-N search when no request in the batch asked for it. `token_limit`: ids at or
    above it are never drawn (an imported model's embedding rows past its tokenizer's
    vocabulary, padding with no text); log-probs still come from every row.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    logprobs_BV = jax.nn.log_softmax(logits_BV, axis=-1)
    logits_BV = below_limit(logits_BV, token_limit)
    greedy_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    scale_B = jnp.where(temperature_B > 0, temperature_B, 1.0)
    scaled_BV = logits_BV / scale_B[:, None]
    # Skipped when no row filters; rows with top_p = 1 are untouched either way.
    scaled_BV = jax.lax.cond(jnp.any(top_p_B < 1.0), top_p_rows, lambda x, _: x, scaled_BV, top_p_B)
    drawn_B = jax.vmap(jax.random.categorical)(keys_B, scaled_BV).astype(jnp.int32)
    token_B = jnp.where(temperature_B > 0, drawn_B, greedy_B)
    token_logprob_B = jnp.take_along_axis(logprobs_BV, token_B[:, None], axis=-1)[:, 0]
    if top_n:
        top_logprobs_BN, top_ids_BN = jax.lax.top_k(logprobs_BV, top_n)
    else:
        B = logits_BV.shape[0]
        top_logprobs_BN, top_ids_BN = jnp.zeros((B, 0), jnp.float32), jnp.zeros((B, 0), jnp.int32)
    return token_B, token_logprob_B, top_ids_BN.astype(jnp.int32), top_logprobs_BN


def row_keys(key_data_B2: jax.Array, step_B: jax.Array) -> jax.Array:
    """Row b's key for its token `step_B[b]`: fold_in(its request key, step)."""
    return jax.vmap(lambda data, step: jax.random.fold_in(jax.random.wrap_key_data(data), step))(
        key_data_B2, step_B
    )
