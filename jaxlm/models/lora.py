"""LoRA: low-rank adapters on the stacked projection weights of `Layers`.

With `model.lora_rank = r > 0`, every projection W named in `model.lora_targets`
gets two adapter factors, stored beside it in `Layers` with the same leading layers
axis:

    A  [L, *I, r]   normal, std 1 / sqrt(prod(I)) (fan-in: x @ A has unit-scale
                    entries for unit-scale inputs, so B's first gradients are neither
                    vanishing nor huge)
    B  [L, r, *O]   zeros: a fresh adapter leaves the model's output unchanged

where I and O are W's input and output dimensions (wq [L, D, N, H]: I = (D,),
O = (N, H); wo [L, N, H, D]: I = (N, H), O = (D,)). Keeping I and O as separate axes
(instead of flattening them to prod(I), prod(O)) lets A carry W's logical axes on its
input side and B on its output side, so the adapters shard like their weight and the
branch below needs no resharding. `merge_lora` (export) and a flat [in, r] view are
reshapes away.

The model computes W's projection plus the adapter branch, unmerged:

    y = x @ W + (alpha / r) * ((x @ A) @ B)

rather than x @ (W + (alpha / r) * A @ B). Both are exactly x @ W when B = 0 (x @ 0 is
0 and y + 0 is y, bit for bit), but only the unmerged form is cheap to train:

  - memory: autodiff through `lax.scan` stacks each layer's residuals. A merged
    weight W' is the residual of x @ W', so training without full remat keeps a copy
    of every targeted weight; the unmerged branch keeps only x @ A, [B, T, r].
  - compute: the adapters' gradients through a merged weight need dW' = x^T dy, the
    2*B*T*I*O FLOPs full fine-tuning spends and LoRA exists to avoid. Unmerged, dA and
    dB cost 2*B*T*r*(I + O) each, and the forward adds 2*B*T*r*(I + O) per projection,
    a fraction r * (I + O) / (I * O) of its matmul (under 1% for r = 16, D = 4096).

Measured (XLA:CPU, grad of the loss; D=512, L=8, F=1536, r=16, B*T=1024): merged
in the block, +99 MiB of temporaries (the targeted weights are 104 MiB) and 24.1
GFLOP, as much as full fine-tuning (24.3); unmerged, 17.8 GFLOP.

The adapter variables are `LoRAParam`, a sibling of `nnx.Param` rather than a
subclass: nnx type filters match with isinstance, so a subclass would also be taken
by every `nnx.Param` filter (count_params, abstract_model) and the base and adapters
could not be told apart by type. As siblings, `nnx.split(model, LoRAParam,
nnx.Param)` gives (graphdef, adapters, base), and code that splits a LoRA model with
`nnx.Param` alone fails loudly ("non-exhaustive filters") instead of silently
training or saving the wrong tree.

This module is the adapters' math on a model or param tree: declaring them on a
built model (`add_adapters`; jaxlm.models.params.build_model calls it after the base
weights), splitting them off, merging them into the base. The forward branch is
jaxlm.models.layers.project; training with adapters is jaxlm.training.adapters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.models.layers import LOW_RANK_A, LOW_RANK_B, RANK_LETTER, low_rank_scale

# Projection weights that can carry adapters -> how many of their dimensions after the
# layers axis are inputs (the rest are outputs).
TARGET_INPUT_DIMS: dict[str, int] = {
    "wq": 1,
    "wk": 1,
    "wv": 1,
    "wo": 2,
    "w_gate": 1,
    "w_up": 1,
    "w_down": 1,
}


class LoRAParam(nnx.Variable):
    """A LoRA adapter factor: trained, unlike the frozen base `nnx.Param`s."""


# ----------------------------------------------------------------------- config


def lora_targets(cfg: ModelConfig) -> tuple[str, ...]:
    """The validated target names of `cfg.lora_targets`, in order, without repeats.

    Raises ConfigError naming every unknown target, or when a positive rank has no
    target at all.
    """
    if cfg.lora_rank < 0:
        raise ConfigError(f"model.lora_rank={cfg.lora_rank} must be >= 0")
    names = [n.strip() for n in cfg.lora_targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGET_INPUT_DIMS]
    if unknown:
        raise ConfigError(
            f"model.lora_targets: unknown target(s) {', '.join(unknown)}; "
            f"valid: {', '.join(TARGET_INPUT_DIMS)}"
        )
    if cfg.lora_rank > 0 and not names:
        raise ConfigError("model.lora_rank > 0 needs at least one model.lora_targets name")
    return tuple(dict.fromkeys(names))


def plain_config(cfg: ModelConfig) -> ModelConfig:
    """The same model without adapters: the shape of the base params and of merges."""
    return dataclasses.replace(cfg, lora_rank=0)


# ---------------------------------------------------------------- declaration


def add_adapters(layers: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
    """Declare A and B (module docstring) beside each target weight of `layers`.

    Called on a built model, after every base weight is drawn, so a LoRA model
    initialised from a key has exactly the plain model of that key as its base.
    """
    r = cfg.lora_rank
    for name in lora_targets(cfg):
        weight = getattr(layers, name)
        axes = weight.get_metadata()["logical_axes"]
        n_in = TARGET_INPUT_DIMS[name]
        L = weight.shape[0]
        in_shape, out_shape = weight.shape[1 : 1 + n_in], weight.shape[1 + n_in :]
        in_axes, out_axes = axes[1 : 1 + n_in], axes[1 + n_in :]
        std = 1.0 / math.sqrt(math.prod(in_shape))
        a = std * jax.random.normal(rngs.params(), (L, *in_shape, r), dtype=jnp.float32)
        b = jnp.zeros((L, r, *out_shape), jnp.float32)
        setattr(
            layers,
            name + LOW_RANK_A,
            LoRAParam(a.astype(weight.dtype), logical_axes=("layers", *in_axes, None)),
        )
        setattr(
            layers,
            name + LOW_RANK_B,
            LoRAParam(b.astype(weight.dtype), logical_axes=("layers", None, *out_axes)),
        )


# ------------------------------------------------------------ split and merge


def split_lora(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, adapters, base) of a LoRA model; `nnx.merge(graphdef, adapters, base)`."""
    return nnx.split(model, LoRAParam, nnx.Param)


