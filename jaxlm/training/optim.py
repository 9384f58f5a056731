"""AdamW with a weight-decay mask, learning-rate schedules and global-norm clipping.

Schedules (all start with a linear warmup from 0):
  cosine    - cosine decay to lr * min_lr_ratio at the last step
  wsd       - warmup, stable at lr, then linear decay to lr * min_lr_ratio over the
              last `decay_fraction` of the run (the warmup-stable-decay schedule)
  constant  - stay at lr after warmup
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

from jaxlm.config import OptimConfig


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """lr for update number `count` (0-based); the first update already gets lr / warmup."""
    base = _schedule_from_zero(cfg, total_steps)
    return lambda count: base(count + 1)


def _schedule_from_zero(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, total_steps)
    final_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=cfg.lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=final_lr,
        )
    warm = optax.linear_schedule(0.0, cfg.lr, max(warmup, 1))
    if cfg.schedule == "constant":
        return optax.join_schedules([warm, optax.constant_schedule(cfg.lr)], [warmup])
    decay_steps = max(1, round(cfg.decay_fraction * total_steps))
    decay_start = max(warmup, total_steps - decay_steps)
    stable = optax.constant_schedule(cfg.lr)
    decay = optax.linear_schedule(cfg.lr, final_lr, max(1, total_steps - decay_start))
    return optax.join_schedules([warm, stable, decay], [warmup, decay_start])


def weight_decay_mask(params: nnx.State) -> nnx.State:
    """Decay matrices and embeddings; never norm scales (decaying them to 0 is harmful),
    nor a MoE router's balancing bias (set from the load, not learnt)."""

    def decays(var: nnx.Variable) -> nnx.Variable:
        axes = var.get_metadata()["logical_axes"]
        return var.replace("norm" not in axes and "router_bias" not in axes)

    return jax.tree.map(decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = []
    if cfg.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(
        optax.adamw(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*chain)
