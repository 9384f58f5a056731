"""The end of a run: last save, final evaluation, the report, the summary record.

A preempted run only waits for its save (in a grace period before SIGKILL nothing
else matters); a finished one also evaluates (if its last step's eval did not run,
e.g. resumed at the last step), adds its Task's extras (the gzip baseline of a text
run), draws the loss curve and writes a greedy completion of train.generate_prompt.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from jaxlm.analysis.expert_load import plot_expert_load
from jaxlm.analysis.plotting import plot_loss_curves
from jaxlm.data.packing import document_prefix
from jaxlm.inference.decode import Generator
from jaxlm.training.hosts import barrier


@dataclasses.dataclass
class RunResult:
    """What a finished run produced, for the CLI to print and tests to check."""

    workdir: Path
    steps: int
    final_eval: dict[str, float]
    artefacts: dict[str, Path]
    # gzip -9 on the held-out text, for comparison with bits_per_byte; None when it
    # means nothing for the run, and `gzip_note` says why (for the report).
    gzip_bits_per_byte: float | None = None
    gzip_note: str = ""
    # Beside gzip: bz2_bits_per_byte and xz_bits_per_byte on the same text (or empty).
    compressors: dict[str, float] = dataclasses.field(default_factory=dict)
    prompt: str = ""
    completion: str = ""
    wall_seconds: float = 0.0
    train_losses: list[float] = dataclasses.field(default_factory=list)
    preempted: bool = False  # stopped by SIGTERM/SIGINT after saving `steps`
    timing: dict[str, float] = dataclasses.field(default_factory=dict)  # goodput.py summary
    data_counts: dict[str, int] = dataclasses.field(default_factory=dict)  # DataTotals
    epochs: float = 0.0  # train.epochs, when the run's length was given so
    epoch_sequences: int = 0  # packed sequences in one epoch (jaxlm.training.epochs)


def finish(run, loop) -> RunResult:
    """Called inside the loop's signal and watchdog scope, right after the last step."""
    loop.watchdog.expect("the end of the run (last save, evaluation, generation)", loop.long_budget)
    with loop.ledger.phase("checkpoint"):
        run.checkpointer.wait()
        run.checkpointer.close()
    result = RunResult(
        workdir=run.workdir,
        steps=run.start_step + len(loop.train_losses),
        final_eval=loop.final_eval or {},
        artefacts={
            "config": run.workdir / "config.json",
            "tokenizer": run.tokenizer.path,
            "metrics": run.writer.path,
            "tensorboard": run.writer.tensorboard_dir,
            "checkpoints": run.checkpointer.directory,
        },
        train_losses=loop.train_losses,
        preempted=loop.preempted,
        epochs=run.cfg.train.epochs,
        epoch_sequences=run.epoch_sequences,
    )
    if not loop.preempted:  # in a grace period before SIGKILL, only the save matters
        if loop.final_eval is None:  # resumed at the last step: nothing ran, evaluate anyway
            with loop.ledger.phase("eval"):
                result.final_eval = loop.evaluate(run.total_steps)
        _report_extras(run, loop.state, result)
    barrier("jaxlm_run_end")  # healthy processes reach JAX's shutdown barrier together
    loop.ledger.lap("finish")
    return result


def _report_extras(run, state, result: RunResult) -> None:
    """End-of-run extras: the task's (gzip baseline), loss plot, a greedy completion."""
    cfg, tokenizer = run.cfg, run.tokenizer
    run.task.finish(result)
    if jax.process_index() == 0:
        png = result.workdir / "loss_curve.png"
        plot_loss_curves([run.writer.path], png, labels=[cfg.name])
        result.artefacts["loss_curve"] = png
        if cfg.model.moe:  # each layer's expert shares over training
            load_png = plot_expert_load(run.writer.path, result.workdir / "expert_load.png")
            if load_png is not None:
                result.artefacts["expert_load"] = load_png
    if cfg.train.generate_prompt:
        # A sample of what the model learnt, never a reason to fail the run: the prompt
        # keeps its end and the completion is cut to fit model.max_seq_len.
        limit = cfg.model.max_seq_len
        prompt = [*document_prefix(tokenizer), *tokenizer.encode(cfg.train.generate_prompt)]
        prompt = prompt[-(limit - 1) :]
        model_params = run.start.views.policy(state.params, state.frozen)
        out = Generator(cfg.model, run.start.graphdef, model_params).generate(
            [prompt],
            max_new_tokens=min(cfg.train.generate_tokens, limit - len(prompt)),
            stop_ids=[tokenizer.eos_id],
        )
        result.prompt = cfg.train.generate_prompt
        result.completion = tokenizer.decode(out.tokens[0])


def _epoch_record(result: RunResult) -> dict[str, float]:
    """train.epochs and what one epoch holds, for a run whose length was given so."""
    if not result.epochs:
        return {}
    return {"epochs": result.epochs, "epoch_sequences": result.epoch_sequences}


def write_summary(run, loop, result: RunResult) -> None:
    """The run's `summary` record (after the signal scope: timing covers it all)."""
    result.timing = loop.ledger.summary()
    result.wall_seconds = result.timing["wall_s"]
    result.data_counts = run.data_totals.as_dict()
    # JSON has no NaN: a baseline that means nothing for this run is left out.
    gzip = (
        {}
        if result.gzip_bits_per_byte is None
        else {"gzip_bits_per_byte": result.gzip_bits_per_byte, **result.compressors}
    )
    fractions = loop.real_fractions
    run.writer.write(
        result.steps,
        "summary",
        {
            **result.timing,
            "steps": result.steps,
            "preempted": int(result.preempted),
            **_epoch_record(result),
            **loop.skips.run,  # steps of this run (not of earlier, resumed-from runs) not applied
            "real_token_fraction": float(np.mean(fractions)) if fractions else 0.0,
            **{f"data_{k}": v for k, v in run.data_totals.as_dict().items()},
            **gzip,
            **{f"eval_{k}": v for k, v in result.final_eval.items()},
        },
    )
    run.writer.close()
