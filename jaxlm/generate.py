"""Greedy and sampled completion without a KV cache.

Each new token runs the model over a fixed-length buffer, so one compilation serves
every step and every prompt length up to the buffer. That costs O(T) per token,
which is fine for the quickstart's short completions; cached decoding belongs in the
inference module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def make_next_token_fn(graphdef: nnx.GraphDef):
    """jit: (params, buffer [1, T], length, key, temperature) -> next token id."""

    @jax.jit
    def next_token(params, buffer_1T, length, key, temperature):
        # One State, or a tuple merged together (e.g. LoRA adapters + base).
        model = nnx.merge(graphdef, *(params if isinstance(params, tuple) else (params,)))
        # Causal attention: positions at and after `length` (still padding) cannot
        # influence the logits at length - 1.
        logits_1TV = model(buffer_1T)
        logits_V = jax.lax.dynamic_index_in_dim(logits_1TV[0], length - 1, keepdims=False)
        greedy = jnp.argmax(logits_V)
        sampled = jax.random.categorical(key, logits_V / jnp.maximum(temperature, 1e-6))
        return jnp.where(temperature > 0, sampled, greedy)

    return next_token


def complete(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    buffer_len: int,
    stop_id: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    next_token_fn=None,
) -> list[int]:
    """Token ids generated after `prompt_ids` (greedy when temperature == 0)."""
    if not prompt_ids:
        raise ValueError("the prompt must contain at least one token")
    prompt_ids = list(prompt_ids)[-(buffer_len - 1) :]
    next_token_fn = next_token_fn or make_next_token_fn(graphdef)
    buffer = np.zeros((1, buffer_len), np.int32)
    buffer[0, : len(prompt_ids)] = prompt_ids
    length = len(prompt_ids)
    key = jax.random.key(seed)
    out: list[int] = []
    for _ in range(max_new_tokens):
        if length >= buffer_len:
            break
        key, sub = jax.random.split(key)
        token = int(next_token_fn(params, buffer, length, sub, temperature))
        if stop_id is not None and token == stop_id:
            break
        buffer[0, length] = token
        length += 1
        out.append(token)
    return out
