"""Pure train and eval steps for preference optimisation (DPO, IPO, SimPO, + NLL).

A preference batch is the batch schema of jaxlm.data.packing with a choice axis,
`[B, 2, T]` (choice 0 = chosen, 1 = rejected), optionally with `ref_logps` `[B, 2]`:
the reference model's summed response log-probs, precomputed by
`make_reference_logps`. The policy runs on both choices at once, as `[2B, T]` rows.

The reference log-probs come, in this order of preference, from
  - nowhere, for SimPO (reference-free);
  - `batch["ref_logps"]` when the batch carries them (preference.reference=precomputed);
  - the reference model, `views.reference(params, frozen)`, run inside the step.
They are constants of the step: computed outside the differentiated function and
under `stop_gradient`, so no gradient of the reference is ever traced, and the
frozen params are returned untouched.

Like `steps.make_lm_step`, gradient accumulation (the shared `steps.accumulate`)
scans micro-batches, summing the *unnormalised* per-pair losses and their gradients,
and the step divides once by the number of valid pairs in the whole batch; a step
with a non-finite loss, gradient or update, with no valid pair, or (with
spike_factor > 0) with a loss spike leaves params and optimizer state bitwise
unchanged and does not advance the step counter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.config import PreferenceConfig
from jaxlm.sharding import constrain
from jaxlm.training.losses import safe_mean
from jaxlm.training.param_views import FULL, ParamViews, States
from jaxlm.training.preference_losses import METRIC_SUMS, Sums, preference_loss, sequence_logps
from jaxlm.training.state import TrainState
from jaxlm.training.steps import accumulate, forward, guarded_update

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# The [B, 2, T] features the model reads; anything else (ref_logps) is per pair.
_MODEL_KEYS = ("tokens", "targets", "loss_mask", "positions", "segment_ids")


def pair_logps(graphdef: nnx.GraphDef, states: States, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Summed response log-probs and supervised token counts, both [B, 2] float32."""
    B, C, T = batch["tokens"].shape
    # Rows (b, c) -> b * 2 + c: each device's contiguous block of pairs stays its own.
    rows = {k: constrain(batch[k].reshape(B * C, T), "act_batch", None) for k in _MODEL_KEYS}
    logits_BTV = forward(graphdef, states, rows)
    logp, num_tokens = sequence_logps(logits_BTV, rows["targets"], rows["loss_mask"])
    return logp.reshape(B, C), num_tokens.reshape(B, C)


def reference_logps(
    graphdef: nnx.GraphDef,
    cfg: PreferenceConfig,
    views: ParamViews,
    params: Any,
    frozen: Any,
    batch: Batch,
) -> jax.Array | None:
    """The reference's [B, 2] log-probs as constants, or None for SimPO."""
    if cfg.loss == "simpo":
        return None
    if "ref_logps" in batch:
        return jax.lax.stop_gradient(batch["ref_logps"].astype(jnp.float32))
    return _model_reference_logps(graphdef, views, params, frozen, batch)


def _model_reference_logps(
    graphdef: nnx.GraphDef, views: ParamViews, params: Any, frozen: Any, batch: Batch
) -> jax.Array:
    states = views.reference(params, frozen)
    if states is None:
        raise ValueError(
            "this preference loss needs a reference: frozen reference params in the "
            "TrainState, or precomputed batch['ref_logps']"
        )
    logp, _ = pair_logps(graphdef, jax.lax.stop_gradient(states), batch)
    return jax.lax.stop_gradient(logp)


def pair_loss_sums(
    graphdef: nnx.GraphDef,
    cfg: PreferenceConfig,
    policy_states: States,
    batch: Batch,
    ref_logps: jax.Array | None,
) -> tuple[jax.Array, Sums]:
    """(summed loss over valid pairs, metric sums) for one [B, 2, T] (micro-)batch."""
    logp, num_tokens = pair_logps(graphdef, policy_states, batch)
    ref_c, ref_r = (None, None) if ref_logps is None else (ref_logps[:, 0], ref_logps[:, 1])
    return preference_loss(
        cfg, logp[:, 0], logp[:, 1], ref_c, ref_r, num_tokens[:, 0], num_tokens[:, 1]
    )


