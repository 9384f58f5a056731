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

Storage dtype (`dtype=` of init_cache, `--kv-cache-dtype`): "auto" stores k and v in
the model's compute dtype (no conversion anywhere); "bfloat16" halves a float32
model's cache; "int8" (an Int8KVCache) quarters it, with one float32 scale per
(token, KV head) in `k_scale` / `v_scale` [L, B, S, K] (absmax over the head dim,
jaxlm.inference.quantize.quantize_int8): keys and values are quantized as they are
written and dequantized to the compute dtype when a layer reads its slice for
attention. A scale per token keeps one token's outlier from coarsening the others,
and a token's values are never rescaled once written, for 4 bytes per H-wide vector
(6% of an int8 vector at H = 64).

Dimension legend: L layers, B batch, T new tokens this pass, S cache slots,
N query heads, K kv heads, G = N / K, H head dim, D model width, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.inference.quantize import dequantize_int8, quantize_int8
from jaxlm.models.transformer import apply_layers, attention_inputs, finish_block, layer_weights
from jaxlm.sharding import named_sharding

CACHE_AXES = ("layers", "act_batch", "act_seq", "act_kv_heads", "act_head_dim")
SCALE_AXES = CACHE_AXES[:-1]  # int8's scales: one per (layer, row, slot, kv head)
VALID_AXES = ("act_batch", None)
KV_CACHE_DTYPES = ("auto", "bfloat16", "int8")


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Int8KVCache(KVCache):
    # An int8 cache (module docstring): k and v int8, and their float32 scales
    # [L, B, S, K]. A subclass rather than optional fields, so that every field of
    # either kind is an array with the batch on axis 1 (valid: axis 0).
    k_scale: jax.Array
    v_scale: jax.Array


# The logical axes of each cache field (Int8KVCache's too), for placing them.
FIELD_AXES = {
    "k": CACHE_AXES,
    "v": CACHE_AXES,
    "valid": VALID_AXES,
    "k_scale": SCALE_AXES,
    "v_scale": SCALE_AXES,
}


def storage_dtype(cfg: ModelConfig, dtype: str = "auto") -> jnp.dtype:
    """The dtype k and v are stored in for a `--kv-cache-dtype` choice."""
    if dtype not in KV_CACHE_DTYPES:
        raise InputError(f"KV cache dtype {dtype!r}: expected one of {', '.join(KV_CACHE_DTYPES)}")
    return jnp.dtype(cfg.compute_dtype if dtype == "auto" else dtype)


def empty_cache(cfg: ModelConfig, batch: int, slots: int, dtype: str = "auto") -> KVCache:
    """An empty cache (every slot invalid) of `dtype` (KV_CACHE_DTYPES), not placed:
    init_cache places it on a mesh, a traced caller (rollout.py) constrains it."""
    shape = (cfg.n_layers, batch, slots, cfg.n_kv_heads, cfg.resolved_head_dim)
    stored = storage_dtype(cfg, dtype)
    k, v = jnp.zeros(shape, stored), jnp.zeros(shape, stored)
    valid = jnp.zeros((batch, slots), bool)
    if dtype != "int8":
        return KVCache(k, v, valid)
    # Two arrays, not one twice: a step that donates the cache donates each field.
    k_scale, v_scale = jnp.zeros(shape[:-1], jnp.float32), jnp.zeros(shape[:-1], jnp.float32)
    return Int8KVCache(k, v, valid, k_scale, v_scale)


def place_cache(cache: KVCache, place) -> KVCache:
    """Each array of `cache` through `place(array, logical_axes)`."""
    fields = dataclasses.fields(cache)
    return type(cache)(
        **{f.name: place(getattr(cache, f.name), FIELD_AXES[f.name]) for f in fields}
    )