def adapters_only(state: nnx.State) -> nnx.State:
    """The LoRAParam entries of a model State (e.g. `nnx.state(model)`), to save alone."""
    return nnx.filter_state(state, LoRAParam)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def merge_lora(cfg: ModelConfig, adapters: nnx.State, base: nnx.State) -> nnx.State:
    """Params of `plain_config(cfg)` with each W replaced by W + (alpha / r) A @ B.

    For export: the merged model needs no LoRA code. Pure jnp, so it can be jitted
    (with the base's shardings) for a model too large for one device. The sum is formed
    in float32 and cast back to W's dtype.
    """
    scale = low_rank_scale(cfg)
    layers = adapters["layers"]
    merged = {}
    for name in lora_targets(cfg):
        a, b = layers[name + LOW_RANK_A].get_value(), layers[name + LOW_RANK_B].get_value()
        w = base["layers"][name]
        n_in = TARGET_INPUT_DIMS[name]
        letters = "ABCDEFGH"[: w.ndim - 1]  # W's dims after the layers axis
        w_in, w_out = letters[:n_in], letters[n_in:]
        delta = jnp.einsum(
            f"L{w_in}{RANK_LETTER},L{RANK_LETTER}{w_out}->L{letters}",
            a.astype(jnp.float32),
            b.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        value = w.get_value()
        merged[name] = (value.astype(jnp.float32) + scale * delta).astype(value.dtype)

    def replace(path, var):
        keys = tuple(getattr(p, "key", p) for p in path)
        if len(keys) == 2 and keys[0] == "layers" and keys[1] in merged:
            return var.replace(merged[keys[1]])
        return var

    return jax.tree_util.tree_map_with_path(replace, base, is_leaf=_is_variable)
