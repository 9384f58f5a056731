"""Optimizers (AdamW, or Muon for the layer matrices), schedules, global-norm clipping.

optim.optimizer:
  adamw     - AdamW on every parameter; decay on matrices and embeddings only
  muon      - Muon (momentum orthogonalised by Newton-Schulz iterations; optax.contrib)
              on the transformer layers' projection matrices, each layer's matrix on
              its own (the stacked "layers" and "experts" axes are batch axes); AdamW
              as above on everything else (embeddings, output head, norms, routers).
              Muon's lr is optim.muon_lr on the same schedule shape as optim.lr.

Schedules (all start with a linear warmup from 0):
  cosine    - cosine decay to lr * min_lr_ratio at the last step
  wsd       - warmup, stable at lr, then linear decay to lr * min_lr_ratio over the
              last `decay_fraction` of the run (the warmup-stable-decay schedule)
  constant  - stay at lr after warmup
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers, scale_by_muon

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


BATCH_AXES = ("layers", "experts")  # stacked copies: each slice is its own matrix
ADAMW_MATRICES = ("router",)  # a MoE router's few expert columns: not a projection


def muon_dimensions(name: str, var: nnx.Variable) -> MuonDimensionNumbers | None:
    """Which axes of parameter `name` are Muon's input (reduction) and output axes,
    from the logical axes it was declared with; None for what AdamW keeps: vectors,
    the embedding table and output head (a "vocab" axis) and ADAMW_MATRICES.

    A projection reads "embed" and writes the rest (wq [L, D, N, H]: in D, out N*H), or
    reads the rest and writes "embed" (wo [L, N, H, D]: in N*H, out D). A MoE expert's
    model axis is declared None (kept unsharded for expert parallelism) and counts as
    "embed" here.
    """
    axes = ["embed" if a is None else a for a in var.get_metadata()["logical_axes"]]
    matrix = [i for i, a in enumerate(axes) if a not in BATCH_AXES]
    if len(matrix) < 2 or "vocab" in axes or name in ADAMW_MATRICES:
        return None
    if axes[matrix[-1]] == "embed":
        return MuonDimensionNumbers(reduction_axis=tuple(matrix[:-1]), output_axis=matrix[-1])
    return MuonDimensionNumbers(reduction_axis=matrix[0], output_axis=tuple(matrix[1:]))


def _map_variables(fn, tree):
    """fn(name, variable) over the Variables of a params-like tree (name: the last key)."""

    def visit(path, var):
        return fn(str(getattr(path[-1], "key", path[-1])), var)

    return jax.tree_util.tree_map_with_path(
        visit, tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def _muon_width_scale() -> optax.GradientTransformation:
    """Muon's per-matrix update scale sqrt(max(1, fan_out / fan_in)): an orthogonalised
    update has unit singular values, so a wide output gets a larger step (the rule of
    Keller Jordan's Muon; optax's default for `consistent_rms=None`, whose transform
    optax.contrib does not export)."""

    def scale(name, var):
        dims = muon_dimensions(name, var)
        u = var.get_value()
        if dims is None or isinstance(u, optax.MaskedNode):
            return var
        fan_in, fan_out = _axes_size(u, dims.reduction_axis), _axes_size(u, dims.output_axis)
        return var.replace(u * max(1.0, fan_out / fan_in) ** 0.5)

    def update(updates, state, params=None):
        del params
        return _map_variables(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _axes_size(x: jax.Array, axes: int | tuple[int, ...]) -> int:
    size = 1
    for a in (axes,) if isinstance(axes, int) else axes:
        size *= x.shape[a]
    return size


def _muon_labels(params):
    def label(name: str, var: nnx.Variable) -> nnx.Variable:
        return var.replace("muon" if muon_dimensions(name, var) is not None else "adamw")

    return _map_variables(label, params)


def _muon_dimension_numbers(params):
    """Muon's dimension numbers as optax.contrib.scale_by_muon takes them: the tree it is
    given with each Variable holding its MuonDimensionNumbers (None: not Muon's; leaves
    that optax.partition masked out of Muon's group stay masked)."""

    def dims(name: str, var: nnx.Variable) -> nnx.Variable:
        if isinstance(var.get_value(), optax.MaskedNode):
            return var
        return var.replace(muon_dimensions(name, var))

    return _map_variables(dims, params)


def _adamw(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(
        schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=weight_decay_mask,
    )


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = []
    if cfg.clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "adamw":
        chain.append(_adamw(cfg, schedule))
    else:
        muon_schedule = learning_rate_schedule(
            dataclasses.replace(cfg, lr=cfg.muon_lr), total_steps
        )
        muon = optax.chain(
            scale_by_muon(beta=cfg.muon_momentum, weight_dimension_numbers=_muon_dimension_numbers),
            _muon_width_scale(),
            # Decoupled decay, times the lr as optax.adamw does (every Muon matrix decays).
            optax.add_decayed_weights(cfg.weight_decay),
            optax.scale_by_learning_rate(muon_schedule),
        )
        chain.append(optax.partition({"muon": muon, "adamw": _adamw(cfg, schedule)}, _muon_labels))
    return optax.chain(*chain)
