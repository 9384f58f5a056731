"""The jitted programs of continuous batching: prefill one request, put it in a slot,
decode every slot one token.

The decode cache has a fixed number of rows ("slots") and positions ("context"). A
request is prefilled alone into a one-row cache of the same length (its prompt padded
to a power-of-two bucket, so a few programs serve every prompt length), and that row
then replaces one slot of the shared cache. Each decode step feeds every slot its
last token at its own position (kv_cache.forward_cached's per-row `start`); free
slots run too, marked invalid, and their outputs are ignored. Because every row's
arithmetic reads only its own row, a request's tokens do not depend on its
neighbours, and fixed shapes mean nothing recompiles as requests come and go.

Dimension legend: B slots, S context positions, P padded prompt, N top log-probs.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.inference.kv_cache import KVCache, forward_cached, init_cache
from jaxlm.serving.row_sampling import row_keys, sample_rows
from jaxlm.sharding import named_sharding


def prompt_bucket(length: int, context: int) -> int:
    """The padded prompt length: a power of two >= 16, at most the context."""
    return min(context, max(16, 1 << (length - 1).bit_length()))


def _batch_axis(field: str) -> int:
    # valid is [B, S]; every other cache field is [L, B, ...] (layers first).
    return 0 if field == "valid" else 1


def put_row(cache: KVCache, row: KVCache, slot: jax.Array) -> KVCache:
    """`cache` with slot `slot` replaced by the one-row cache `row` (every field)."""
    updated = {}
    for field in dataclasses.fields(cache):
        big, small = getattr(cache, field.name), getattr(row, field.name)
        if big is not None:  # None: a field this kind of cache does not have (int8 scales)
            axis = _batch_axis(field.name)
            big = jax.lax.dynamic_update_slice_in_dim(big, small, slot, axis)
        updated[field.name] = big
    return type(cache)(**updated)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PrefillOut:
    token: jax.Array  # [] the first new token
    logprob: jax.Array  # [] its log-prob
    top_ids: jax.Array  # [N]
    top_logprobs: jax.Array  # [N]
    prompt_logprobs: jax.Array  # [P] log p(token i | tokens < i); [0] is meaningless
    prompt_top_ids: jax.Array  # [P, N] the top-N at each prompt position (of token i)
    prompt_top_logprobs: jax.Array  # [P, N]


class SlotSteps:
    """Compiled prefill, insert and decode for one model, `slots` rows of `context`."""

    def __init__(
        self,
        cfg: ModelConfig,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        *,
        slots: int,
        context: int,
        mesh: jax.sharding.Mesh | None = None,
        new_cache=init_cache,
        token_limit: int | None = None,
    ):
        """`token_limit`: the tokenizer's vocabulary size, when the model has more
        embedding rows (padding): ids past it have no text and are never sampled."""
        self.cfg, self.graphdef, self.params, self.mesh = cfg, graphdef, params, mesh
        self.token_limit = token_limit
        self.slots, self.context, self._new_cache = slots, context, new_cache
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("top_n", "prompt_logprobs"))
        self._insert = jax.jit(put_row, donate_argnums=(0,))
        self._decode = jax.jit(self._decode_fn, static_argnames=("top_n",), donate_argnums=(1,))

    def mesh_context(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def empty_cache(self, rows: int) -> KVCache:
        return self._new_cache(self.cfg, rows, self.context, self.mesh)

    def place(self, array, batch_axis: bool = True) -> jax.Array:
        """A host array on the mesh, its first axis split like the batch."""
        array = jnp.asarray(array)
        if self.mesh is None or not batch_axis:
            return array
        axes = ("act_batch",) + (None,) * (array.ndim - 1)
        return jax.device_put(array, named_sharding(self.mesh, axes, array.shape))

    # -- prefill -----------------------------------------------------------------------

    def _prefill_fn(
        self,
        params,
        cache,
        tokens_1P,
        length,
        key_data,
        temperature,
        top_p,
        *,
        top_n,
        prompt_logprobs,
    ):
        P = tokens_1P.shape[1]
        valid_1P = jnp.arange(P)[None, :] < length
        # Padding gets position 0: dynamic RoPE scaling reads the longest real position.
        positions_1P = jnp.where(valid_1P, jnp.arange(P, dtype=jnp.int32)[None, :], 0)
        logits, cache = forward_cached(
            self.cfg,
            self.graphdef,
            params,
            cache,
            tokens_1P,
            positions_1P,
            valid_1P,
            jnp.int32(0),
            logits_at_B=None if prompt_logprobs else (length - 1)[None],
        )
        last_1V = logits[:, length - 1] if prompt_logprobs else logits
        keys = row_keys(key_data[None], jnp.zeros((1,), jnp.int32))
        token, logprob, top_ids, top_lps = sample_rows(
            last_1V, keys, temperature[None], top_p[None], top_n=top_n, token_limit=self.token_limit
        )
        if prompt_logprobs:
            logprobs_PV = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
            # Token i is predicted at position i - 1.
            before_PV = jnp.concatenate([jnp.zeros_like(logprobs_PV[:1]), logprobs_PV[:-1]])
            given_P = jnp.take_along_axis(before_PV, tokens_1P[0][:, None], axis=-1)[:, 0]
            if top_n:
                prompt_top_lps, prompt_top_ids = jax.lax.top_k(before_PV, top_n)
            else:
                prompt_top_lps = jnp.zeros((P, 0), jnp.float32)
                prompt_top_ids = jnp.zeros((P, 0), jnp.int32)
        else:
            given_P = jnp.zeros((P,), jnp.float32)
            prompt_top_lps = jnp.zeros((P, 0), jnp.float32)
            prompt_top_ids = jnp.zeros((P, 0), jnp.int32)
        out = PrefillOut(
            token[0],
            logprob[0],
            top_ids[0],
            top_lps[0],
            given_P,
            prompt_top_ids.astype(jnp.int32),
            prompt_top_lps,
        )
        return out, cache

    def prefill(
        self,
        prompt: list[int],
        key_data,
        temperature: float,
        top_p: float,
        *,
        top_n: int,
        prompt_logprobs: bool,
    ) -> tuple[PrefillOut, KVCache]:
        """Run one prompt into a fresh one-row cache; sample its first token (step 0)."""
        P = prompt_bucket(len(prompt), self.context)
        tokens = [*prompt, *([0] * (P - len(prompt)))]
        return self._prefill(
            self.params,
            self.empty_cache(1),
            jnp.asarray([tokens], jnp.int32),
            jnp.int32(len(prompt)),
            jnp.asarray(key_data),
            jnp.float32(temperature),
            jnp.float32(top_p),
            top_n=top_n,
            prompt_logprobs=prompt_logprobs,
        )

    def insert(self, cache: KVCache, row: KVCache, slot: int) -> KVCache:
        return self._insert(cache, row, jnp.int32(slot))

    # -- decode ------------------------------------------------------------------------

    def _decode_fn(
        self,
        params,
        cache,
        token_B,
        position_B,
        active_B,
        key_data_B2,
        step_B,
        temp_B,
        top_p_B,
        *,
        top_n,
    ):
        """Feed each slot's token at its position; sample each slot's next token."""
        logits_B1V, cache = forward_cached(
            self.cfg,
            self.graphdef,
            params,
            cache,
            token_B[:, None],
            position_B[:, None],
            active_B[:, None],
            position_B,
        )
        keys_B = row_keys(key_data_B2, step_B)
        sampled = sample_rows(
            logits_B1V[:, 0], keys_B, temp_B, top_p_B, top_n=top_n, token_limit=self.token_limit
        )
        return sampled, cache

    def decode(self, cache: KVCache, rows: dict, *, top_n: int):
        """One token for every slot; `rows` holds the [B] host arrays of the slots."""
        names = ("token", "position", "active", "key_data", "step", "temperature", "top_p")
        args = [self.place(rows[name]) for name in names]
        return self._decode(self.params, cache, *args, top_n=top_n)
