"""Pure train and eval steps of knowledge distillation (jaxlm.training.tasks.distill).

The step trains alpha · CE + (1 - alpha) · τ² · D(teacher, student) on the supervised
tokens (jaxlm.training.distill_losses). The teacher is either

    online    its params are an argument of the jitted step, sharded over the mesh by
              the same logical-axis rules as the student's; it runs forward on the
              same batch inside the step (no host round trip), under stop_gradient,
              so nothing of it trains; or
    offline   the batch carries its top-k ids and log-probs (+ tail) for every
              position (`teacher_ids` [B, T, K], `teacher_logps` [B, T, K + 1],
              jaxlm.training.teacher_topk).

Micro-batches, skipped updates and metrics follow the next-token step
(jaxlm.training.steps): sums over tokens, divided once by the global count.
Metrics: `loss` is the student's next-token CE (comparable with runs without a
teacher), `divergence` the mean D per token, `distill_loss` the objective trained.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.config import DistillConfig
from jaxlm.training.distill_losses import (
    DistillSums,
    distill_sums,
    divergence,
    log_probs,
    objective,
)
from jaxlm.training.losses import safe_mean, token_nll
from jaxlm.training.param_views import FULL, ParamViews
from jaxlm.training.state import TrainState
from jaxlm.training.steps import Batch, Metrics, accumulate, forward, token_mean_update


def batch_distill_sums(
    graphdef: nnx.GraphDef,
    params,
    batch: Batch,
    dcfg: DistillConfig,
    teacher_graphdef: nnx.GraphDef | None,
    teacher_params,
) -> DistillSums:
    """The sums of one (micro-)batch; `params` as steps.forward takes them."""
    logits = forward(graphdef, params, batch)
    common = dict(kind=dcfg.loss, temperature=dcfg.temperature, beta=dcfg.beta)
    if teacher_graphdef is not None:
        teacher = jax.lax.stop_gradient(forward(teacher_graphdef, teacher_params, batch))
        return distill_sums(
            logits, batch["targets"], batch["loss_mask"], teacher_logits_BTV=teacher, **common
        )
    return distill_sums(
        logits,
        batch["targets"],
        batch["loss_mask"],
        teacher_ids_BTK=batch["teacher_ids"],
        teacher_logp_BTK1=batch["teacher_logps"],
        **common,
    )


def make_distill_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    dcfg: DistillConfig,
    *,
    teacher_graphdef: nnx.GraphDef | None = None,
    grad_accum: int = 1,
    z_loss: float = 0.0,
    spike_factor: float = 0.0,
    spike_warmup_steps: int = 100,
    loss_ema_decay: float = 0.99,
    views: ParamViews = FULL,
) -> Callable[[TrainState, Batch, object], tuple[TrainState, Metrics]]:
    """step(state, batch, teacher_params) -> (state, metrics); `teacher_graphdef` None:
    offline (the batch brings the teacher's top-k, and teacher_params is ignored)."""
    alpha, tau = dcfg.alpha, dcfg.temperature

    def step(state: TrainState, batch: Batch, teacher_params) -> tuple[TrainState, Metrics]:
        def micro_objective(p, b):
            sums = batch_distill_sums(
                graphdef, views.policy(p, state.frozen), b, dcfg, teacher_graphdef, teacher_params
            )
            return objective(sums, alpha=alpha, temperature=tau) + z_loss * sums.z, sums

        grad_fn = jax.grad(micro_objective, has_aux=True)

        def sums_and_grads(b):
            grads, sums = grad_fn(state.params, b)
            return sums, grads

        def zeros():
            sums = DistillSums(*(jnp.zeros((), jnp.float32) for _ in DistillSums._fields))
            return sums, jax.tree.map(jnp.zeros_like, state.params)

        sums, grads = accumulate(sums_and_grads, batch, grad_accum=grad_accum, zeros=zeros)
        new_state, metrics = token_mean_update(
            state,
            grads,
            optimizer,
            objective_sum=objective(sums, alpha=alpha, temperature=tau),
            z_sum=sums.z,
            num_tokens=sums.num_tokens,
            spike_factor=spike_factor,
            spike_warmup_steps=spike_warmup_steps,
            loss_ema_decay=loss_ema_decay,
        )
        metrics = {
            **metrics,
            "loss": safe_mean(sums.nll, sums.num_tokens),  # the student's own CE
            "distill_loss": metrics["loss"],  # what was trained (and spike-guarded)
            "divergence": safe_mean(sums.divergence, sums.num_tokens),
            "lr": schedule(state.step),
        }
        return new_state, metrics

    return step


def make_teacher_eval_step(
    graphdef: nnx.GraphDef, teacher_graphdef: nnx.GraphDef, dcfg: DistillConfig, views=FULL
) -> Callable[..., Metrics]:
    """eval(params, frozen, batch, token_bytes, teacher_params) -> the next-token eval's
    sums (steps.make_eval_step) + the divergence and the teacher's own NLL, so the
    report sets the student's bits per byte beside the teacher's."""

    def eval_step(params, frozen, batch: Batch, token_bytes_V, teacher_params) -> Metrics:
        logits = forward(graphdef, views.policy(params, frozen), batch)
        teacher_logits = forward(teacher_graphdef, teacher_params, batch)
        targets, tau = batch["targets"], dcfg.temperature
        nll, _ = token_nll(logits, targets)
        teacher_nll, _ = token_nll(teacher_logits, targets)
        div = divergence(
            log_probs(teacher_logits, tau), log_probs(logits, tau), dcfg.loss, dcfg.beta
        )
        target_bytes = jnp.take(token_bytes_V, targets, axis=0).astype(jnp.float32)
        # Every sum in one stacked reduction: one cross-device sum per batch.
        per_token = jnp.stack([nll, div, teacher_nll, target_bytes, jnp.ones_like(nll)])
        sums = jnp.sum(per_token * batch["loss_mask"].astype(jnp.float32), axis=(1, 2))
        return dict(
            zip(("nll", "divergence", "teacher_nll", "num_bytes", "num_tokens"), sums, strict=True)
        )

    return eval_step
