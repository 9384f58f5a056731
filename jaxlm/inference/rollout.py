"""Rollouts for reinforcement learning: sampling with the KV cache in one jitted call,
returning the per-token log-probs of the sampling policy beside the tokens.

    rollout = make_rollout(model_cfg, graphdef, max_new_tokens=64,
                           sampling=SamplingConfig(temperature=1.0), stop_ids=(eos,))
    out = rollout(states, prompts_BP, lengths_B, key)   # jit it; pure
    out.tokens, out.logps, out.mask, out.num_tokens, out.truncated   # [B, R] / [B]

Unlike `decode.Generator` (a host loop of one jitted step per token, for chat and
streaming), the whole rollout is one program: prefill, then a `lax.while_loop` of
cached decode steps that ends when every row has stopped or `max_new_tokens` were
made. It runs with whatever parameter States it is given (a LoRA run's adapters and
frozen base, or the full params) on the training mesh, so rollouts need no second
copy of the weights, and its batch is sharded like the training batch.

Layout (the cache's, kv_cache.py): prompts right-padded to P slots, response token t
in slot P + t with RoPE position len_b + t. `response_logps` recomputes the same
log-probs by a teacher-forced pass over that layout, which is what the RL update
differentiates; the two agree to float rounding (tests/test_rollout.py).

The policy's distribution is the model's softmax at the sampling temperature
(logits / t; t = 0 counts as 1): `logps` are log-probs under it, and
`response_logps` uses the same temperature. top-k / top-p / min-p narrow what is
*drawn* but are not part of that distribution (TRL does the same), so with them on,
the sampler is slightly off-policy; the repetition penalty is refused for rollouts.

The response holds the tokens up to and including the first stop token (the policy
must learn to end), or all `max_new_tokens` tokens of a row that never stopped
(`truncated`); `mask` marks them. Slots after a row's end hold `pad_id`.

Dimension legend: B batch (rows), P prompt slots, R response slots, V vocabulary,
D model width, S cache slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.inference.kv_cache import KVCache, empty_cache, forward_cached, place_cache
from jaxlm.inference.sampling import SamplingConfig, filtered_logits
from jaxlm.models.transformer import run_layers
from jaxlm.sharding import constrain


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Rollout:
    tokens: jax.Array  # [B, R] int32 response tokens, pad_id after the row's end
    logps: jax.Array  # [B, R] float32 log-prob of each token under the sampling policy
    mask: jax.Array  # [B, R] bool: part of the response (stop token included)
    num_tokens: jax.Array  # [B] int32 response length (= mask.sum(-1))
    truncated: jax.Array  # [B] bool: reached max_new_tokens without a stop token


def policy_logits(logits_BV: jax.Array, temperature: float) -> jax.Array:
    """Logits of the policy's distribution: the model's, over the sampling temperature."""
    return logits_BV.astype(jnp.float32) / (temperature if temperature > 0 else 1.0)


def token_logps(logits_BV: jax.Array, tokens_B: jax.Array, temperature: float) -> jax.Array:
    logp_BV = jax.nn.log_softmax(policy_logits(logits_BV, temperature), axis=-1)
    return jnp.take_along_axis(logp_BV, tokens_B[..., None], axis=-1)[..., 0]


def check_rollout_sampling(sampling: SamplingConfig) -> None:
    if sampling.repetition_penalty != 1.0:
        raise InputError(
            "rollouts: repetition_penalty must be 1 (a penalised draw is not the policy "
            "whose log-probs the update uses)"
        )


def make_rollout(
    cfg: ModelConfig,
    graphdef: nnx.GraphDef,
    *,
    max_new_tokens: int,
    sampling: SamplingConfig,
    stop_ids: Sequence[int],
    pad_id: int = 0,
) -> Callable[..., Rollout]:
    """A pure rollout(states, prompts_BP, lengths_B, key) -> Rollout; see the docstring.

    `states` is a State or a tuple of States merged into the model (param_views.py);
    prompts_BP are right-padded; `key` draws every token (step t uses fold_in(key, t)).
    """
    check_rollout_sampling(sampling)
    if max_new_tokens < 1:
        raise InputError(f"rollouts: max_new_tokens={max_new_tokens} must be >= 1")
    stops = jnp.asarray(sorted({int(s) for s in stop_ids}) or [-1], jnp.int32)
    temperature = sampling.temperature
    R = max_new_tokens

    def draw(logits_BV, key):
        token_B = _sample(logits_BV, key, sampling)
        return token_B, token_logps(logits_BV, token_B, temperature)

    def rollout(states, prompts_BP, lengths_B, key) -> Rollout:
        B, P = prompts_BP.shape
        S = P + R
        cache = _empty_cache(cfg, B, S)
        valid_BP = jnp.arange(P)[None, :] < lengths_B[:, None]
        positions_BP = jnp.where(valid_BP, jnp.arange(P, dtype=jnp.int32)[None, :], 0)
        logits_BV, cache = forward_cached(
            cfg,
            graphdef,
            states,
            cache,
            prompts_BP,
            positions_BP,
            valid_BP,
            jnp.int32(0),
            logits_at_B=lengths_B - 1,
        )
        token_B, logp_B = draw(logits_BV, jax.random.fold_in(key, 0))
        tokens_BR = jnp.full((B, R), pad_id, jnp.int32).at[:, 0].set(token_B)
        logps_BR = jnp.zeros((B, R), jnp.float32).at[:, 0].set(logp_B)
        done_B = jnp.isin(token_B, stops)  # stopped at or before the last token made

        def more(carry):
            step, _, _, done_B, _, _ = carry
            return (step < R) & ~jnp.all(done_B)

        def decode(carry):
            step, token_B, cache, done_B, tokens_BR, logps_BR = carry
            # Feed the token made at step - 1 into slot P + step - 1.
            logits_B1V, cache = forward_cached(
                cfg,
                graphdef,
                states,
                cache,
                token_B[:, None],
                (lengths_B + step - 1)[:, None],
                ~done_B[:, None],
                P + step - 1,
            )
            next_B, logp_B = draw(logits_B1V[:, 0], jax.random.fold_in(key, step))
            next_B = jnp.where(done_B, pad_id, next_B)
            logp_B = jnp.where(done_B, 0.0, logp_B)
            tokens_BR = jax.lax.dynamic_update_slice(tokens_BR, next_B[:, None], (0, step))
            logps_BR = jax.lax.dynamic_update_slice(logps_BR, logp_B[:, None], (0, step))
            done_B = done_B | jnp.isin(next_B, stops)
            return step + 1, next_B, cache, done_B, tokens_BR, logps_BR

        carry = (jnp.int32(1), token_B, cache, done_B, tokens_BR, logps_BR)
        _, _, _, done_B, tokens_BR, logps_BR = jax.lax.while_loop(more, decode, carry)
        mask_BR = response_mask(tokens_BR, stops)
        return Rollout(
            tokens=jnp.where(mask_BR, tokens_BR, pad_id),
            logps=jnp.where(mask_BR, logps_BR, 0.0),
            mask=mask_BR,
            num_tokens=mask_BR.sum(-1).astype(jnp.int32),
            truncated=~done_B,
        )

    return rollout


def response_mask(tokens_BR: jax.Array, stops: jax.Array) -> jax.Array:
    """True up to and including each row's first stop token (everything without one)."""
    is_stop_BR = jnp.isin(tokens_BR, stops)
    stops_before_BR = jnp.cumsum(is_stop_BR, axis=-1) - is_stop_BR
    return stops_before_BR == 0


