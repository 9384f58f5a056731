"""Preference optimisation (`data.format=preference`): DPO, IPO or SimPO, + NLL.

config.preference chooses the objective (jaxlm.training.preference_losses) on
`[B, 2, T]` chosen/rejected pairs. The reference the objective compares with is
    - none, for SimPO (reference-free);
    - a frozen copy of the starting params, run inside every step
      (preference.reference=model; with LoRA, the base model with adapters off);
    - a table of reference log-probs computed once before training
      (preference.reference=precomputed, jaxlm.training.reference_logps), which the
      pipeline attaches to each pair as `ref_logps`.
Evaluation reports the loss and the preference accuracy (the share of held-out pairs
whose implied reward ranks chosen first), under the same names the train records use.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxlm.data import posttrain_inputs
from jaxlm.errors import InputError
from jaxlm.training import epochs
from jaxlm.training.hosts import allgather_max, log
from jaxlm.training.preference_losses import ranking_accuracy
from jaxlm.training.preference_steps import make_preference_eval_step, make_preference_step
from jaxlm.training.reference_logps import reference_table
from jaxlm.training.steps import jit_eval_step, jit_train_step
from jaxlm.training.tasks.base import Steps, Task, summed

# The preference step's own numbers written in each `train` record (of the log
# window's last step); `accuracy` is the eval summary's name for the same ranking.
STEP_METRICS = (
    "accuracy",
    "margin",
    "chosen_reward",
    "rejected_reward",
    "chosen_logp",
    "rejected_logp",
)


class PreferenceTask(Task):
    rows_per_example: ClassVar[int] = 2  # both sides of a pair are trained positions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pipeline_extra: dict[str, Any] = {}  # what the pipeline attaches to each pair

    @property
    def reference_in_step(self) -> bool:
        """The frozen reference model runs in every step (SimPO needs none; precomputed
        reference log-probs come with the data)."""
        return self.cfg.preference.loss != "simpo" and self.cfg.preference.reference == "model"

    @property
    def precomputed_reference(self) -> bool:
        return self.cfg.preference.loss != "simpo" and self.cfg.preference.reference != "model"

    def frozen_params(self, params, log):
        if not self.reference_in_step:
            return None
        if not self.cfg.train.init_from:
            log(
                "warning: preference training without train.init_from: the reference is "
                "the randomly initialised model"
            )
        # A separate buffer: the state is donated to the step, and one buffer cannot
        # be donated twice.
        return jax.tree.map(lambda x: jnp.array(x, copy=True), params)

    def prepare(self, *, tokenizer, workdir, state, graphdef, views, mesh, batch_size):
        if self.precomputed_reference:  # `state` is still the starting model: the reference
            self.pipeline_extra["reference_logps"] = reference_table(
                self.cfg, tokenizer, workdir, state, graphdef, views, mesh, batch_size, log
            )

    def train_stream(self, tokenizer, process_index, process_count, batch_size):
        return posttrain_inputs.posttrain_train_stream(
            self.cfg,
            tokenizer,
            process_index,
            process_count,
            batch_size,
            pipeline=posttrain_inputs.pair_pipeline,
            **self.pipeline_extra,
        )

    def eval_batches(self, tokenizer, process_index, process_count, batch_size):
        cfg = self.cfg
        batches = posttrain_inputs.posttrain_eval_batches(
            cfg,
            tokenizer,
            process_index,
            process_count,
            batch_size,
            pipeline=posttrain_inputs.pair_pipeline,
            **self.pipeline_extra,
        )
        count = allgather_max(len(batches))
        if count == 0:
            raise InputError(f"{cfg.data.eval_sources or cfg.data.sources}: no held-out pairs")
        filler = posttrain_inputs.empty_pairs(
            batch_size,
            cfg.data.seq_len,
            tokenizer.pad_id,
            ref_logps="reference_logps" in self.pipeline_extra,
            think_loss_weight=cfg.data.think_loss_weight,
        )
        return batches + [filler] * (count - len(batches))

    def data_fingerprint(self, tokenizer_sha256):
        return posttrain_inputs.jsonl_fingerprint(self.cfg, tokenizer_sha256)

    def one_epoch(self, tokenizer):  # pairs alone: the reference log-probs do not count
        return epochs.posttrain_epoch(self.cfg, tokenizer, posttrain_inputs.pair_pipeline)

    def steps(self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
        cfg = self.cfg
        step = make_preference_step(
            graphdef,
            optimizer,
            schedule,
            cfg.preference,
            grad_accum=cfg.optim.grad_accum,
            spike_factor=cfg.optim.spike_factor,
            spike_warmup_steps=cfg.optim.spike_warmup_steps,
            views=views,
        )
        evaluate = jit_eval_step(
            make_preference_eval_step(graphdef, cfg.preference, views),
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
        out = {"pairs": sums["pairs"]}
        for key, value in sums.items():
            if key.endswith("_sum"):
                out[key[: -len("_sum")]] = value / pairs
        # implied-reward ranking, a tie counting half (preference_losses.ranking_accuracy)
        out["accuracy"] = ranking_accuracy(sums["correct"], sums["ties"], pairs)
        out["reward_ties"] = sums["ties"] / pairs
        out["logp_accuracy"] = sums["logp_correct"] / pairs  # reference-free ranking
        return out

    def eval_text(self, summary):
        return (
            f"loss {summary['loss']:.4f}, preference accuracy {summary['accuracy']:.4f}"
            f" ({summary['reward_ties']:.0%} ties, counted half), log-prob ranking accuracy"
            f" {summary['logp_accuracy']:.4f} (reference-free)"
        )

    def step_metrics(self, metrics):
        return {k: float(metrics[k]) for k in STEP_METRICS}
