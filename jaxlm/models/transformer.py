"""Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU.

The NNX module only declares and initialises parameters, each tagged with logical
axis names (see jaxlm/sharding.py). The forward pass reads them as plain arrays and
runs the layers with `jax.lax.scan` over a leading "layers" axis, so compile time
stays flat with depth (on CPU, shallow models unroll that axis: `scans_layers`).
`logits = model(tokens, positions=..., segment_ids=...)` is the one signature every
objective uses; losses live in jaxlm/training/losses.py.
Every projection goes through `layers.project`, which also applies any low-rank
factors stored beside a weight (LoRA adapters, added to a built model by
jaxlm.models.params); this module declares only the plain model. Likewise a model
quantized for inference (jaxlm.inference.quantize) has int8 weights with float32
scales beside them, which `layer_weights`, `embed_tokens` and `logits` dequantize.

`model.attention_bias` adds biases to the q, k and v projections (Qwen2), before the
QK-norm and RoPE, as Hugging Face's Qwen2/Qwen3 attention adds them.

Dimension legend:
    B batch          T sequence         D model width      V vocabulary
    N query heads    K kv heads         H head dim         F feed-forward width
    L layers
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models.attention import attention
from jaxlm.models.layers import QUANT_SCALE, dequantize, project, rms_norm, swiglu
from jaxlm.models.moe import SAVED_NAME, MoeSettings, moe_mlp, moe_mlp_sharded
from jaxlm.models.rope import RopeScaling, apply_rope
from jaxlm.models.unembed import tied_unembed, unembed
from jaxlm.sharding import constrain, moe_layout

# A MoE layer's routing statistics (jaxlm.models.moe.moe_mlp): sums, keyed by name.
MoeStats = dict[str, jax.Array]

_REMAT_POLICIES = {
    "full": None,  # save nothing; recompute the whole block in the backward pass
    # Save the matmul outputs: the dense ones, and a MoE layer's expert matmuls (named,
    # see jaxlm.models.moe.SAVED_NAME: ragged_dot and batched einsums are not plain dots).
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(SAVED_NAME),
    ),
}


def _param(rngs: nnx.Rngs, shape, std: float, dtype, logical_axes) -> nnx.Param:
    value = std * jax.random.normal(rngs.params(), shape, dtype=jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=logical_axes)


def _ones(shape, dtype, logical_axes) -> nnx.Param:
    return nnx.Param(jnp.ones(shape, dtype), logical_axes=logical_axes)


def _zeros(shape, dtype, logical_axes) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, dtype), logical_axes=logical_axes)


class Layers(nnx.Module):
    """All transformer blocks' weights, stacked on a leading "layers" axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        L, D, F = cfg.n_layers, cfg.d_model, cfg.resolved_d_ff
        N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        dt, std = cfg.param_dtype, cfg.init_std
        # Residual-branch outputs shrink with depth so the residual stream's variance
        # stays O(1) at init (GPT-2's 1/sqrt(2L) rule).
        out_std = std / math.sqrt(2 * L)
        self.attn_norm = _ones((L, D), dt, ("layers", "norm"))
        self.wq = _param(rngs, (L, D, N, H), std, dt, ("layers", "embed", "heads", "head_dim"))
        self.wk = _param(rngs, (L, D, K, H), std, dt, ("layers", "embed", "kv_heads", "head_dim"))
        self.wv = _param(rngs, (L, D, K, H), std, dt, ("layers", "embed", "kv_heads", "head_dim"))
        self.wo = _param(rngs, (L, N, H, D), out_std, dt, ("layers", "heads", "head_dim", "embed"))
        if cfg.qk_norm:
            self.q_norm = _ones((L, H), dt, ("layers", "norm"))
            self.k_norm = _ones((L, H), dt, ("layers", "norm"))
        if cfg.attention_bias:
            # Zeros draw no key, so the other weights stay what the same seed gives
            # without biases.
            self.bq = _zeros((L, N, H), dt, ("layers", "heads", "head_dim"))
            self.bk = _zeros((L, K, H), dt, ("layers", "kv_heads", "head_dim"))
            self.bv = _zeros((L, K, H), dt, ("layers", "kv_heads", "head_dim"))
        self.mlp_norm = _ones((L, D), dt, ("layers", "norm"))
        mlp_layers = L
        if cfg.moe:
            self._add_experts(cfg, rngs, std, out_std)
            if cfg.moe_every == 1:
                # Shared experts (DeepSeek): always on, so one dense MLP of their total
                # width in every layer.
                F = cfg.moe_shared_experts * cfg.resolved_moe_d_ff
            else:  # the dense layers between the MoE ones (see layer_groups)
                mlp_layers = L - len(cfg.moe_layers)
        if F:
            M = mlp_layers
            self.w_gate = _param(rngs, (M, D, F), std, dt, ("layers", "embed", "mlp"))
            self.w_up = _param(rngs, (M, D, F), std, dt, ("layers", "embed", "mlp"))
            self.w_down = _param(rngs, (M, F, D), out_std, dt, ("layers", "mlp", "embed"))

    def _add_experts(self, cfg: ModelConfig, rngs: nnx.Rngs, std: float, out_std: float):
        """The router and the routed experts' SwiGLU weights (jaxlm.models.moe)."""
        # Stacked over the MoE layers only (all of them unless moe_every > 1).
        L, D, E, F = len(cfg.moe_layers), cfg.d_model, cfg.moe_experts, cfg.resolved_moe_d_ff
        dt = cfg.param_dtype
        # Routing runs in float32 whatever the compute dtype: near-ties between experts
        # would otherwise flip with rounding.
        self.router = _param(rngs, (L, D, E), std, "float32", ("layers", "embed", None))
        # The auxiliary-loss-free balancing bias: moved by the train step against the
        # observed load, never by the gradient (routing stops it), never decayed.
        self.router_bias = _zeros((L, E), "float32", ("layers", "router_bias"))
        axes_in = ("layers", "experts", None, "mlp")
        self.moe_gate = _param(rngs, (L, E, D, F), std, dt, axes_in)
        self.moe_up = _param(rngs, (L, E, D, F), std, dt, axes_in)
        self.moe_down = _param(rngs, (L, E, F, D), out_std, dt, ("layers", "experts", "mlp", None))

    def arrays(self) -> dict[str, jax.Array]:
        """Every stacked variable (weights, and any low-rank factors added beside them) as
        a dict of plain arrays: what `scan` iterates over."""
        return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Variable)}


