"""Reward-model training (`data.format=reward`): Bradley-Terry on preference pairs.

The data are the preference task's (`{"chosen", "rejected"}` conversations, as
MiniMind's dpo.jsonl, or `{"prompt", "chosen", "rejected"}`), in the same [B, 2, T]
batches; the model needs a score head (model.score_head=true), whose weights start
at zero while everything else may come from any LM (train.init_from, an imported
Hugging Face model included). Steps and the loss: jaxlm.training.reward_model_steps.
Evaluation reports the held-out loss and pair accuracy (the share of pairs whose
chosen response scores higher; a tie counts half).
"""

from __future__ import annotations

from typing import Any

from jaxlm.errors import InputError
from jaxlm.training.reward_model_steps import (
    make_reward_model_eval_step,
    make_reward_model_step,
)
from jaxlm.training.steps import jit_eval_step, jit_train_step
from jaxlm.training.tasks.base import Steps, summed
from jaxlm.training.tasks.preference import PreferenceTask

STEP_METRICS = ("accuracy", "margin", "chosen_reward", "rejected_reward")


class RewardModelTask(PreferenceTask):
    """The preference task's data; its own model head, loss and numbers."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.model.score_head:
            raise InputError(
                "data.format=reward trains a reward model: set model.score_head=true "
                "(a scalar head on the transformer)"
            )

    reference_in_step = False  # no reference model: the pairs' rewards are its own
    precomputed_reference = False

    def frozen_params(self, params, log):
        return None

    def steps(self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
        cfg = self.cfg
        step = make_reward_model_step(
            graphdef,
            optimizer,
            schedule,
            center_weight=cfg.reward.center_weight,
            grad_accum=cfg.optim.grad_accum,
            spike_factor=cfg.optim.spike_factor,
            spike_warmup_steps=cfg.optim.spike_warmup_steps,
            views=views,
        )
        evaluate = jit_eval_step(
            make_reward_model_eval_step(
                graphdef, center_weight=cfg.reward.center_weight, views=views
            ),
            state_shardings,
            mesh,
            constants=0,
        )

        def eval_step(state, batch):
            return evaluate(state.params, state.frozen, batch)

        return Steps(jit_train_step(step, state_shardings, mesh), eval_step)

    def summarize(self, results: list[dict[str, Any]]) -> dict[str, float]:
        sums = summed(results)
        pairs = max(sums["pairs"], 1.0)
        return {
            "pairs": sums["pairs"],
            "loss": sums["loss_sum"] / pairs,
            "accuracy": (sums["correct"] + 0.5 * sums["ties"]) / pairs,
            "chosen_reward": sums["chosen_sum"] / pairs,
            "rejected_reward": sums["rejected_sum"] / pairs,
            "margin": sums["margin_sum"] / pairs,
            "reward_ties": sums["ties"] / pairs,
        }

    def eval_text(self, summary):
        return (
            f"loss {summary['loss']:.4f}, pair accuracy {summary['accuracy']:.4f} "
            f"({summary['reward_ties']:.0%} ties, counted half), margin "
            f"{summary['margin']:.3f} on {summary['pairs']:.0f} held-out pairs"
        )

    def step_metrics(self, metrics):
        return {k: float(metrics[k]) for k in STEP_METRICS}