def init_cache(cfg: ModelConfig, batch: int, slots: int, mesh=None, dtype: str = "auto") -> KVCache:
    """An empty cache for `batch` rows of `slots` slots, stored as `dtype` ("auto": the
    model's compute dtype; "bfloat16"; "int8"), sharded on `mesh` when given."""
    cache = empty_cache(cfg, batch, slots, dtype)
    if mesh is None:
        return cache
    return place_cache(
        cache, lambda a, axes: jax.device_put(a, named_sharding(mesh, axes, a.shape))
    )


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

    `start` is one slot for every row (a scalar: generate's shared layout) or one per
    row (shape [B]: a server's rows are each at their own length, jaxlm.serving).
    Returns float32 logits [B, T, V] (or [B, V] at index `logits_at_B` of each row:
    prefill needs only the last prompt token's) and the updated cache. `valid_BT`
    marks real tokens; padding gets keys and values too but stays invalid.
    """
    # One State, or a tuple merged together (a LoRA run's adapters + frozen base).
    model = nnx.merge(graphdef, *(params if isinstance(params, tuple) else (params,)))
    compute = jnp.dtype(cfg.compute_dtype)
    B, T = tokens_BT.shape
    S = cache.slots
    start = jnp.asarray(start, jnp.int32)
    per_row = start.ndim == 1
    slot_S = jnp.arange(S)
    if per_row:
        # Row b writes slots start[b] + t: a scatter instead of one slice for all rows.
        rows_BT = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
        slots_BT = start[:, None] + jnp.arange(T)[None, :]
        valid_BS = cache.valid.at[rows_BT, slots_BT].set(valid_BT)
        causal_BTS = slot_S[None, None, :] <= slots_BT[:, :, None]
        mask_BTS = valid_BS[:, None, :] & causal_BTS
    else:
        valid_BS = jax.lax.dynamic_update_slice(cache.valid, valid_BT, (0, start))
        # A query at slot start + t sees valid slots up to and including its own.
        causal_TS = slot_S[None, :] <= (start + jnp.arange(T))[:, None]
        mask_BTS = valid_BS[:, None, :] & causal_TS[None]

    def write(buffer_LBS, new_BT, layer):
        """`new_BT` [B, T, ...] into layer `layer` of `buffer_LBS` [L, B, S, ...] at the
        rows' slots (k, v and int8 scales alike)."""
        new_BT = new_BT.astype(buffer_LBS.dtype)
        if per_row:
            # Row by row in place: a scatter into the scan's carried cache makes XLA on
            # CPU copy the whole cache per layer (3x slower decode at 32 rows).
            def write_row(b, buffer):
                index = (layer, b, start[b]) + (0,) * (buffer.ndim - 3)
                return jax.lax.dynamic_update_slice(buffer, new_BT[b][None, None], index)

            return jax.lax.fori_loop(0, B, write_row, buffer_LBS)
        zero = jnp.zeros((), jnp.int32)
        index = (layer, zero, start) + (zero,) * (buffer_LBS.ndim - 3)
        return jax.lax.dynamic_update_slice(buffer_LBS, new_BT[None], index)

    x_BTD = model.embed_tokens(tokens_BT)

    def one_layer(carry, p):
        x_BTD, kv, layer = carry  # kv: (k, v, k_scale, v_scale) of every layer, or
        # (k, v, None, None) for a cache without scales
        w = layer_weights(p, compute)
        q_BTNH, k_BTKH, v_BTKH = attention_inputs(cfg, w, x_BTD, positions_BT)
        kv = _store(kv, k_BTKH, v_BTKH, lambda buffer, new: write(buffer, new, layer))
        k_BSKH, v_BSKH = _load(kv, layer, compute)
        attn_BTNH = cached_attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS)
        x_BTD = finish_block(cfg, w, x_BTD, attn_BTNH)
        return (x_BTD, kv, layer + 1), None

    int8 = isinstance(cache, Int8KVCache)
    kv = (cache.k, cache.v, *((cache.k_scale, cache.v_scale) if int8 else (None, None)))
    carry = (x_BTD, kv, jnp.zeros((), jnp.int32))
    (x_BTD, kv, _), _ = apply_layers(cfg, one_layer, carry, model.layers.arrays())
    if logits_at_B is not None:
        x_BTD = jnp.take_along_axis(x_BTD, logits_at_B[:, None, None], axis=1)
    logits = model.logits(x_BTD)
    if logits_at_B is not None:
        logits = logits[:, 0]
    k, v, k_scale, v_scale = kv
    if int8:
        return logits, Int8KVCache(k, v, valid_BS, k_scale, v_scale)
    return logits, KVCache(k, v, valid_BS)


def _store(kv, k_BTKH, v_BTKH, write):
    """Write one layer's new keys and values: cast to the storage dtype, or int8 with a
    scale per (token, kv head) when the cache has scales."""
    k, v, k_scale, v_scale = kv
    if k_scale is None:
        return write(k, k_BTKH), write(v, v_BTKH), None, None
    kq_BTKH, k_scale_BTK = quantize_int8(k_BTKH, (-1,))
    vq_BTKH, v_scale_BTK = quantize_int8(v_BTKH, (-1,))
    return (
        write(k, kq_BTKH),
        write(v, vq_BTKH),
        write(k_scale, k_scale_BTK),
        write(v_scale, v_scale_BTK),
    )


def _load(kv, layer, compute) -> tuple[jax.Array, jax.Array]:
    """One layer's cached keys and values [B, S, K, H] in the compute dtype (for "auto"
    the cast is a no-op: the cache is the compute dtype)."""
    k_BSKH, v_BSKH, k_scale_BSK, v_scale_BSK = (
        None if a is None else jax.lax.dynamic_index_in_dim(a, layer, keepdims=False) for a in kv
    )
    if k_scale_BSK is None:
        return k_BSKH.astype(compute), v_BSKH.astype(compute)
    return (
        dequantize_int8(k_BSKH, k_scale_BSK, (-1,), compute),
        dequantize_int8(v_BSKH, v_scale_BSK, (-1,), compute),
    )