def _sample(logits_BV: jax.Array, key: jax.Array, sampling: SamplingConfig) -> jax.Array:
    logits_BV = filtered_logits(logits_BV, None, sampling)  # no repetition penalty
    if sampling.greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def _empty_cache(cfg: ModelConfig, B: int, S: int) -> KVCache:
    """A cache created inside the traced rollout, laid out like kv_cache.init_cache's
    (in the compute dtype: rollouts' log-probs must match the teacher-forced pass's)."""
    return place_cache(empty_cache(cfg, B, S), lambda array, axes: constrain(array, *axes))


def sequence_layout(prompts_BP, lengths_B, tokens_BR, mask_BR):
    """The rollout's [prompt slots | response slots] rows as model inputs:
    tokens, positions and segment_ids [B, P + R] (segment 0 marks padding)."""
    P = prompts_BP.shape[1]
    valid_BP = jnp.arange(P)[None, :] < lengths_B[:, None]
    tokens_BS = jnp.concatenate([prompts_BP, tokens_BR], axis=1)
    positions_BS = jnp.concatenate(
        [
            jnp.where(valid_BP, jnp.arange(P, dtype=jnp.int32)[None, :], 0),
            lengths_B[:, None] + jnp.arange(tokens_BR.shape[1], dtype=jnp.int32)[None, :],
        ],
        axis=1,
    )
    segment_ids_BS = jnp.concatenate([valid_BP, mask_BR], axis=1).astype(jnp.int32)
    return tokens_BS, positions_BS.astype(jnp.int32), segment_ids_BS


