"""Training LoRA adapters: the TrainState of a LoRA run and the models its step runs.

A LoRA run's TrainState.params are the adapters (all the optimizer sees) and
TrainState.frozen is the base, whose tree is exactly the plain (lora_rank = 0) model's
params, so a pretrained params directory loads into it unchanged. `lora_views()`
gives the step its models: the policy (adapters + base) and the reference (zeroed
adapters + base: the base model, without a second copy of its weights).

The adapters themselves (declaring, splitting, merging) are jaxlm.models.lora; how a
model with them is built is jaxlm.models.params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxlm.checkpointing.params_io import load_init_params
from jaxlm.config import Config, ConfigError, ModelConfig
from jaxlm.models.lora import lora_targets, plain_config
from jaxlm.models.params import (
    abstract_lora,
    count_lora,
    init_adapters,
    init_lora_params,
)
from jaxlm.training.param_views import ParamViews, States
from jaxlm.training.state import TrainState, state_shardings


def _policy(params: Any, frozen: Any) -> States:
    return (params, frozen)


def _reference(params: Any, frozen: Any) -> States:
    # A and B both zero: the branch adds exact zeros, so this is the base model. Only
    # the (small) adapters are copied as zeros, never the base.
    return (jax.tree.map(jnp.zeros_like, params), frozen)


def lora_views() -> ParamViews:
    """Policy = adapters + base; reference = the base alone (adapters switched off)."""
    return ParamViews(policy=_policy, reference=_reference)


def _structure(state: nnx.State) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {
        "/".join(map(str, path)): (tuple(var.shape), var.dtype)
        for path, var in nnx.to_flat_state(state)
    }


def check_base(cfg: ModelConfig, base: nnx.State) -> None:
    """Raise ConfigError unless `base` has the paths, shapes and dtypes of cfg's base."""
    _, _, expected = abstract_lora(cfg)
    want, got = _structure(expected), _structure(base)
    if want != got:
        diffs = sorted(
            f"{k}: expected {want.get(k)}, got {got.get(k)}"
            for k in want.keys() | got.keys()
            if want.get(k) != got.get(k)
        )
        raise ConfigError("base params do not fit the LoRA model's base: " + "; ".join(diffs[:5]))


def lora_from_base(
    cfg: ModelConfig, base: nnx.State, key: jax.Array, *, shardings: nnx.State | None = None
) -> tuple[nnx.State, nnx.State]:
    """(adapters, base) for a plain pretrained params State: fresh adapters from `key`.

    `base` is used as it is (the plain model's params are exactly the LoRA model's
    base tree); it must match cfg's shapes and dtypes (e.g. load it with
    `plain_config(cfg)`, which casts on load).
    """
    check_base(cfg, base)
    return init_adapters(cfg, key, shardings=shardings), base


def lora_state_shardings(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """Shardings of a LoRA TrainState: params = adapters, frozen = base."""
    _, adapters, base = abstract_lora(cfg)
    return state_shardings(adapters, optimizer, mesh, frozen=base)


def create_lora_train_state(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    key: jax.Array,
    *,
    base: nnx.State | None = None,
) -> tuple[TrainState, TrainState]:
    """A sharded LoRA TrainState and its shardings.

    Adapters come from `key`; the base is `base` (e.g. pretrained params, placed on the
    frozen shardings here) or, without it, the plain model of `key`. Nothing is built
    whole on one device: each part is jitted straight into its shardings.
    """
    shardings = lora_state_shardings(cfg, optimizer, mesh)

    def init(key: jax.Array) -> tuple[TrainState, nnx.State]:
        adapters, random_base = init_lora_params(cfg, key)
        zero = jnp.zeros((), jnp.float32)
        state = TrainState(jnp.zeros((), jnp.int32), adapters, optimizer.init(adapters), zero)
        return state, random_base

    state_shardings = shardings.replace(frozen=None)
    with jax.set_mesh(mesh):
        if base is None:
            state, base = jax.jit(init, out_shardings=(state_shardings, shardings.frozen))(key)
        else:
            check_base(cfg, base)
            # The random base is returned by nothing, so XLA never computes it.
            state = jax.jit(lambda k: init(k)[0], out_shardings=state_shardings)(key)
            base = jax.device_put(base, shardings.frozen)
    return state.replace(frozen=base), shardings


def initial_lora_state(
    cfg: Config,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    key: jax.Array,
    *,
    log: Callable[[str], None],
) -> tuple[TrainState, TrainState, nnx.GraphDef, ParamViews]:
    """(state, shardings, graphdef, views) of a LoRA run, for jaxlm.training.setup.

    `train.init_from` names the base: plain params (a params directory or a plain
    run's workdir), loaded straight into the frozen shardings. Without it the base is
    the random plain model of `key` (useful for tests only; logged as a warning).
    """
    model = cfg.model
    graphdef, _, _ = abstract_lora(model)
    base = None
    if cfg.train.init_from:
        frozen_shardings = lora_state_shardings(model, optimizer, mesh).frozen
        base, source = load_init_params(
            cfg.train.init_from, plain_config(model), shardings=frozen_shardings
        )
        log(f"LoRA base params from {source}")
    else:
        log("warning: LoRA without train.init_from: the frozen base is a random model")
    state, shardings = create_lora_train_state(model, optimizer, mesh, key, base=base)
    n_adapters, n_base = count_lora(model)
    log(
        f"LoRA rank {model.lora_rank} on {','.join(lora_targets(model))}: "
        f"{n_adapters:,} trained params ({100 * n_adapters / n_base:.2f}% of the "
        f"{n_base:,} frozen base params)"
    )
    return state, shardings, graphdef, lora_views()
