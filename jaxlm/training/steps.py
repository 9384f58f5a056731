"""Pure train and eval steps, what every objective's step shares, and the one place
steps are jitted (the jit_* functions at the end; preference_steps.py builds its
steps from the pieces here).

`lm_step` serves pretraining and SFT (they differ only in the batch's loss_mask). It
is a pure function of (state, batch): the model is rebuilt from `graphdef` and the
params inside the trace, keys are explicit, nothing is stateful.

Gradient accumulation (`accumulate`, shared by every objective) runs `grad_accum`
micro-batches under `lax.scan` and sums *unnormalised* loss gradients; the step
divides once by the global count (supervised tokens, valid pairs), so the update
equals the one the whole batch would give in a single pass.

A step whose loss or gradient norm is not finite leaves params and optimizer state
untouched and reports `finite = 0`; the host loop stops on it (jaxlm.training.loop).

In a multi-process run each sharded step compiles on its first call and then waits
for every process before running (`_CompileThenMeet`): the first collective must not
see one process still compiling (CPU collectives give up after 30 s of skew).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import ModelConfig
from jaxlm.runtime.distributed import wait_for_all_processes
from jaxlm.sharding import batch_sharding, constrain, replicated
from jaxlm.training import moe_losses
from jaxlm.training.losses import LossSums, next_token_loss_sums, safe_mean
from jaxlm.training.param_views import FULL, ParamViews, States
from jaxlm.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def forward(graphdef: nnx.GraphDef, params: nnx.State | States, batch: Batch) -> jax.Array:
    """Logits for a [B, T] batch in the batch schema (jaxlm.data.packing).

    `params` is one State or a tuple of States merged together (param_views.py).
    """
    return forward_with_stats(graphdef, params, batch)[0]


def model_config(graphdef: nnx.GraphDef, params: nnx.State | States) -> ModelConfig:
    """The config the model was built from (a static attribute: no computation)."""
    states = params if isinstance(params, tuple) else (params,)
    return nnx.merge(graphdef, *states).cfg


def forward_with_stats(
    graphdef: nnx.GraphDef, params: nnx.State | States, batch: Batch
) -> tuple[jax.Array, Any, ModelConfig]:
    """(logits, a MoE model's routing statistics or None, the model's config)."""
    states = params if isinstance(params, tuple) else (params,)
    model = nnx.merge(graphdef, *states)
    logits, stats = model.forward_with_stats(
        batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"]
    )
    return logits, stats, model.cfg


def loss_sums(graphdef: nnx.GraphDef, params: nnx.State | States, batch: Batch) -> LossSums:
    logits = forward(graphdef, params, batch)
    return next_token_loss_sums(logits, batch["targets"], batch["loss_mask"])


def split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B / num, ...], keeping each micro-batch spread over all devices.

    Row i goes to micro-batch i % num: a plain reshape would give micro-batch j the
    j-th contiguous block, which lives on a subset of the data-parallel devices.
    """

    def split(x):
        rows = x.shape[0] // num
        x = x.reshape(rows, num, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, None, "act_batch", *([None] * (x.ndim - 2)))

    return jax.tree.map(split, batch)


def accumulate(
    sums_and_grads: Callable[[Batch], tuple[Any, Any]],
    batch: Batch,
    *,
    grad_accum: int,
    zeros: Callable[[], tuple[Any, Any]],
) -> tuple[Any, Any]:
    """(sums, grads) of `batch`, added over `grad_accum` micro-batches.

    `sums_and_grads(micro_batch)` gives one micro-batch's unnormalised sums and their
    gradient; `zeros()` the accumulator of the same structure. With one micro-batch
    the function runs on the whole batch, with no scan around it.
    """
    if grad_accum == 1:
        return sums_and_grads(batch)

    def micro(carry, b):
        return jax.tree.map(jnp.add, carry, sums_and_grads(b)), None

    (sums, grads), _ = jax.lax.scan(micro, zeros(), split_microbatches(batch, grad_accum))
    return sums, grads