def _zero_sums() -> Sums:
    return {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", *METRIC_SUMS)}


def accumulated_pair_grads(
    graphdef: nnx.GraphDef,
    cfg: PreferenceConfig,
    views: ParamViews,
    params: Any,
    frozen: Any,
    batch: Batch,
    *,
    grad_accum: int,
) -> tuple[Sums, Any]:
    """Sums (loss_sum + METRIC_SUMS) and the gradient of loss_sum w.r.t. `params`."""

    def objective(p, b, ref):
        loss_sum, sums = pair_loss_sums(graphdef, cfg, views.policy(p, frozen), b, ref)
        return loss_sum, {"loss_sum": loss_sum, **sums}

    grad_fn = jax.grad(objective, has_aux=True)

    def sums_and_grads(b):
        # Outside grad_fn: the reference forward pass is never differentiated.
        ref = reference_logps(graphdef, cfg, views, params, frozen, b)
        grads, sums = grad_fn(params, b, ref)
        return sums, grads

    def zeros():
        return _zero_sums(), jax.tree.map(jnp.zeros_like, params)

    return accumulate(sums_and_grads, batch, grad_accum=grad_accum, zeros=zeros)


def _means(sums: Sums) -> Metrics:
    """Per-pair averages of the metric sums (0 when there were no valid pairs)."""
    pairs = sums["pairs"]
    return {
        "loss": safe_mean(sums["loss_sum"], pairs),
        # The share of pairs whose implied reward ranks chosen first (a tie counts half);
        # the eval summary (jaxlm.training.tasks.preference) reports it under this name.
        "accuracy": safe_mean(sums["correct"] + 0.5 * sums["ties"], pairs),
        "chosen_reward": safe_mean(sums["chosen_reward_sum"], pairs),
        "rejected_reward": safe_mean(sums["rejected_reward_sum"], pairs),
        "margin": safe_mean(sums["margin_sum"], pairs),
        "chosen_logp": safe_mean(sums["chosen_logp_sum"], pairs),
        "rejected_logp": safe_mean(sums["rejected_logp_sum"], pairs),
        "nll": safe_mean(sums["nll_sum"], pairs),
        "pairs": pairs,
    }


def make_preference_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: PreferenceConfig,
    *,
    grad_accum: int = 1,
    spike_factor: float = 0.0,
    spike_warmup_steps: int = 100,
    loss_ema_decay: float = 0.99,
    views: ParamViews = FULL,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build the pure preference train step: (state, [B, 2, T] batch) -> (state, metrics).

    Loss = mean over the batch's valid pairs of cfg's per-pair objective. The spike
    arguments behave exactly as in `steps.make_lm_step` (off by default).
    """

    def preference_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        sums, grads = accumulated_pair_grads(
            graphdef, cfg, views, state.params, state.frozen, batch, grad_accum=grad_accum
        )
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["pairs"], 1.0), grads)
        grad_norm = optax.tree.norm(grads)
        means = _means(sums)
        loss = means["loss"]
        new_state, flags = guarded_update(
            state,
            grads,
            optimizer,
            loss,
            finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            has_data=sums["pairs"] > 0,  # nothing to compare (a batch of filler pairs)
            spike_factor=spike_factor,
            spike_warmup_steps=spike_warmup_steps,
            loss_ema_decay=loss_ema_decay,
        )
        metrics = {
            **means,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            **flags,
        }
        return new_state, metrics

    return preference_step


def make_preference_eval_step(
    graphdef: nnx.GraphDef, cfg: PreferenceConfig, views: ParamViews = FULL
) -> Callable[[Any, Any, Batch], Sums]:
    """eval_step(params, frozen, batch) -> sums to add over batches, then divide by pairs.

    Keys: loss_sum and METRIC_SUMS (pairs, correct, ties, chosen_reward_sum, ...).
    Preference accuracy = (correct + ties / 2) / pairs.
    """

    def eval_step(params: Any, frozen: Any, batch: Batch) -> Sums:
        ref = reference_logps(graphdef, cfg, views, params, frozen, batch)
        loss_sum, sums = pair_loss_sums(graphdef, cfg, views.policy(params, frozen), batch, ref)
        return {"loss_sum": loss_sum, **sums}

    return eval_step


def make_reference_logps(
    graphdef: nnx.GraphDef, views: ParamViews = FULL
) -> Callable[[Any, Any, Batch], jax.Array]:
    """fn(params, frozen, [B, 2, T] batch) -> the reference's summed response log-probs
    [B, 2] (float32), to store as `batch["ref_logps"]` (preference.reference=precomputed).
    """

    def ref_logps(params: Any, frozen: Any, batch: Batch) -> jax.Array:
        return _model_reference_logps(graphdef, views, params, frozen, batch)

    return ref_logps
