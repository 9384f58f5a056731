"""Weight-only int8 quantization of a loaded model, for inference (`--quantize int8`).

    graphdef, params = quantize_params(cfg.model, graphdef, params, mesh=mesh)

Why: memory at rest. Every matmul weight (the layers' wq, wk, wv, wo, w_gate, w_up,
w_down, and the unembedding: `unembed`, or the tied `embed` table) is stored as int8,
a quarter of float32 and half of bfloat16; so is an untied model's `embed` lookup
table, which is as large as its unembedding. Together they are nearly all of a
model's bytes. Norm scales, biases and a score head stay as they are (tiny, and
sensitive).

Scheme: symmetric, one float32 scale per output channel,

    scale[o] = max |W[:, o]| / 127   (the max over W's input, i.e. contracted, dims)
    q[i, o]  = round(W[i, o] / scale[o])   in [-127, 127]
    W ~ q * scale                    |error| <= scale / 2 per element

A per-output-channel scale multiplies one output of the matmul, so one outlier weight
coarsens only its own channel, not the whole matrix (a per-tensor scale would), for
4 bytes per channel: under 0.5% of an int8 weight with >= 1000 inputs. The `embed`
table [V, D] gets one scale per row (per vocabulary entry): that is per output
channel for tied logits (which contract over D) and per looked-up row for the lookup,
so one set of scales serves both uses. Zero channels get scale 1 (q = 0, exact).

The int8 weights replace the float ones in the params, each with its scales beside it
as `<name>_scale` (an nnx.Param carrying its weight's output axes, so a mesh shards
the scales like their weight's output). The forward pass (jaxlm.models.transformer:
`layer_weights`, `embed_tokens`, `logits`) dequantizes a weight when a scale exists,
and only then: training's forward pass, which never has one, is unchanged.

Where the dequantization happens, and what it costs: the layers are a `lax.scan`, so
one layer's weights at a time are turned back into the compute dtype (convert, times
the scales) right before its matmuls; the float copy is a temporary of one layer,
never the whole model. The matmuls run in the compute dtype (weight-only: no int8
arithmetic), so compute-bound work (prefill, large batches) costs what it did. On
XLA:CPU the conversion is nearly free inside the layers: the scan already copies each
layer's slice out of the stacked weights before its dots (a dynamic-slice fusion),
and the convert-and-multiply fuses into that copy, which then reads 1 byte per weight
instead of 4. Decode at small batch, bound by reading the weights, gets faster (2x
at batch 1 for d_model 256 on a 2-core EPYC: benchmarks/quantized_inference.py,
experiments/results/serving/int8_amd_epyc.json). The unembedding is the exception:
its [V, D] table is dequantized whole every step (4 bytes written per weight that a
float model's dot reads in place); the embedding lookup dequantizes only its rows.

LoRA adapters are merged before quantizing (jaxlm.inference.loading does so for
--adapters): the int8 weight is then one rounding of the weight the model computes
with, W + (alpha / r) A B. Params that still hold adapters un-merged are refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.models.layers import LOW_RANK_A, QUANT_SCALE, dequantize
from jaxlm.models.lora import TARGET_INPUT_DIMS
from jaxlm.models.params import build_model, param_shardings

QUANTIZE_CHOICES = ("none", "int8")
INT8_MAX = 127


def quantize_int8(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(q int8, scale float32): symmetric absmax over `axes`, which `scale` lacks.

    `dequantize(q, scale, dtype)` (scale expanded back over `axes`) is within scale / 2
    of x per element. Also the KV cache's int8 storage (jaxlm.inference.kv_cache).
    """
    x32 = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(x32), axis=axes)
    scale = jnp.where(amax > 0, amax / INT8_MAX, 1.0)
    q = jnp.clip(jnp.round(x32 / jnp.expand_dims(scale, axes)), -INT8_MAX, INT8_MAX)
    return q.astype(jnp.int8), scale


def dequantize_int8(q: jax.Array, scale: jax.Array, axes: tuple[int, ...], dtype) -> jax.Array:
    """`quantize_int8`'s inverse (up to its rounding), in `dtype`."""
    return dequantize(q, jnp.expand_dims(scale, axes), dtype)


def _quantize_variable(module: nnx.Module, name: str, n_in: int, first: int) -> None:
    """Replace `module.name` by its int8 values and add `name + QUANT_SCALE` beside it.

    Its dims [first, first + n_in) are its inputs (reduced); the rest keep their axes.
    """
    var = getattr(module, name)
    axes = var.get_metadata()["logical_axes"]
    reduced = tuple(range(first, first + n_in))
    q, scale = quantize_int8(var[...], reduced)
    kept = tuple(a for i, a in enumerate(axes) if i not in reduced)
    setattr(module, name, nnx.Param(q, logical_axes=axes))
    setattr(module, name + QUANT_SCALE, nnx.Param(scale, logical_axes=kept))


def quantize_module(model: nnx.Module) -> None:
    """Quantize a built Transformer's weights in place (module docstring): the layers'
    projections, the embedding table and an untied unembedding."""
    for name, n_in in TARGET_INPUT_DIMS.items():  # every projection of Layers
        _quantize_variable(model.layers, name, n_in, first=1)  # after the layers axis
    _quantize_variable(model, "embed", 1, first=1)  # [V, D]: one scale per row
    if not model.cfg.tie_embeddings:
        _quantize_variable(model, "unembed", 1, first=0)  # [D, V]: one per column


def abstract_quantized(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The quantized model's graph definition and param shapes (nothing allocated)."""

    def build():
        model = build_model(cfg, nnx.Rngs(0))
        quantize_module(model)
        return model

    return nnx.split(nnx.eval_shape(build), nnx.Param)


def quantize_params(
    cfg: ModelConfig,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    *,
    mesh: Mesh | None = None,
    source: str = "the model",
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) of the int8 model of a plain model's `params`.

    Jitted, with the quantized params placed by their logical axes on `mesh` (when
    given): each shard is quantized where it lies (only the per-channel maxima are
    reduced across shards; the weights are never gathered). InputError
    for params that are not a plain float model's (LoRA un-merged, already int8).
    """
    if cfg.lora_rank or isinstance(params, tuple) or _has_key(params, LOW_RANK_A):
        raise InputError(
            f"{source}: cannot quantize a model with un-merged LoRA adapters; merge them "
            "first (load_model(..., adapters=DIR), or `jaxlm export` without --adapters-only)"
        )
    if _has_key(params, QUANT_SCALE):
        raise InputError(f"{source}: is already quantized (it has int8 weights with scales)")
    q_graphdef, abstract = abstract_quantized(cfg)
    shardings = None if mesh is None else param_shardings(abstract, mesh)

    def run(params):
        model = nnx.merge(graphdef, params)
        quantize_module(model)
        return nnx.state(model, nnx.Param)

    return q_graphdef, jax.jit(run, out_shardings=shardings)(params)


def _has_key(params, suffix: str) -> bool:
    """Whether any variable of `params` is named ... + suffix."""
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        names = [str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey)]
        if names and names[-1].endswith(suffix):
            return True
    return False