def layer_weights(p: dict[str, jax.Array], dtype) -> dict[str, jax.Array]:
    """One layer's weights cast to the compute dtype; norm scales stay as stored (rms_norm
    applies them in float32).

    An int8 weight with a QUANT_SCALE beside it (a quantized model for inference,
    jaxlm.inference.quantize) is dequantized here, one layer at a time inside the scan,
    and its scale dropped. A float model has no scale, and gets the plain cast.
    """
    w = {}
    for k, v in p.items():
        if k.endswith(QUANT_SCALE) and k.removesuffix(QUANT_SCALE) in p:
            continue
        if k + QUANT_SCALE in p:
            w[k] = dequantize(v, p[k + QUANT_SCALE], dtype)
        else:
            # The router stays float32 too (see Layers._add_experts).
            w[k] = v if k.endswith("norm") or k.startswith("router") else v.astype(dtype)
    return w


def attention_inputs(
    cfg: ModelConfig, w: dict[str, jax.Array], x_BTD: jax.Array, positions_BT: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q, k, v of one block, normed and rotated: what attention (or a KV cache) takes."""
    h_BTD = rms_norm(x_BTD, w["attn_norm"], cfg.norm_eps)
    q_BTNH = project(cfg, w, "BTD,DNH->BTNH", h_BTD, "wq")
    k_BTKH = project(cfg, w, "BTD,DKH->BTKH", h_BTD, "wk")
    v_BTKH = project(cfg, w, "BTD,DKH->BTKH", h_BTD, "wv")
    if cfg.attention_bias:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + w["bq"], k_BTKH + w["bk"], v_BTKH + w["bv"]
    if cfg.qk_norm:
        q_BTNH = rms_norm(q_BTNH, w["q_norm"], cfg.norm_eps)
        k_BTKH = rms_norm(k_BTKH, w["k_norm"], cfg.norm_eps)
    q_BTNH = constrain(q_BTNH, "act_batch", "act_seq", "act_heads", "act_head_dim")
    k_BTKH = constrain(k_BTKH, "act_batch", "act_seq", "act_kv_heads", "act_head_dim")
    q_BTNH = apply_rope(q_BTNH, positions_BT, cfg.rope_theta, RopeScaling.from_config(cfg))
    k_BTKH = apply_rope(k_BTKH, positions_BT, cfg.rope_theta, RopeScaling.from_config(cfg))
    return q_BTNH, k_BTKH, v_BTKH


def finish_block_with_stats(
    cfg: ModelConfig,
    w: dict[str, jax.Array],
    x_BTD: jax.Array,
    attn_BTNH: jax.Array,
    valid_BT: jax.Array | None = None,
) -> tuple[jax.Array, MoeStats | None]:
    """The rest of a block after attention: output projection, residual, MLP (dense,
    or routed experts plus any shared ones). Returns the routing statistics of a MoE
    layer (jaxlm.models.moe; `valid_BT` marks the tokens they count), else None."""
    x_BTD = x_BTD + project(cfg, w, "BTNH,NHD->BTD", attn_BTNH, "wo")
    x_BTD = constrain(x_BTD, "act_batch", "act_seq", "act_embed")
    h_BTD = rms_norm(x_BTD, w["mlp_norm"], cfg.norm_eps)
    stats = None
    if "router" in w:  # a MoE layer (a mixed model's dense layers have none)
        if valid_BT is None:
            valid_BT = jnp.ones(h_BTD.shape[:2], bool)
        routed_BTD, stats = routed_experts(cfg, w, h_BTD, valid_BT)
        x_BTD = x_BTD + routed_BTD
    if "w_gate" in w:  # the dense MLP, or a MoE layer's shared experts
        x_BTD = x_BTD + swiglu(cfg, w, h_BTD)
    return constrain(x_BTD, "act_batch", "act_seq", "act_embed"), stats


def routed_experts(
    cfg: ModelConfig, w: dict[str, jax.Array], h_BTD: jax.Array, valid_BT: jax.Array
) -> tuple[jax.Array, MoeStats]:
    """A MoE layer's routed experts: on a mesh, per batch shard with the experts split
    as the mesh says (expert parallelism over fsdp, width over tensor; see
    jaxlm.sharding.moe_layout and jaxlm.models.moe.moe_mlp_sharded)."""
    s = MoeSettings.from_config(cfg)
    layout = moe_layout(h_BTD.shape[0], s.experts, cfg.resolved_moe_d_ff)
    if layout is None:
        return moe_mlp(s, w, h_BTD, valid_BT)
    return moe_mlp_sharded(s, w, h_BTD, valid_BT, *layout)


def finish_block(
    cfg: ModelConfig, w: dict[str, jax.Array], x_BTD: jax.Array, attn_BTNH: jax.Array
) -> jax.Array:
    """finish_block_with_stats without the statistics, for generation (KV cache).

    Generation is always dropless: a capacity is a training-time bound on work, and at
    inference it would make a token's output depend on the other rows of the batch
    (and drop tokens outright in a decode step of few tokens).
    """
    if cfg.moe and cfg.moe_capacity_factor > 0:
        impl = "ragged" if cfg.moe_impl == "buckets" else cfg.moe_impl
        cfg = dataclasses.replace(cfg, moe_capacity_factor=0.0, moe_impl=impl)
    return finish_block_with_stats(cfg, w, x_BTD, attn_BTNH)[0]


def block(
    cfg: ModelConfig,
    p: dict[str, jax.Array],
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    segment_ids_BT: jax.Array,
) -> tuple[jax.Array, MoeStats | None]:
    """One pre-norm transformer block; `p` holds a single layer's weights."""
    w = layer_weights(p, x_BTD.dtype)
    q_BTNH, k_BTKH, v_BTKH = attention_inputs(cfg, w, x_BTD, positions_BT)
    attn_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, implementation=cfg.attention_impl)
    return finish_block_with_stats(cfg, w, x_BTD, attn_BTNH, segment_ids_BT > 0)


