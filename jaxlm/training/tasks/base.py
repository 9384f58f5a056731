"""The Task: everything about a run that depends on what it optimises.

The loop (jaxlm.training.loop) owns what every run has: mesh, model and optimizer,
checkpoints, metrics, signals. It asks the run's Task for the rest, and never looks
at `data.format` itself:

    trains_tokenizer      may the run train its own tokenizer (pretraining on text)
    updates_per_step      optimizer updates per loop step (1; RL: epochs x minibatches)
    rows_per_example      trained sequences per example (2 for a preference pair)
    frozen_params         the frozen part of the state beside the trained params
                          (a reference model's copy), or None; adapters' frozen base
                          comes with the LoRA state whatever the task
    prepare               once, before any checkpoint is restored: precomputed tables
                          (the reference log-probs of every pair)
    train_stream          this process's endless, checkpointable batches
    one_epoch             the training data once, as batches (train.epochs counts it)
    eval_batches          every held-out example once, equal batch counts on all hosts
    data_fingerprint      what the stream reads, for a resume to check
    steps                 the jitted train and eval steps (built in jaxlm.training.steps)
    summarize, eval_text  the eval step's sums -> reported numbers -> the log line
    step_metrics          the train step's own numbers in each `train` record
    finish                end-of-run extras of the report (the gzip baseline)

To add an objective (a reward model, GRPO, distillation): write one file in this
package with a Task subclass, and add its `data.format` name to the registry in
jaxlm/training/tasks/__init__.py (and to DataConfig.format's choices).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from jaxlm.config import Config


@dataclasses.dataclass
class Steps:
    train_step: Callable  # (state, global batch) -> (state, metrics); state donated
    eval_step: Callable  # (state, global batch) -> dict of sums (device arrays)


class Task:
    """One objective. Subclasses fill in the data, steps and reports of their runs."""

    trains_tokenizer: ClassVar[bool] = False
    rows_per_example: ClassVar[int] = 1
    # The EvalSource format `jaxlm eval` scores this run's held-out data as (None:
    # the held-out examples have no single per-token loss).
    token_eval_format: ClassVar[str | None] = None

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.tokenizer = None  # the run's, bound by setup before the steps are built
        # Optimizer updates one loop step makes (RL: epochs x minibatches per rollout);
        # the learning-rate schedule spans train.steps x this many updates.
        self.updates_per_step = 1
        # Loop steps of the run (train.steps, or what train.epochs comes to: setup sets
        # it before `prepare`, for tables computed over the whole run).
        self.total_steps = cfg.train.steps

    def bind_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def frozen_params(self, params: Any, log: Callable[[str], None]) -> Any | None:
        return None

    def prepare(self, *, tokenizer, workdir, state, graphdef, views, mesh, batch_size) -> None:
        """Compute what the run needs before it starts (nothing, by default)."""

    def train_stream(self, tokenizer, process_index: int, process_count: int, batch_size: int):
        raise NotImplementedError

    def eval_batches(
        self, tokenizer, process_index: int, process_count: int, batch_size: int
    ) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def one_epoch(self, tokenizer):
        """Every training example once, batched (jaxlm.training.epochs counts them)."""
        raise NotImplementedError

    def data_fingerprint(self, tokenizer_sha256: str) -> dict[str, Any]:
        raise NotImplementedError

    def steps(
        self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes
    ) -> Steps:
        raise NotImplementedError

    def summarize(self, results: list[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def eval_text(self, summary: dict[str, float]) -> str:
        raise NotImplementedError

    def step_metrics(self, metrics: dict[str, Any]) -> dict[str, float]:
        return {}

    def finish(self, result) -> None:
        """Add end-of-run numbers to the RunResult (nothing, by default)."""


def summed(results: list[dict[str, Any]]) -> dict[str, float]:
    """Eval step outputs added over batches, as Python floats."""
    return {k: float(sum(float(r[k]) for r in results)) for k in results[0]}
