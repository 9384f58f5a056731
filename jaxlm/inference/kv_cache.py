"""A fixed-size key/value cache and the forward pass that reads and writes it.

Generation runs the model once over the prompts (prefill) and then once per new token
(decode). Each pass writes its tokens' keys and values into cache slots
[start, start + T) and attends over every valid slot at or before its own, so a
decode step costs O(S) instead of re-running the whole prefix.

Prompts of different lengths share one cache by right padding: row b's prompt
fills slots [0, len_b), the padding slots are marked invalid and never attended to,
and every row's new tokens go to the same slots P, P + 1, ... (P the padded prompt
length). RoPE takes each token's true position (len_b + t), not its slot, so the gap
of invalid slots changes nothing: attention depends only on relative positions and
on which slots are valid.

The cache has a fixed shape [L, B, S, K, H], so one compilation serves a whole
generation; it is updated in place (the decode step donates it). Its batch axis is
sharded like activations and its KV-head axis like the attention weights, so a model
that is tensor-parallel over a mesh keeps its cache split the same way.

Dimension legend: L layers, B batch, T new tokens this pass, S cache slots,
N query heads, K kv heads, G = N / K, H head dim, D model width, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models.transformer import attention_inputs, finish_block, layer_weights
from jaxlm.sharding import named_sharding

CACHE_AXES = ("layers", "act_batch", "act_seq", "act_kv_heads", "act_head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    # Shapes [L, B, S, K, H], [L, B, S, K, H] and [B, S]: `valid` marks the slots that
    # hold a real token's key and value.
    k: jax.Array
    v: jax.Array
    valid: jax.Array

    @property
    def slots(self) -> int:
        return self.valid.shape[1]


def init_cache(cfg: ModelConfig, batch: int, slots: int, mesh=None) -> KVCache:
    """An empty cache (every slot invalid) in the model's compute dtype."""
    shape = (cfg.n_layers, batch, slots, cfg.n_kv_heads, cfg.resolved_head_dim)
    dtype = jnp.dtype(cfg.compute_dtype)
    k = jnp.zeros(shape, dtype)
    v = jnp.zeros(shape, dtype)
    valid = jnp.zeros((batch, slots), bool)
    if mesh is not None:
        kv_sharding = named_sharding(mesh, CACHE_AXES, shape)
        k, v = jax.device_put(k, kv_sharding), jax.device_put(v, kv_sharding)
        valid = jax.device_put(valid, named_sharding(mesh, ("act_batch", None), valid.shape))
    return KVCache(k, v, valid)


def cached_attention(
    q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, mask_BTS: jax.Array
) -> jax.Array:
    """Softmax attention of T queries over S cached slots; GQA without repeating k, v."""
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    scores = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
    ) / jnp.sqrt(jnp.float32(H))
    scores = jnp.where(mask_BTS[:, None, None], scores, -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BSKH.dtype)
    out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_BSKH, preferred_element_type=jnp.float32)
    return out_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)


def forward_cached(
    cfg: ModelConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    cache: KVCache,
    tokens_BT: jax.Array,
    positions_BT: jax.Array,
    valid_BT: jax.Array,
    start: jax.Array,
    *,
    logits_at_B: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """Run T new tokens per row through the model, writing them at slots [start, start+T).

    Returns float32 logits [B, T, V] (or [B, V] at index `logits_at_B` of each row:
    prefill needs only the last prompt token's) and the updated cache. `valid_BT`
    marks real tokens; padding gets keys and values too but stays invalid.
    """
    # One State, or a tuple merged together (a LoRA run's adapters + frozen base).
    model = nnx.merge(graphdef, *(params if isinstance(params, tuple) else (params,)))
    compute = jnp.dtype(cfg.compute_dtype)
    T = tokens_BT.shape[1]
    S = cache.slots
    valid_BS = jax.lax.dynamic_update_slice(cache.valid, valid_BT, (0, start))
    # A query at slot start + t sees valid slots up to and including its own.
    slot_S = jnp.arange(S)
    causal_TS = slot_S[None, :] <= (start + jnp.arange(T))[:, None]
    mask_BTS = valid_BS[:, None, :] & causal_TS[None]

    x_BTD = model.embed_tokens(tokens_BT)

    def one_layer(carry, p):
        x_BTD, k_LBSKH, v_LBSKH, layer = carry
        w = layer_weights(p, compute)
        q_BTNH, k_BTKH, v_BTKH = attention_inputs(cfg, w, x_BTD, positions_BT)
        zero = jnp.zeros((), jnp.int32)
        index = (layer, zero, start, zero, zero)
        k_LBSKH = jax.lax.dynamic_update_slice(k_LBSKH, k_BTKH[None].astype(k_LBSKH.dtype), index)
        v_LBSKH = jax.lax.dynamic_update_slice(v_LBSKH, v_BTKH[None].astype(v_LBSKH.dtype), index)
        k_BSKH = jax.lax.dynamic_index_in_dim(k_LBSKH, layer, keepdims=False)
        v_BSKH = jax.lax.dynamic_index_in_dim(v_LBSKH, layer, keepdims=False)
        attn_BTNH = cached_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
        x_BTD = finish_block(cfg, w, x_BTD, attn_BTNH)
        return (x_BTD, k_LBSKH, v_LBSKH, layer + 1), None

    carry = (x_BTD, cache.k, cache.v, jnp.zeros((), jnp.int32))
    (x_BTD, k_LBSKH, v_LBSKH, _), _ = jax.lax.scan(one_layer, carry, model.layers.arrays())
    if logits_at_B is not None:
        x_BTD = jnp.take_along_axis(x_BTD, logits_at_B[:, None, None], axis=1)
    logits = model.logits(x_BTD)
    if logits_at_B is not None:
        logits = logits[:, 0]
    return logits, KVCache(k_LBSKH, v_LBSKH, valid_BS)