def accumulated_grads(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: Batch,
    *,
    grad_accum: int,
    z_loss: float,
    model_params: Callable[[nnx.State], nnx.State | States] = lambda p: p,
) -> tuple[LossSums, nnx.State]:
    """Summed loss terms and the gradient of their (unnormalised) sum w.r.t. `params`.

    `model_params(params)` is what the model runs with (e.g. adapters + frozen base).
    """

    # A MoE model's routing terms divide by counts of the whole batch (moe_losses.py).
    counts = moe_losses.batch_counts(batch)

    def objective(p, b):
        logits, moe_stats, cfg = forward_with_stats(graphdef, model_params(p), b)
        sums = next_token_loss_sums(logits, b["targets"], b["loss_mask"])
        total = sums.nll + z_loss * sums.z
        if moe_stats is not None:
            total = total + moe_losses.routing_objective(cfg, moe_stats, counts)
        return total, (sums, moe_stats)

    grad_fn = jax.grad(objective, has_aux=True)

    def sums_and_grads(b):
        grads, sums = grad_fn(params, b)
        return sums, grads

    def zeros():
        micro = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((x.shape[0] // grad_accum, *x.shape[1:]), x.dtype),
            batch,
        )
        shapes = jax.eval_shape(sums_and_grads, micro)
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    return accumulate(sums_and_grads, batch, grad_accum=grad_accum, zeros=zeros)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def guarded_update(
    state: TrainState,
    grads: Any,
    optimizer: optax.GradientTransformation,
    loss: jax.Array,
    *,
    finite: jax.Array,
    has_data: jax.Array,
    spike_factor: float,
    spike_warmup_steps: int,
    loss_ema_decay: float,
) -> tuple[TrainState, Metrics]:
    """The optimizer update, applied only when it is safe; (new state, flags).

    Not applied (params and optimizer state stay bitwise as they were, `step` does not
    advance) when the loss, gradient or resulting params are not finite, when the batch
    had nothing to learn from (`has_data` False), or, with `spike_factor` > 0 after
    `spike_warmup_steps` updates, when the loss exceeds spike_factor x its moving average.
    Shared by every objective's step, so all skip the same way.
    """
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # A finite gradient can still give a non-finite update (e.g. an absurd lr): check
    # the result too, so bad params are never written, not even for one step.
    finite = finite & _all_finite(new_params)
    spike = (
        (spike_factor > 0)
        & (state.step >= spike_warmup_steps)
        & (loss > spike_factor * state.loss_ema)
    )
    apply = finite & has_data & ~spike
    ema = jnp.where(
        state.step == 0, loss, loss_ema_decay * state.loss_ema + (1 - loss_ema_decay) * loss
    )
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
    new_state = TrainState(
        step=state.step + apply.astype(jnp.int32),
        params=keep(new_params, state.params),
        opt_state=keep(new_opt_state, state.opt_state),
        loss_ema=jnp.where(apply, ema, state.loss_ema).astype(jnp.float32),
        frozen=state.frozen,
    )
    flags = {
        "finite": finite.astype(jnp.int32),
        "skipped_empty": (~has_data).astype(jnp.int32),
        "skipped_spike": (spike & finite & has_data).astype(jnp.int32),
        "loss_ema": state.loss_ema,  # what a spike is measured against
    }
    return new_state, flags


def make_lm_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    grad_accum: int = 1,
    z_loss: float = 0.0,
    spike_factor: float = 0.0,
    spike_warmup_steps: int = 100,
    loss_ema_decay: float = 0.99,
    views: ParamViews = FULL,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Build the pure next-token train step (pretraining and SFT).

    With `spike_factor` > 0, once `spike_warmup_steps` updates were applied, a step
    whose loss exceeds `spike_factor` times the moving average of past losses is
    skipped like a non-finite one: params and optimizer state stay exactly as they
    were, and `skipped_spike` says so (the host loop stops after too many in a row).
    """

    def lm_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        (sums, moe_stats), grads = accumulated_grads(
            graphdef,
            state.params,
            batch,
            grad_accum=grad_accum,
            z_loss=z_loss,
            model_params=lambda p: views.policy(p, state.frozen),
        )
        new_state, metrics = token_mean_update(
            state,
            grads,
            optimizer,
            objective_sum=sums.nll,
            z_sum=sums.z,
            num_tokens=sums.num_tokens,
            spike_factor=spike_factor,
            spike_warmup_steps=spike_warmup_steps,
            loss_ema_decay=loss_ema_decay,
        )
        if moe_stats is not None:
            cfg = model_config(graphdef, views.policy(state.params, state.frozen))
            new_state, moe_metrics = moe_losses.after_update(cfg, state, new_state, moe_stats)
            metrics = {**metrics, **moe_metrics}
        return new_state, {**metrics, "lr": schedule(state.step)}

    return lm_step


def token_mean_update(
    state: TrainState,
    grads: Any,
    optimizer: optax.GradientTransformation,
    *,
    objective_sum: jax.Array,
    z_sum: jax.Array,
    num_tokens: jax.Array,
    spike_factor: float,
    spike_warmup_steps: int,
    loss_ema_decay: float,
) -> tuple[TrainState, Metrics]:
    """The update of an objective summed over supervised tokens (next-token,
    distillation): the summed gradient divided once by the global token count, then
    guarded_update. Metrics: the objective's mean as `loss`, z_loss, grad_norm,
    num_tokens and the update's flags."""
    denom = jnp.maximum(num_tokens, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.tree.norm(grads)
    loss = safe_mean(objective_sum, num_tokens)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(z_sum)
    new_state, flags = guarded_update(
        state,
        grads,
        optimizer,
        loss,
        finite=finite,
        has_data=num_tokens > 0,  # nothing supervised (an all-padding batch)
        spike_factor=spike_factor,
        spike_warmup_steps=spike_warmup_steps,
        loss_ema_decay=loss_ema_decay,
    )
    metrics = {
        "loss": loss,
        "z_loss": safe_mean(z_sum, num_tokens),
        "grad_norm": grad_norm,
        "num_tokens": num_tokens,
        **flags,
    }
    return new_state, metrics


def make_eval_step(graphdef: nnx.GraphDef, views: ParamViews = FULL) -> Callable[..., Metrics]:
    """Summed nats, supervised tokens and the UTF-8 bytes those tokens decode to.

    Bits per byte = nats / ln 2 / bytes, with bytes taken from the tokenizer's
    per-piece byte lengths (`token_bytes`, 0 for special tokens such as EOS), so it is
    comparable across tokenizers and with byte-level compressors such as gzip.
    """

    def eval_step(params: nnx.State, frozen, batch: Batch, token_bytes_V: jax.Array) -> Metrics:
        sums = loss_sums(graphdef, views.policy(params, frozen), batch)
        target_bytes_BT = jnp.take(token_bytes_V, batch["targets"], axis=0)
        mask = batch["loss_mask"].astype(jnp.float32)
        return {
            "nll": sums.nll,
            "num_tokens": sums.num_tokens,
            "num_bytes": jnp.sum(target_bytes_BT.astype(jnp.float32) * mask),
        }

    return eval_step


class _CompileThenMeet:
    """A jitted step whose first call compiles, then waits for every process.

    Compile times differ between processes (load, caches); without the meeting the
    fastest one would wait inside the step's first collective, where gloo's fixed
    30 s limit ends the job. Later calls reuse the compiled program (jit's cache).
    """

    _made = 0  # every process builds its steps in the same order: same barrier names

    def __init__(self, jitted):
        type(self)._made += 1
        self.jitted, self.name, self.met = jitted, f"step{type(self)._made}_compiled", False

    def __call__(self, *args):
        if not self.met:
            self.jitted.lower(*args).compile()
            wait_for_all_processes(self.name)
            self.met = True
        return self.jitted(*args)

    def lower(self, *args):
        return self.jitted.lower(*args)


def _meet_after_compiling(jitted):
    return _CompileThenMeet(jitted) if jax.process_count() > 1 else jitted


def jit_train_step(step_fn, state_shardings: TrainState, mesh: Mesh, *, extra=()):
    """The train step compiled with explicit in/out shardings; the state is donated.

    `extra`: the shardings of arguments after the batch, which the step reads but never
    changes (distillation's teacher params, jaxlm.training.distill_steps).
    """
    return _meet_after_compiling(
        jax.jit(
            step_fn,
            in_shardings=(state_shardings, batch_sharding(mesh), *extra),
            out_shardings=(state_shardings, replicated(mesh)),
            donate_argnums=(0,),
        )
    )


def jit_eval_step(
    eval_fn,
    state_shardings: TrainState | None = None,
    mesh: Mesh | None = None,
    *,
    constants=1,
    extra=(),
):
    """eval_fn(params, frozen, batch, *constants, *extra) with the state's shardings.

    `constants` replicated arguments follow the batch (the next-token step's
    token_bytes; none for the preference step), then arguments with the shardings
    `extra` (a teacher's params). Without shardings (`jaxlm eval`, whose params are
    already placed) it is compiled for its inputs' placement.
    """
    if state_shardings is None:
        return jax.jit(eval_fn)
    return _meet_after_compiling(
        jax.jit(
            eval_fn,
            in_shardings=(
                state_shardings.params,
                state_shardings.frozen,
                batch_sharding(mesh),
                *[replicated(mesh)] * constants,
                *extra,
            ),
            out_shardings=replicated(mesh),
        )
    )


def jit_scoring_step(score_fn, mesh: Mesh):
    """score_fn(params, frozen, batch) -> per-row numbers, left sharded like the batch
    (the precomputed reference log-probs, jaxlm.training.reference_logps)."""
    return jax.jit(score_fn, out_shardings=batch_sharding(mesh))


def jit_rollout_step(rollout_fn, state_shardings: TrainState, mesh: Mesh):
    """rollout_fn(params, frozen, prompt batch) -> rollout batch, every output sharded
    like the batch (RL, jaxlm.training.rl_steps); the state is read, not donated."""
    return _meet_after_compiling(
        jax.jit(
            rollout_fn,
            in_shardings=(state_shardings.params, state_shardings.frozen, batch_sharding(mesh)),
            out_shardings=batch_sharding(mesh),
        )
    )


def jit_update_step(update_fn, state_shardings: TrainState, mesh: Mesh):
    """update_fn(state, rollout batch, minibatch index) -> (state, metrics); the state is
    donated, as in jit_train_step (RL, jaxlm.training.rl_steps)."""
    return _meet_after_compiling(
        jax.jit(
            update_fn,
            in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
            out_shardings=(state_shardings, replicated(mesh)),
            donate_argnums=(0,),
        )
    )
