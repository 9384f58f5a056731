"""TrainState and its sharded initialisation.

The state is built directly in its final sharded layout: `eval_shape` gives the
abstract state (the model's from jaxlm.models.params), the logical-axis rules give its
shardings, and `jax.jit(init, out_shardings=...)` materialises each shard on its own
device. No device ever holds the whole model. The same `state_shardings` are used at
init, in the step and (for checkpoints) at restore, so a resumed state is laid out
exactly like a fresh one.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxlm.config import ModelConfig
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.sharding import replicated


@flax.struct.dataclass
class TrainState:
    """Everything a step updates: a frozen pytree."""

    step: jax.Array  # updates applied so far (skipped steps do not count)
    params: nnx.State
    opt_state: optax.OptState
    # Moving average of the training loss over applied steps, for loss-spike skipping
    # (steps.py); the first applied step sets it.
    loss_ema: jax.Array
    # Parameters that do not train (param_views.py): LoRA's base weights, a DPO
    # reference model; None when there are none. Saved with the state; the step
    # returns them unchanged; sharded by the same logical-axis rules as params.
    frozen: Any = None


def opt_state_shardings(abstract_opt_state, params_sharding: nnx.State, mesh: Mesh):
    """Optimizer moments take their parameter's sharding; scalars are replicated.

    A leaf belongs to the parameter whose tree path ends its own path (Adam's mu/nu
    mirror the params; a partitioned optimizer such as Muon + AdamW holds masked copies
    of the params tree, so the match is per leaf rather than per whole tree).
    """
    by_path = {
        _path_key(path): sharding
        for path, sharding in jax.tree_util.tree_flatten_with_path(params_sharding)[0]
    }
    longest = max((len(p) for p in by_path), default=0)

    def shard(path, _leaf):
        key = _path_key(path)
        for start in range(max(0, len(key) - longest), len(key)):
            if key[start:] in by_path:
                return by_path[key[start:]]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(shard, abstract_opt_state)


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(k) for k in path)


def init_train_state(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, key: jax.Array
) -> TrainState:
    """A fresh TrainState at step 0 (traceable: create_train_state jits it sharded, and
    jax.eval_shape of it gives the state's shapes without allocating)."""
    params = init_params(cfg, key)
    zero = jnp.zeros((), jnp.float32)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), zero)


def create_train_state(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh, key: jax.Array
) -> tuple[TrainState, TrainState]:
    """Initialise a sharded TrainState; returns it and its sharding pytree."""
    shardings = train_state_shardings(cfg, optimizer, mesh)
    with jax.set_mesh(mesh):
        init = jax.jit(lambda k: init_train_state(cfg, optimizer, k), out_shardings=shardings)
        state = init(key)
    return state, shardings


def train_state_shardings(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """The sharding of every TrainState leaf, derived from the logical-axis rules."""
    _, abstract_params = abstract_model(cfg)
    return state_shardings(abstract_params, optimizer, mesh)


def state_shardings(
    trained: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh, frozen=None
) -> TrainState:
    """Shardings of a TrainState that trains the abstract params `trained` (and holds
    `frozen` beside them): each from the logical axes its variable was declared with;
    the optimizer's moments follow the params they belong to."""
    trained_shardings = param_shardings(trained, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, trained)
    return TrainState(
        step=replicated(mesh),
        params=trained_shardings,
        opt_state=opt_state_shardings(abstract_opt, trained_shardings, mesh),
        loss_ema=replicated(mesh),
        frozen=None if frozen is None else param_shardings(frozen, mesh),
    )


def sharding_summary(shardings: nnx.State) -> dict[str, str]:
    """{'layers/wq': "P(None, 'fsdp', 'tensor', None)", ...} for tests and logs."""
    out = {}
    for path, var in nnx.to_flat_state(shardings):
        sharding = var.get_value()
        assert isinstance(sharding, NamedSharding), path
        out["/".join(str(p) for p in path)] = str(sharding.spec)
    return out