def run_layers(
    cfg: ModelConfig,
    layers_LP: dict[str, jax.Array],
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    segment_ids_BT: jax.Array,
) -> jax.Array:
    """Apply all layers, scanned or as an unrolled loop, with the configured remat."""
    return run_layers_with_stats(cfg, layers_LP, x_BTD, positions_BT, segment_ids_BT)[0]


def run_layers_with_stats(
    cfg: ModelConfig,
    layers_LP: dict[str, jax.Array],
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    segment_ids_BT: jax.Array,
) -> tuple[jax.Array, MoeStats | None]:
    """run_layers, also returning a MoE model's routing statistics stacked over its MoE
    layers (each field [len(cfg.moe_layers), ...]; None for a dense model)."""

    def one_layer(x, p):
        return block(cfg, p, x, positions_BT, segment_ids_BT)

    if cfg.remat != "none":
        one_layer = jax.checkpoint(one_layer, policy=_REMAT_POLICIES[cfg.remat])
    return apply_layers(cfg, one_layer, x_BTD, layers_LP, scan=scans_layers(cfg))


# model.scan_layers="auto" unrolls CPU models up to this depth. Unrolled, XLA:CPU skips
# the scan's per-layer dynamic-slice/update copies of the saved activations: the train
# step ran 4% (reference shape, 4 layers) and 7% (minimind-26m, 8 layers) faster on a
# 2-core Zen 4 in interleaved A/Bs with bit-identical losses. Compile time grows with
# depth instead (the reference step: equal at 8 layers, +5 s at 16, +14 s at 32), which
# deeper models should not pay; on accelerators unrolling was not measured, so they
# keep the scan and its flat compile time.
UNROLL_ON_CPU_UP_TO = 16


