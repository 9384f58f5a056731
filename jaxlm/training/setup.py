"""The state a run starts from: what trains, what stays frozen, and their shardings.

    pretraining / SFT       params = the model; frozen = None
    preference (full FT)    params = the policy; frozen = a copy of the starting params,
                            the reference model (same shardings as the policy)
    LoRA (any format)       params = the adapters; frozen = the base model, which is
                            also the reference (adapters off): no second copy

`train.init_from` gives the starting params (a params export or a workdir); the
optimizer always starts fresh. A resumed run then overwrites all of this with its
checkpoint, which holds `frozen` too, so resuming needs nothing but the workdir.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import Config
from jaxlm.training.param_views import FULL, ParamViews
from jaxlm.training.state import TrainState, abstract_model, create_train_state


@dataclasses.dataclass
class RunState:
    state: TrainState
    shardings: TrainState  # a NamedSharding per leaf of `state`
    graphdef: nnx.GraphDef
    views: ParamViews


def initial_state(
    cfg: Config, optimizer, mesh: Mesh, key: jax.Array, *, log: Callable[[str], None]
) -> RunState:
    if cfg.model.lora_rank > 0:
        from jaxlm.models.lora import initial_lora_state

        return RunState(*initial_lora_state(cfg, optimizer, mesh, key, log=log))
    state, shardings = create_train_state(cfg.model, optimizer, mesh, key)
    if cfg.train.init_from:
        state = state.replace(params=init_params_from(cfg, shardings.params, log))
    graphdef, _ = abstract_model(cfg.model)
    if cfg.data.format == "preference" and needs_reference(cfg):
        if not cfg.train.init_from:
            log(
                "warning: preference training without train.init_from: the reference is "
                "the randomly initialised model"
            )
        # A separate buffer: the state is donated to the step, and one buffer cannot
        # be donated twice.
        frozen = jax.tree.map(lambda x: jnp.array(x, copy=True), state.params)
        state = state.replace(frozen=frozen)
        shardings = shardings.replace(frozen=shardings.params)
    return RunState(state, shardings, graphdef, FULL)


def needs_reference(cfg: Config) -> bool:
    """SimPO is reference-free; precomputed reference log-probs come with the data."""
    return cfg.preference.loss != "simpo" and cfg.preference.reference == "model"


def init_params_from(cfg: Config, shardings: Any, log: Callable[[str], None]):
    """Params from `train.init_from` (a params directory, or a workdir's newest good
    checkpoint; see params_checkpoint.load_init_params), placed with `shardings`."""
    from jaxlm.checkpointing.params_io import load_init_params

    params, source = load_init_params(cfg.train.init_from, cfg.model, shardings=shardings)
    log(f"params initialised from {source}")
    return params