def response_logps(
    graphdef: nnx.GraphDef,
    states,
    prompts_BP: jax.Array,
    lengths_B: jax.Array,
    tokens_BR: jax.Array,
    mask_BR: jax.Array,
    *,
    temperature: float,
    with_entropy: bool = False,
):
    """Teacher-forced log-probs [B, R] of the response tokens under the policy (the
    rollout's layout and temperature), and with `with_entropy` the policy's entropy
    at each response position [B, R]. Masked-out slots give 0."""
    out = response_outputs(
        graphdef, states, prompts_BP, lengths_B, tokens_BR, mask_BR, temperature=temperature
    )
    return (out["logps"], out["entropy"]) if with_entropy else out["logps"]


def response_outputs(
    graphdef: nnx.GraphDef,
    states,
    prompts_BP: jax.Array,
    lengths_B: jax.Array,
    tokens_BR: jax.Array,
    mask_BR: jax.Array,
    *,
    temperature: float,
    with_values: bool = False,
) -> dict[str, jax.Array]:
    """One teacher-forced pass over the rollout's layout: per response slot [B, R] the
    token's log-prob ("logps"), the policy's entropy ("entropy") and, with
    `with_values`, the score head's value of the state that emits the token ("values":
    PPO's critic, read where the logits are). Masked-out slots give 0.

    Only the R positions that predict a response token go through the heads (hidden
    states are gathered first), so a large vocabulary costs R, not P + R.
    """
    model = nnx.merge(graphdef, *(states if isinstance(states, tuple) else (states,)))
    P, R = prompts_BP.shape[1], tokens_BR.shape[1]
    tokens_BS, positions_BS, segment_ids_BS = sequence_layout(
        prompts_BP, lengths_B, tokens_BR, mask_BR
    )
    x_BSD = model.embed_tokens(tokens_BS)
    x_BSD = run_layers(model.cfg, model.layers.arrays(), x_BSD, positions_BS, segment_ids_BS)
    # Response token 0 is predicted at the last prompt slot, token t > 0 at slot P + t - 1.
    steps_R = jnp.arange(R)
    index_BR = jnp.where(steps_R[None, :] == 0, (lengths_B - 1)[:, None], P + steps_R - 1)
    x_BRD = jnp.take_along_axis(x_BSD, index_BR[:, :, None], axis=1)
    logp_BRV = jax.nn.log_softmax(policy_logits(model.logits(x_BRD), temperature), axis=-1)
    logps_BR = jnp.take_along_axis(logp_BRV, tokens_BR[..., None], axis=-1)[..., 0]
    entropy_BR = -jnp.sum(jnp.exp(logp_BRV) * logp_BRV, axis=-1)
    out = {
        "logps": jnp.where(mask_BR, logps_BR, 0.0),
        "entropy": jnp.where(mask_BR, entropy_BR, 0.0),
    }
    if with_values:
        out["values"] = jnp.where(mask_BR, model.score_of(x_BRD), 0.0)
    return out
