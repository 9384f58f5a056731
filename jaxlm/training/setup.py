"""A run's setup: everything `train()` builds before its first step.

The state a run starts from (what trains, what stays frozen, and their shardings):

    pretraining / SFT       params = the model; frozen = None
    preference (full FT)    params = the policy; frozen = a copy of the starting params,
                            the reference model (same shardings as the policy)
    LoRA (any objective)    params = the adapters; frozen = the base model, which is
                            also the reference (adapters off): no second copy

`train.init_from` gives the starting params (a params export or a workdir); the
optimizer always starts fresh. A resumed run then overwrites all of this with its
checkpoint, which holds `frozen` too, so resuming needs nothing but the workdir.

Order, kept on purpose: the run's Task prepares its tables (reference log-probs from
the *starting* model) before any checkpoint is restored; the workdir's config.json
(read by `jaxlm compare` and `scaling-fit`) is written only once the run is accepted,
after the resume checks, so a refused resume leaves the workdir as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxlm.checkpointing.manager import Checkpointer, abstract_like, from_jsonable
from jaxlm.checkpointing.params_io import load_init_params, saved_score_head
from jaxlm.checkpointing.resume_rules import check_resume_config
from jaxlm.config import Config
from jaxlm.data import run_inputs
from jaxlm.data.counters import DataTotals
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.models.flops import device_peak_flops, flops_per_token, measure_cpu_matmul_flops
from jaxlm.models.params import abstract_model
from jaxlm.runtime import compilation_cache, distributed
from jaxlm.sharding import training_mesh
from jaxlm.training.adapters import initial_lora_state
from jaxlm.training.epochs import epoch_steps
from jaxlm.training.hosts import barrier, log
from jaxlm.training.metrics import MetricsWriter
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.param_views import FULL, ParamViews
from jaxlm.training.state import TrainState, create_train_state
from jaxlm.training.tasks import Steps, Task, task_for


@dataclasses.dataclass
class RunState:
    state: TrainState
    shardings: TrainState  # a NamedSharding per leaf of `state`
    graphdef: nnx.GraphDef
    views: ParamViews


def initial_state(
    cfg: Config, task: Task, optimizer, mesh: Mesh, key: jax.Array, *, log: Callable[[str], None]
) -> RunState:
    if cfg.model.lora_rank > 0:
        return RunState(*initial_lora_state(cfg, optimizer, mesh, key, log=log))
    state, shardings = create_train_state(cfg.model, optimizer, mesh, key)
    if cfg.train.init_from:
        state = state.replace(params=init_params_from(cfg, shardings.params, log, state.params))
    graphdef, _ = abstract_model(cfg.model)
    frozen = task.frozen_params(state.params, log)
    if frozen is not None:
        state = state.replace(frozen=frozen)
        shardings = shardings.replace(frozen=shardings.params)
    return RunState(state, shardings, graphdef, FULL)


def init_params_from(cfg: Config, shardings: Any, log: Callable[[str], None], fresh=None):
    """Params from `train.init_from` (a params directory, or a workdir's newest good
    checkpoint; see jaxlm.checkpointing.params_io.load_init_params), placed with `shardings`.

    A model with a score head (a reward model, a critic) starts from a plain LM's
    weights: everything but `score`, which keeps its fresh value from `fresh`.
    """
    source_path = cfg.train.init_from
    if cfg.model.score_head and not saved_score_head(source_path):
        plain = dataclasses.replace(cfg.model, score_head=False)
        lm_shardings = nnx.filter_state(shardings, lambda path, _: path[0] != "score")
        params, source = load_init_params(source_path, plain, shardings=lm_shardings)
        log(f"params initialised from {source}; the score head starts at zero")
        head = nnx.filter_state(fresh, lambda path, _: path[0] == "score")
        return nnx.merge_state(params, head)
    params, source = load_init_params(source_path, cfg.model, shardings=shardings)
    log(f"params initialised from {source}")
    return params


@dataclasses.dataclass
class Run:
    """What the loop needs, built by `setup`; `state` is the only field it replaces."""

    cfg: Config
    workdir: Path
    mesh: Mesh
    tokenizer: Tokenizer
    task: Task
    start: RunState  # graphdef, views and shardings of the state
    state: TrainState  # the starting or restored state
    steps: Steps
    train_iter: Any  # checkpointable: get_state / set_state
    fingerprint: dict[str, Any]
    data_totals: DataTotals
    checkpointer: Checkpointer
    start_step: int
    writer: MetricsWriter
    val_batches: list[dict[str, Any]]
    tokens_per_step: int  # trained positions (both sides of a preference pair)
    flops_per_token: float
    peak_flops: float
    total_steps: int  # train.steps, or what train.epochs comes to (jaxlm.training.epochs)
    epoch_sequences: int = 0  # packed sequences in one epoch, when train.epochs is set


def setup(cfg: Config, workdir: Path) -> Run:
    compilation_cache.enable()  # a no-op when an entry point did it, or the user chose
    distributed.maybe_initialize()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = training_mesh(cfg)
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.default_backend()} devices")
    task = task_for(cfg)
    tokenizer = run_inputs.ensure_tokenizer(
        cfg,
        workdir,
        log=log,
        is_leader=jax.process_index() == 0,
        barrier=barrier,
        may_train=task.trains_tokenizer,
    )

    task.bind_tokenizer(tokenizer)

    total_steps, epoch_sequences = cfg.train.steps, 0
    if cfg.train.epochs:  # the length in steps, counted over the packed data
        total_steps, epoch_sequences = epoch_steps(cfg, task.one_epoch(tokenizer), log)
    task.total_steps = total_steps
    total_updates = total_steps * task.updates_per_step
    schedule = learning_rate_schedule(cfg.optim, total_updates)
    optimizer = make_optimizer(cfg.optim, total_updates)
    start = initial_state(cfg, task, optimizer, mesh, jax.random.key(cfg.train.seed), log=log)
    steps = task.steps(
        start.graphdef,
        optimizer,
        schedule,
        start.shardings,
        mesh,
        start.views,
        tokenizer.token_bytes(),
    )
    batch_size = run_inputs.local_batch_size(cfg, jax.process_count())
    task.prepare(
        tokenizer=tokenizer,
        workdir=workdir,
        state=start.state,
        graphdef=start.graphdef,
        views=start.views,
        mesh=mesh,
        batch_size=batch_size,
    )
    where = (jax.process_index(), jax.process_count())
    train_iter = iter(task.train_stream(tokenizer, *where, batch_size))
    fingerprint = task.data_fingerprint(tokenizer.sha256)
    checkpointer = Checkpointer(
        workdir / "checkpoints", keep=cfg.train.keep_checkpoints, keep_every=cfg.train.keep_every
    )
    state, data_totals, start_step = _restore(cfg, checkpointer, start, train_iter, fingerprint)
    if jax.process_index() == 0:  # the run is accepted: from here on it may write
        (workdir / "config.json").write_text(cfg.to_json() + "\n", encoding="utf-8")

    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    val_batches = task.eval_batches(tokenizer, *where, batch_size)
    # The reference model's forward pass is not counted in MFU.
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * task.rows_per_example
    flops_tok = flops_per_token(cfg.model, cfg.data.seq_len)
    peak, peak_source = _peak_flops_total(cfg)
    log(
        f"{tokens_per_step} tokens/step; MFU counts {flops_tok / 1e6:.1f} MFLOP/token "
        f"(6N + 12·L·T·d) against {peak / 1e12:.3f} TFLOP/s ({peak_source})"
    )
    return Run(
        cfg=cfg,
        workdir=workdir,
        mesh=mesh,
        tokenizer=tokenizer,
        task=task,
        start=start,
        state=state,
        steps=steps,
        train_iter=train_iter,
        fingerprint=fingerprint,
        data_totals=data_totals,
        checkpointer=checkpointer,
        start_step=start_step,
        writer=writer,
        val_batches=val_batches,
        tokens_per_step=tokens_per_step,
        flops_per_token=flops_tok,
        peak_flops=peak,
        total_steps=total_steps,
        epoch_sequences=epoch_sequences,
    )


def _restore(cfg: Config, checkpointer: Checkpointer, start: RunState, train_iter, fingerprint):
    """(state, data totals, step) of the newest checkpoint that restores and verifies,
    or the starting ones. Damaged newer checkpoints are warned about and set aside;
    none usable is an error (never a silent start from scratch)."""
    accepted: list[str] = []  # config differences train.allow_config_change allowed

    def check_config(saved_cfg: dict, where: str) -> None:
        accepted[:] = check_resume_config(saved_cfg, cfg, where)

    target = abstract_like(start.shardings, jax.eval_shape(lambda s: s, start.state))
    restored = checkpointer.restore_latest_good(target, check_config=check_config)
    if restored is None:
        return start.state, DataTotals(), 0
    data_state = restored.data
    where = str(checkpointer.step_dir(restored.step))
    run_inputs.check_fingerprint(data_state, fingerprint, where, cfg, log)
    train_iter.set_state(from_jsonable(data_state["iterator"]))
    if accepted:
        log(f"config changes accepted on resume: {'; '.join(accepted)}")
    log(f"resumed from {checkpointer.directory}/{restored.step}")
    return restored.state, DataTotals(data_state["counts"]), restored.step


def _peak_flops_total(cfg: Config) -> tuple[float, str]:
    """Peak FLOP/s of all devices together, and where the figure came from."""
    n = jax.device_count()
    if cfg.train.peak_flops > 0:
        return cfg.train.peak_flops * n, "train.peak_flops"
    peak = device_peak_flops()
    if peak:
        return peak * n, f"{jax.devices()[0].device_kind} spec"
    if jax.default_backend() == "cpu":
        # Fake CPU devices share the same cores: the machine's peak is what counts.
        return measure_cpu_matmul_flops(), "measured CPU fp32 matmul"
    return float("nan"), "unknown"
