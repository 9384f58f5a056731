"""Building a model and its parameters: abstract shapes, initial values, shardings, counts.

`build_model` is the one constructor of a configured model: the plain Transformer,
then, with `model.lora_rank > 0`, LoRA adapters added beside its weights
(jaxlm.models.lora). Adding them after every base weight has drawn its key keeps a
LoRA model's base exactly the plain model of the same key. Everything else here goes
through it: `abstract_model` / `abstract_lora` (shapes only, nothing allocated),
`init_params` / `init_lora_params` / `init_adapters` (values from a key),
`param_shardings` (placement from each variable's logical axes) and the counts.

`keys_keeping_weights` reads which model config keys may differ between saved
weights and the model loading them (marked on the ModelConfig fields).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import ADDS_ADAPTERS, KEEPS_WEIGHTS, WEIGHTS, ConfigError, ModelConfig
from jaxlm.models import lora
from jaxlm.models.transformer import Transformer
from jaxlm.sharding import named_sharding


def build_model(cfg: ModelConfig, rngs: nnx.Rngs) -> Transformer:
    """The model of `cfg` with weights drawn from `rngs`, adapters added last if any."""
    model = Transformer(cfg, rngs=rngs)
    if cfg.lora_rank > 0:
        lora.add_adapters(model.layers, cfg, rngs)
    return model


def _abstract_module(cfg: ModelConfig) -> Transformer:
    """`build_model`'s shapes and dtypes (`eval_shape`: nothing is allocated)."""
    return nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """A plain model's graph definition and parameter shapes, without allocating them."""
    return nnx.split(_abstract_module(cfg), nnx.Param)


def _require_lora(cfg: ModelConfig) -> None:
    if cfg.lora_rank <= 0:
        raise ConfigError(f"a LoRA model needs model.lora_rank > 0, got {cfg.lora_rank}")


def abstract_lora(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`lora.split_lora` of the LoRA model's shapes: (graphdef, adapters, base)."""
    _require_lora(cfg)
    return lora.split_lora(_abstract_module(cfg))


def init_params(cfg: ModelConfig, key: jax.Array) -> nnx.State:
    """A plain model's initial parameters from `key` (traceable: jit it to shard)."""
    return nnx.split(build_model(cfg, nnx.Rngs(params=key)), nnx.Param)[1]


def init_lora_params(cfg: ModelConfig, key: jax.Array) -> tuple[nnx.State, nnx.State]:
    """(adapters, base) of the LoRA model from `key`; the base is `init_params` of the
    plain model from the same key."""
    _require_lora(cfg)
    _, adapters, base = lora.split_lora(build_model(cfg, nnx.Rngs(params=key)))
    return adapters, base


def init_adapters(
    cfg: ModelConfig, key: jax.Array, *, shardings: nnx.State | None = None
) -> nnx.State:
    """Fresh adapters (A random, B zero), as a LoRA model built from `key` has them.

    Jitted so that the base weights the constructor also draws are dead code and never
    allocated; `shardings` places the adapters directly.
    """
    _require_lora(cfg)
    return jax.jit(lambda k: init_lora_params(cfg, k)[0], out_shardings=shardings)(key)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_shardings(abstract_params: nnx.State, mesh: Mesh) -> nnx.State:
    """A State of NamedShardings, from each parameter's logical axes."""

    def shard(var: nnx.Variable) -> nnx.Variable:
        axes = var.get_metadata()["logical_axes"]
        return var.replace(named_sharding(mesh, axes, var.shape))

    return jax.tree.map(shard, abstract_params, is_leaf=_is_variable)


def _size(state: nnx.State) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def count_params(cfg: ModelConfig, *, include_embedding: bool = True) -> int:
    """Exact parameter count from shapes alone (a LoRA model's base: adapters excluded)."""
    total = _size(nnx.state(_abstract_module(cfg), nnx.Param))
    if not include_embedding:
        total -= cfg.vocab_size * cfg.d_model
    return total


def count_active_params(cfg: ModelConfig, *, include_embedding: bool = True) -> int:
    """count_params less the routed experts a token does not use (a MoE model's E - k
    of E per MoE layer); equal to count_params for a dense model."""
    total = count_params(cfg, include_embedding=include_embedding)
    if not cfg.moe:
        return total
    idle = cfg.moe_experts - cfg.moe_top_k
    return total - len(cfg.moe_layers) * idle * 3 * cfg.d_model * cfg.resolved_moe_d_ff


def count_lora(cfg: ModelConfig) -> tuple[int, int]:
    """(adapter parameters, base parameters), from shapes alone."""
    _, adapters, base = abstract_lora(cfg)
    return _size(adapters), _size(base)


def keys_keeping_weights(*, adapters: bool) -> frozenset[str]:
    """Model config keys (without "model.") that saved weights may differ in.

    Those marked jaxlm.config.KEEPS_WEIGHTS, and with `adapters` also those marked
    ADDS_ADAPTERS: they fit when plain weights become a LoRA model's base, not when a
    model is loaded as it was saved.
    """
    marks = [KEEPS_WEIGHTS, ADDS_ADAPTERS] if adapters else [KEEPS_WEIGHTS]
    return frozenset(
        field.name
        for field in dataclasses.fields(ModelConfig)
        if WEIGHTS in field.metadata and {WEIGHTS: field.metadata[WEIGHTS]} in marks
    )