def scans_layers(cfg: ModelConfig) -> bool:
    """Whether the layers run under `jax.lax.scan` (model.scan_layers, "auto" resolved
    for the default backend)."""
    if cfg.scan_layers != "auto":
        return cfg.scan_layers
    return not (jax.default_backend() == "cpu" and cfg.n_layers <= UNROLL_ON_CPU_UP_TO)


# Mixed dense and MoE layers (moe_every = k > 1). Layer weights are stacked per kind:
# attention and norms over all L layers, the routed experts over the L / k MoE layers,
# the dense MLP over the other L - L / k. Layers then run in L / k groups of k, the
# first k - 1 dense and the last MoE (Qwen3-MoE's decoder_sparse_step), and `scan`
# iterates over groups: one compiled group body whatever the depth.
_ROUTED = ("router", "moe_")  # name prefixes of a MoE layer's own weights
_DENSE_MLP = ("w_gate", "w_up", "w_down")


def _stacked_over(name: str) -> str:
    if name.startswith(_ROUTED):
        return "moe"
    return "dense" if name.startswith(_DENSE_MLP) else "all"


def layer_groups(cfg: ModelConfig, layers_LP: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The stacked weights with a leading group axis [L / k, ...]: [G, k, ...] for those
    of every layer, [G, k - 1, ...] for the dense MLP, [G, ...] for the experts. The
    identity for k = 1 (every layer alike)."""
    k = cfg.moe_every if cfg.moe else 1
    if k == 1:
        return layers_LP
    groups = cfg.n_layers // k
    inner = {"all": (k,), "dense": (k - 1,), "moe": ()}
    return {
        name: a.reshape(groups, *inner[_stacked_over(name)], *a.shape[1:])
        for name, a in layers_LP.items()
    }


def layers_of_group(cfg: ModelConfig, p_group: dict[str, jax.Array]) -> list[dict[str, jax.Array]]:
    """One group's weights (a slice of layer_groups) as its layers' own, in order."""
    k = cfg.moe_every if cfg.moe else 1
    if k == 1:
        return [p_group]
    layers = []
    for j in range(k):
        mlp = "moe" if j == k - 1 else "dense"  # this layer's MLP kind
        p = {}
        for name, a in p_group.items():
            kind = _stacked_over(name)
            if kind == "all" or kind == mlp == "dense":
                p[name] = a[j]  # stacked [k, ...] or [k - 1, ...] within the group
            elif kind == mlp == "moe":
                p[name] = a  # one MoE layer per group: no inner axis
        layers.append(p)
    return layers


def apply_layers(cfg: ModelConfig, one_layer, carry, layers_LP: dict[str, jax.Array], scan=True):
    """Thread `carry` through every layer in order, `one_layer(carry, p) -> (carry, out)`
    with `p` that layer's weights; scanned over groups of layers, or unrolled. Returns
    (carry, the non-None outs stacked: one per MoE layer, or None)."""

    def one_group(carry, p_group):
        out = None
        for p in layers_of_group(cfg, p_group):
            carry, layer_out = one_layer(carry, p)
            out = layer_out if layer_out is not None else out
        return carry, out

    grouped = layer_groups(cfg, layers_LP)
    if scan:
        return jax.lax.scan(one_group, carry, grouped)
    outs = []
    for g in range(jax.tree.leaves(grouped)[0].shape[0]):
        carry, out = one_group(carry, jax.tree.map(lambda a, g=g: a[g], grouped))
        outs.append(out)
    if outs[0] is None:
        return carry, None
    return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


class Transformer(nnx.Module):
    """Decoder-only language model; see the module docstring."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, V = cfg.d_model, cfg.vocab_size
        self.embed = _param(rngs, (V, D), cfg.init_std, cfg.param_dtype, ("vocab", "embed"))
        self.layers = Layers(cfg, rngs)
        self.final_norm = _ones((D,), cfg.param_dtype, ("norm",))
        if not cfg.tie_embeddings:
            self.unembed = _param(rngs, (D, V), cfg.init_std, cfg.param_dtype, ("embed", "vocab"))
        if cfg.score_head:
            # Zeros: a fresh reward model or critic scores everything 0 (no preference
            # before training), and drawing no key keeps the other weights those of
            # the same seed without a head.
            self.score = _zeros((D,), cfg.param_dtype, ("norm",))

    def __call__(
        self,
        tokens_BT: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Float32 logits [B, T, V]. Defaults: positions 0..T-1, one segment per row."""
        return self.forward_with_stats(tokens_BT, positions=positions, segment_ids=segment_ids)[0]

    def forward_with_stats(
        self,
        tokens_BT: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, MoeStats | None]:
        """(logits, the MoE routing statistics stacked over layers, or None when dense):
        what a training step needs to add the routing losses and log expert load."""
        cfg = self.cfg
        B, T = tokens_BT.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if segment_ids is None:
            segment_ids = jnp.ones((B, T), dtype=jnp.int32)
        x_BTD = self.embed_tokens(tokens_BT)
        x_BTD, stats = run_layers_with_stats(
            cfg, self.layers.arrays(), x_BTD, positions, segment_ids
        )
        return self.logits(x_BTD), stats

    def scores(
        self,
        tokens_BT: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Float32 scalar scores [B, T] of the score head (model.score_head): at each
        position, after the model has read the tokens up to and including it."""
        B, T = tokens_BT.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        if segment_ids is None:
            segment_ids = jnp.ones((B, T), dtype=jnp.int32)
        x_BTD = self.embed_tokens(tokens_BT)
        x_BTD = run_layers(self.cfg, self.layers.arrays(), x_BTD, positions, segment_ids)
        return self.score_of(x_BTD)

    def score_of(self, x_BTD: jax.Array) -> jax.Array:
        """The score head on the last layer's output: final norm, then a dot with
        `score`, in float32."""
        x_BTD = rms_norm(x_BTD, self.final_norm[...], self.cfg.norm_eps)
        return jnp.einsum(
            "BTD,D->BT", x_BTD.astype(jnp.float32), self.score[...].astype(jnp.float32)
        )

    def embed_tokens(self, tokens_BT: jax.Array) -> jax.Array:
        """Token embeddings [B, T, D] in the compute dtype."""
        # Gather the FSDP shards of the table first (as FSDP does for every weight):
        # a lookup into a table split on its embed axis forces XLA to replicate it.
        embed_VD = constrain(self.embed[...], "vocab", None)
        compute = jnp.dtype(self.cfg.compute_dtype)
        scale_V = self._quant_scale("embed")
        if scale_V is None:
            x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(compute)
        else:  # int8 rows, each with its own scale: only the looked-up rows are dequantized
            scale_BT1 = jnp.take(scale_V, tokens_BT, axis=0)[..., None]
            x_BTD = dequantize(jnp.take(embed_VD, tokens_BT, axis=0), scale_BT1, compute)
        return constrain(x_BTD, "act_batch", "act_seq", "act_embed")

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        """Float32 logits [B, T, V] of the last layer's output: final norm, unembedding."""
        cfg = self.cfg
        x_BTD = rms_norm(x_BTD, self.final_norm[...], cfg.norm_eps)
        name = "embed" if cfg.tie_embeddings else "unembed"
        compute = jnp.dtype(cfg.compute_dtype)
        scale_V = self._quant_scale(name)  # per vocab entry: the tied table's per-row scale
        if scale_V is not None:  # an int8 table: dequantized, the plain matmul
            unembed_DV = self.embed[...].T if cfg.tie_embeddings else self.unembed[...]
            logits_BTV = unembed(x_BTD, dequantize(unembed_DV, scale_V, compute))
        elif cfg.tie_embeddings:
            logits_BTV = tied_unembed(x_BTD, self.embed[...].astype(compute))
        else:
            logits_BTV = unembed(x_BTD, self.unembed[...].astype(compute))
        return constrain(logits_BTV, "act_batch", "act_seq", "act_vocab")

    def _quant_scale(self, name: str) -> jax.Array | None:
        """The per-vocab-entry scales of an int8 `embed` / `unembed`, or None (float)."""
        scale = getattr(self, name + QUANT_SCALE, None)
        return None if scale is None else scale[...]
