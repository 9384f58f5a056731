"""Batched generation: one jitted prefill, then one jitted cached decode step per token.

    gen = Generator(model.cfg.model, model.graphdef, model.params)
    out = gen.generate([ids_a, ids_b], max_new_tokens=64,
                       sampling=SamplingConfig(temperature=0.8, top_p=0.95),
                       stop_ids=(tokenizer.eos_id,), seed=0)
    out.tokens  # the new tokens of each prompt, stop token excluded

Prompts may differ in length (right-padded into one cache, see kv_cache.py). Each
row stops on its own at a stop token; the others go on, and the loop ends when every
row has stopped or `max_new_tokens` were made. The prefill samples the first token,
each decode step feeds the previous token and samples the next, so n new tokens cost
one prefill and n - 1 decode steps.

Shapes are bucketed (prompt length to a power of two >= 16, cache slots to a
multiple of 16), so a Generator compiles once per bucket and sampling setting, not
once per prompt. Same prompts, settings and seed give the same tokens: step t draws
with `fold_in(key(seed), t)`. With a `mesh`, params must already be sharded on it
(loading.load_model(..., mesh=mesh)); the cache and inputs are placed on it and the
steps run under it, so a model split over devices generates without gathering.
`kv_cache_dtype` ("auto", "bfloat16", "int8") is the cache's storage (kv_cache.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.inference.kv_cache import forward_cached, init_cache, storage_dtype
from jaxlm.inference.sampling import SamplingConfig, below_limit, sample
from jaxlm.sharding import named_sharding

GREEDY = SamplingConfig()

# Called after each step with (step, tokens [B], emitted [B]): emitted[b] is False
# for a stop token and for the padding a stopped row gets. Streams to a terminal.
TokenCallback = Callable[[int, np.ndarray, np.ndarray], None]


@dataclasses.dataclass
class Generation:
    tokens: list[list[int]]  # per prompt: the new tokens, without the stop token
    stopped: list[bool]  # per prompt: ended by a stop token (else by max_new_tokens)
    steps: int  # tokens generated for the longest row
    prefill_s: float  # wall time of the prefill, including its first compilation
    decode_s: float  # wall time of the decode steps


def _bucket_prompt(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Generator:
    """Compiled prefill and decode for one model; reuse it across calls."""

    def __init__(
        self,
        cfg: ModelConfig,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        *,
        mesh: jax.sharding.Mesh | None = None,
        pad_id: int = 0,
        kv_cache_dtype: str = "auto",
        token_limit: int | None = None,
    ):
        """`token_limit`: the tokenizer's vocabulary size when the model has more rows
        (ids past it are padding, never generated; sampling.below_limit)."""
        self.token_limit = token_limit
        self.cfg, self.graphdef, self.params, self.mesh, self.pad_id = (
            cfg,
            graphdef,
            params,
            mesh,
            pad_id,
        )
        storage_dtype(cfg, kv_cache_dtype)  # refuses an unknown choice now, not mid-generate
        self.kv_cache_dtype = kv_cache_dtype
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("sampling",))
        self._decode = jax.jit(
            self._decode_fn,
            static_argnames=("sampling", "stop_ids", "prompt_slots"),
            donate_argnums=(1, 2),
        )

    # -- the two jitted functions ------------------------------------------------------

    def _prefill_fn(self, params, cache, tokens_BP, lengths_B, key, *, sampling):
        B, P = tokens_BP.shape
        valid_BP = jnp.arange(P)[None, :] < lengths_B[:, None]
        # Padding slots get position 0 (they are never attended to): dynamic RoPE scaling
        # reads the call's length from the largest position, which must then be the
        # longest prompt's, as in transformers, not the padded bucket's.
        positions_BP = jnp.where(valid_BP, jnp.arange(P, dtype=jnp.int32)[None, :], 0)
        logits_BV, cache = forward_cached(
            self.cfg,
            self.graphdef,
            params,
            cache,
            tokens_BP,
            positions_BP,
            valid_BP,
            jnp.int32(0),
            logits_at_B=lengths_B - 1,
        )
        rows_B1 = jnp.arange(B)[:, None]
        seen_BV = jnp.zeros_like(logits_BV, bool).at[rows_B1, tokens_BP].max(valid_BP)
        logits_BV = below_limit(logits_BV, self.token_limit)
        token_B = sample(logits_BV, seen_BV, jax.random.fold_in(key, 0), sampling)
        return token_B, cache, seen_BV

    def _decode_fn(
        self,
        params,
        cache,
        seen_BV,
        token_B,
        done_B,
        lengths_B,
        step,
        key,
        *,
        sampling,
        stop_ids,
        prompt_slots,
    ):
        """Feed `token_B` (made at step - 1) and sample the token of `step`.

        `done_B` marks rows that stopped before `token_B`; the returned one, rows that
        stopped at or before it. Stopped rows get `pad_id`.
        """
        B = token_B.shape[0]
        rows_B = jnp.arange(B)
        seen_BV = seen_BV.at[rows_B, token_B].max(~done_B)
        done_B = done_B | jnp.isin(token_B, jnp.asarray(stop_ids, jnp.int32))
        logits_B1V, cache = forward_cached(
            self.cfg,
            self.graphdef,
            params,
            cache,
            token_B[:, None],
            (lengths_B + step - 1)[:, None],
            ~done_B[:, None],
            prompt_slots + step - 1,
        )
        logits_BV = below_limit(logits_B1V[:, 0], self.token_limit)
        next_B = sample(logits_BV, seen_BV, jax.random.fold_in(key, step), sampling)
        next_B = jnp.where(done_B, self.pad_id, next_B)
        return next_B, done_B, cache, seen_BV

    # -- the host loop -------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig = GREEDY,
        stop_ids: Sequence[int] = (),
        seed: int = 0,
        on_tokens: TokenCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """Generate up to `max_new_tokens` after each prompt; see the module docstring.

        `should_stop()` is asked after every token (e.g. has the user pressed Ctrl-C?);
        when it says True, generation ends there with the tokens made so far.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise InputError("generate: every prompt needs at least one token")
        if max_new_tokens < 1:
            raise InputError(f"generate: max_new_tokens={max_new_tokens} must be >= 1")
        lengths = np.array([len(p) for p in prompts], np.int32)
        longest = int(lengths.max())
        if longest + max_new_tokens > self.cfg.max_seq_len:
            raise InputError(
                f"generate: a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds "
                f"model.max_seq_len={self.cfg.max_seq_len} (shorten the prompt, lower "
                "max_new_tokens, or extend the context: --set model.max_seq_len=... with "
                "model.rope_scaling)"
            )
        B, P = len(prompts), _bucket_prompt(longest)
        new_slots = _round_up(max(max_new_tokens - 1, 1), 16)
        tokens = np.full((B, P), self.pad_id, np.int32)
        for b, prompt in enumerate(prompts):
            tokens[b, : len(prompt)] = prompt
        stop_ids = tuple(sorted({int(s) for s in stop_ids})) or (-1,)
        key = jax.random.key(seed)

        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            cache = init_cache(self.cfg, B, P + new_slots, self.mesh, self.kv_cache_dtype)
            tokens_d, lengths_d = self._place(tokens), self._place(lengths)
            start = time.perf_counter()
            token_B, cache, seen_BV = self._prefill(
                self.params, cache, tokens_d, lengths_d, key, sampling=sampling
            )
            token_B.block_until_ready()
            prefill_s = time.perf_counter() - start
            done_B = jnp.zeros((B,), bool)
            made, dones = [token_B], [done_B]
            if on_tokens is not None:
                on_tokens(0, *self._emitted(token_B, np.zeros(B, bool), stop_ids))
            sync_every = 1 if on_tokens is not None else 16
            start = time.perf_counter()
            for step in range(1, max_new_tokens):
                if should_stop is not None and should_stop():
                    break
                token_B, done_B, cache, seen_BV = self._decode(
                    self.params,
                    cache,
                    seen_BV,
                    token_B,
                    done_B,
                    lengths_d,
                    jnp.int32(step),
                    key,
                    sampling=sampling,
                    stop_ids=stop_ids,
                    prompt_slots=P,
                )
                made.append(token_B)
                dones.append(done_B)
                if on_tokens is not None:
                    on_tokens(step, *self._emitted(token_B, done_B, stop_ids))
                if step % sync_every == 0 and bool(self._all_stopped(token_B, done_B, stop_ids)):
                    break
            made_TB = np.asarray(jnp.stack(made))
            decode_s = time.perf_counter() - start
        return self._collect(made_TB, stop_ids, prefill_s, decode_s)

    @staticmethod
    def _emitted(token_B, done_B, stop_ids) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, which are output): not padding after a stop, not a stop token."""
        token_B, done_B = np.asarray(token_B), np.asarray(done_B)
        return token_B, ~done_B & ~np.isin(token_B, stop_ids)

    def _all_stopped(self, token_B, done_B, stop_ids) -> jax.Array:
        return jnp.all(done_B | jnp.isin(token_B, jnp.asarray(stop_ids, jnp.int32)))

    def _place(self, array: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(array)
        axes = ("act_batch",) + (None,) * (array.ndim - 1)
        return jax.device_put(array, named_sharding(self.mesh, axes, array.shape))

    @staticmethod
    def _collect(made_TB: np.ndarray, stop_ids, prefill_s, decode_s) -> Generation:
        tokens, stopped = [], []
        for row in made_TB.T:
            hits = np.flatnonzero(np.isin(row, stop_ids))
            end = int(hits[0]) if hits.size else len(row)
            tokens.append(row[:end].tolist())
            stopped.append(bool(hits.size))
        return Generation(tokens, stopped, made_TB.shape[0], prefill_s, decode_s)
