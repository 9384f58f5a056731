"""A MoE model's routing terms in the training objective, its bias update and metrics.

The model returns, per layer, sums of its routing statistics (jaxlm.models.moe.MoeStats:
the sequence-wise balance loss summed over rows, the router z-loss summed over tokens,
the expert load, the dropped assignments). Sums add exactly over micro-batches, and the
objective divides them by counts of the WHOLE batch, taken before accumulation:

    objective = nll_sum + z_loss * z_sum
                + N_tok * (balance_weight * sum_l balance_l / (L * rows)
                           + z_weight * sum_l router_z_l / (L * valid))

where N_tok is the batch's supervised tokens, the divisor the train step applies to the
whole summed gradient. After that division the routing terms are plain means (over
layers and rows, over layers and tokens), and accumulating micro-batches gives the
large batch's gradient.

The auxiliary-loss-free bias (model.moe_bias_rate > 0) is updated after the optimizer
step from the batch's load: bias += rate * sign(mean load - load), per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models.moe import update_router_bias
from jaxlm.models.transformer import MoeStats


def batch_counts(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The whole batch's divisors: supervised tokens, rows holding tokens, tokens."""
    valid_BT = batch["segment_ids"] > 0
    return {
        "supervised": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
        "rows": jnp.sum(jnp.any(valid_BT, axis=1).astype(jnp.float32)),
        "valid": jnp.sum(valid_BT.astype(jnp.float32)),
    }


def routing_objective(cfg: ModelConfig, stats: MoeStats, counts: dict) -> jax.Array:
    """The routing terms to add to an objective summed over supervised tokens."""
    layers = len(cfg.moe_layers)
    balance = jnp.sum(stats["balance_sum"]) / (layers * jnp.maximum(counts["rows"], 1.0))
    router_z = jnp.sum(stats["z_sum"]) / (layers * jnp.maximum(counts["valid"], 1.0))
    return counts["supervised"] * (cfg.moe_balance_weight * balance + cfg.moe_z_weight * router_z)


SUMMARIES = ("moe_balance", "moe_router_z", "moe_dropped", "moe_max_load")


def routing_metrics(stats: MoeStats) -> dict[str, jax.Array]:
    """Scalars for metrics.jsonl, and the per-layer, per-expert load fractions [L, E].

    moe_balance: the balance loss's mean (1 = uniform); moe_router_z: the z-loss's mean;
    moe_dropped: the share of assignments dropped by capacity; moe_max_load: the
    busiest expert's share of its layer's assignments times E (1 = uniform).
    """
    rows = jnp.maximum(jnp.sum(stats["rows"]), 1.0)
    tokens = jnp.maximum(jnp.sum(stats["tokens"]), 1.0)
    assigned_L = jnp.maximum(jnp.sum(stats["load"], axis=-1), 1.0)
    load_LE = stats["load"] / assigned_L[:, None]
    experts = stats["load"].shape[-1]
    return {
        "moe_balance": jnp.sum(stats["balance_sum"]) / rows,
        "moe_router_z": jnp.sum(stats["z_sum"]) / tokens,
        "moe_dropped": jnp.sum(stats["dropped"]) / jnp.sum(assigned_L),
        "moe_max_load": jnp.max(load_LE) * experts,
        "moe_load": load_LE,
    }


def update_bias(cfg: ModelConfig, params: nnx.State, stats: MoeStats) -> nnx.State:
    """`params` with each layer's router bias [L, E] moved against its observed load."""
    if cfg.moe_bias_rate <= 0:
        return params

    def update(path, leaf):
        if not any(getattr(key, "key", None) == "router_bias" for key in path):
            return leaf
        return update_router_bias(leaf, stats["load"], cfg.moe_bias_rate).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(update, params)


def after_update(cfg: ModelConfig, state, new_state, stats: MoeStats):
    """(new_state with the router bias updated if the step applied, routing metrics)."""
    applied = new_state.step > state.step
    params = update_bias(cfg, new_state.params, stats)
    params = jax.tree.map(lambda new, old: jnp.where(applied, new, old), params, new_state.params)
    return new_state.replace(params=params), routing_metrics(stats)


def log_record(cfg: ModelConfig, metrics: dict) -> dict[str, float]:
    """The routing metrics of a fetched step as flat scalars for metrics.jsonl and
    TensorBoard: the four summaries and moe_load_l{layer}_e{expert}, each expert's share
    of its layer's assignments, by the layer's index in the model (nothing for a dense
    model)."""
    if "moe_load" not in metrics:
        return {}
    record = {k: float(metrics[k]) for k in SUMMARIES}
    for layer, shares in zip(cfg.moe_layers, metrics["moe_load"], strict=True):
        for expert, share in enumerate(shares):
            record[f"moe_load_l{layer}_e{expert}"] = float(share)
    return record
