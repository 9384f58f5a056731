"""Pure steps of reward-model training (Bradley-Terry on preference pairs), and the
sequence scorer RL uses.

A reward model is the transformer with a score head (model.score_head;
Transformer.scores). A response's reward is the score at the position whose input is
the response's last token (its end token included), i.e. after the model has read
the whole prompt and response: in the batch schema, one past the last position with
loss_mask > 0 (that position's *target* is the last response token).

Per valid pair (both sides have a response), with r_c, r_r the chosen and rejected
rewards and σ the logistic function:

    loss = -log σ(r_c - r_r)  +  w · (r_c + r_r)²

the Bradley-Terry negative log-likelihood (as InstructGPT's reward model, Ouyang et
al. 2022) plus, with reward.center_weight = w > 0, reward centering (Eisenstein et
al. 2023, "Helping or Herding?"), which pins the unidentified offset of the rewards
near 0. Sums over valid pairs, divided once by their number (like every step here:
micro-batches and hosts add up exactly); filler pairs count for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.sharding import constrain
from jaxlm.training.losses import safe_mean
from jaxlm.training.param_views import FULL, ParamViews
from jaxlm.training.state import TrainState
from jaxlm.training.steps import accumulate, guarded_update

Batch = dict[str, jax.Array]
Sums = dict[str, jax.Array]

_MODEL_KEYS = ("tokens", "positions", "segment_ids", "loss_mask")
SUM_KEYS = ("loss_sum", "pairs", "correct", "ties", "chosen_sum", "rejected_sum", "margin_sum")


def sequence_scores(
    graphdef: nnx.GraphDef, states, tokens_BT, positions_BT, segment_ids_BT, last_B
) -> jax.Array:
    """Score [B] of each row at index last_B (float32): the reward of a sequence whose
    last token sits at last_B."""
    model = nnx.merge(graphdef, *(states if isinstance(states, tuple) else (states,)))
    scores_BT = model.scores(tokens_BT, positions=positions_BT, segment_ids=segment_ids_BT)
    return jnp.take_along_axis(scores_BT, last_B[:, None], axis=1)[:, 0]


def response_end(loss_mask_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(index of the response's last token [B], whether the row has a response [B])."""
    T = loss_mask_BT.shape[1]
    supervised_BT = loss_mask_BT > 0
    last_target_B = T - 1 - jnp.argmax(supervised_BT[:, ::-1], axis=1)
    return jnp.minimum(last_target_B + 1, T - 1), supervised_BT.any(axis=1)


def pair_rewards(graphdef: nnx.GraphDef, states, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Rewards [B, 2] (chosen, rejected) and valid pairs [B] of a [B, 2, T] batch."""
    B, C, T = batch["tokens"].shape
    rows = {k: constrain(batch[k].reshape(B * C, T), "act_batch", None) for k in _MODEL_KEYS}
    last, has = response_end(rows["loss_mask"])
    scores = sequence_scores(
        graphdef, states, rows["tokens"], rows["positions"], rows["segment_ids"], last
    )
    return scores.reshape(B, C), has.reshape(B, C).all(axis=1)


def bradley_terry_sums(rewards_B2: jax.Array, valid_B: jax.Array, center_weight: float) -> Sums:
    """Summed loss and metrics over the valid pairs (see the module docstring)."""
    v = valid_B.astype(jnp.float32)
    chosen, rejected = rewards_B2[:, 0], rewards_B2[:, 1]
    margin = chosen - rejected
    loss = -jax.nn.log_sigmoid(margin) + center_weight * jnp.square(chosen + rejected)
    return {
        "loss_sum": jnp.sum(v * loss),
        "pairs": v.sum(),
        "correct": jnp.sum(v * (margin > 0)),
        "ties": jnp.sum(v * (margin == 0)),
        "chosen_sum": jnp.sum(v * chosen),
        "rejected_sum": jnp.sum(v * rejected),
        "margin_sum": jnp.sum(v * margin),
    }


def _zero_sums() -> Sums:
    return {k: jnp.zeros((), jnp.float32) for k in SUM_KEYS}


def make_reward_model_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    center_weight: float = 0.0,
    grad_accum: int = 1,
    spike_factor: float = 0.0,
    spike_warmup_steps: int = 100,
    views: ParamViews = FULL,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure train step: (state, [B, 2, T] pairs) -> (state, metrics)."""

    def objective(p, frozen, b):
        rewards, valid = pair_rewards(graphdef, views.policy(p, frozen), b)
        sums = bradley_terry_sums(rewards, valid, center_weight)
        return sums["loss_sum"], sums

    grad_fn = jax.grad(objective, has_aux=True)

    def step(state: TrainState, batch: Batch):
        def sums_and_grads(b):
            grads, sums = grad_fn(state.params, state.frozen, b)
            return sums, grads

        def zeros():
            return _zero_sums(), jax.tree.map(jnp.zeros_like, state.params)

        sums, grads = accumulate(sums_and_grads, batch, grad_accum=grad_accum, zeros=zeros)
        pairs = sums["pairs"]
        grads = jax.tree.map(lambda g: g / jnp.maximum(pairs, 1.0), grads)
        grad_norm = optax.tree.norm(grads)
        loss = safe_mean(sums["loss_sum"], pairs)
        new_state, flags = guarded_update(
            state,
            grads,
            optimizer,
            loss,
            finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            has_data=pairs > 0,
            spike_factor=spike_factor,
            spike_warmup_steps=spike_warmup_steps,
            loss_ema_decay=0.99,
        )
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            **pair_means(sums),
            **flags,
        }
        return new_state, metrics

    return step


def pair_means(sums: Sums) -> dict[str, jax.Array]:
    pairs = sums["pairs"]
    return {
        # ranked chosen first; a tie counts half (a coin flip's expectation)
        "accuracy": safe_mean(sums["correct"] + 0.5 * sums["ties"], pairs),
        "chosen_reward": safe_mean(sums["chosen_sum"], pairs),
        "rejected_reward": safe_mean(sums["rejected_sum"], pairs),
        "margin": safe_mean(sums["margin_sum"], pairs),
    }


def make_reward_model_eval_step(
    graphdef: nnx.GraphDef, *, center_weight: float = 0.0, views: ParamViews = FULL
) -> Callable[[Any, Any, Batch], Sums]:
    """eval_step(params, frozen, batch) -> SUM_KEYS sums to add over batches."""

    def eval_step(params, frozen, batch: Batch) -> Sums:
        rewards, valid = pair_rewards(graphdef, views.policy(params, frozen), batch)
        return bradley_terry_sums(rewards, valid, center_weight)

    return eval_step
