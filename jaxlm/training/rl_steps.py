"""Pure, jitted steps of policy-gradient RL (the GRPO family): rollout and update.

An RL step is two programs with the rewards between them, on the host
(jaxlm.training.tasks.rl drives them):

    rollout(params, frozen, prompt batch)  -> G responses per prompt with the sampling
                                              policy's log-probs, and the reference's
    [host: decode, score with the reward functions, advantages, masks]
    update(state, rollout batch, m)        -> one optimizer update on minibatch m

Both run on the training mesh with the state's own params (views.policy: a LoRA
run's adapters + frozen base), so there is no second copy of the weights; the
reference is views.reference (the frozen starting model, or the base with adapters
off), run once per rollout, not once per update.

Rollout batch (rows N = prompts x group_size, row i*G + j = response j to prompt i):
    prompts [N, P] lengths [N] tokens [N, R] weights [N, R] (response tokens that
    count: overlong filtering zeroes truncated rows) old_logps [N, R] ref_logps [N, R]
    advantages [N] valid [N] (rows whose group survived dynamic sampling)

The update is `rl_losses`' clipped surrogate + kl_weight x k3 KL, aggregated as the
algorithm says; sums over micro-batches (optim.grad_accum) are divided once by the
summed denominator, like every other step (steps.accumulate), and the shared
guarded_update skips an update with nothing to learn from (every group dropped) or a
non-finite result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxlm.config import Config
from jaxlm.inference.rollout import make_rollout, response_logps, response_outputs
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.training import rl_losses
from jaxlm.training.losses import safe_mean
from jaxlm.training.param_views import ParamViews
from jaxlm.training.state import TrainState
from jaxlm.training.steps import accumulate, guarded_update

Batch = dict[str, jax.Array]

# Sums each update reports (divided into means by `update_metrics`).
UPDATE_SUMS = (
    "loss_sum",
    "policy_loss_sum",
    "denominator",
    "tokens",
    "kl_sum",
    "clipped_sum",
    "entropy_sum",
    "ratio_sum",
    "value_loss_sum",
)


def rollout_sampling(cfg: Config, *, greedy: bool = False) -> SamplingConfig:
    if greedy:
        return SamplingConfig()
    rl = cfg.rl
    return SamplingConfig(temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k)


def make_rollout_step(
    cfg: Config,
    graphdef: nnx.GraphDef,
    views: ParamViews,
    *,
    stop_ids,
    pad_id: int,
    group_size: int,
    sampling: SamplingConfig,
    with_reference: bool,
    with_values: bool = False,
    salt: int = 0,
) -> Callable[[Any, Any, Batch], Batch]:
    """rollout(params, frozen, prompt batch) -> the rollout batch's sampled part.

    Each prompt is repeated `group_size` times (its copies stay on its device); the
    random key is fold_in(key(train.seed), salt, batch_index), a function of the data
    position, so a resumed run draws the same responses.
    """
    R = cfg.rl.max_response_tokens
    sample = make_rollout(
        cfg.model, graphdef, max_new_tokens=R, sampling=sampling, stop_ids=stop_ids, pad_id=pad_id
    )
    temperature = sampling.temperature

    def rollout_step(params, frozen, batch: Batch) -> Batch:
        prompts_NP = jnp.repeat(batch["tokens"], group_size, axis=0)
        lengths_N = jnp.repeat(batch["lengths"], group_size, axis=0)
        key = jax.random.fold_in(jax.random.key(cfg.train.seed), salt)
        key = jax.random.fold_in(key, batch["batch_index"][0])
        out = sample(views.policy(params, frozen), prompts_NP, lengths_N, key)
        extra = {}
        if with_values:  # PPO: the critic's values of the states the sampler was in
            extra["old_values"] = response_outputs(
                graphdef,
                views.policy(params, frozen),
                prompts_NP,
                lengths_N,
                out.tokens,
                out.mask,
                temperature=temperature,
                with_values=True,
            )["values"]
        if with_reference:
            ref = jax.lax.stop_gradient(views.reference(params, frozen))
            ref_logps_NR = response_logps(
                graphdef, ref, prompts_NP, lengths_N, out.tokens, out.mask, temperature=temperature
            )
        else:
            ref_logps_NR = jnp.zeros_like(out.logps)
        return {
            "prompts": prompts_NP,
            "lengths": lengths_N,
            "tokens": out.tokens,
            "mask": out.mask,
            "old_logps": out.logps,
            "ref_logps": jax.lax.stop_gradient(ref_logps_NR),
            "num_tokens": out.num_tokens,
            "truncated": out.truncated,
            "example_index": jnp.repeat(batch["example_index"], group_size, axis=0),
            **extra,
        }

    return rollout_step


def _minibatch(batch: Batch, m: jax.Array, count: int) -> Batch:
    """Rows i with i % count == m (like steps.split_microbatches: spread over devices)."""
    if count == 1:
        return batch

    def pick(x):
        rows = x.shape[0] // count
        return jnp.take(x.reshape(rows, count, *x.shape[1:]), m, axis=1)

    return jax.tree.map(pick, batch)


def make_update_step(
    cfg: Config,
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    views: ParamViews,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """update(state, rollout batch, m) -> (state, metrics): one optimizer update on
    minibatch m of rl.minibatches (see the module docstring)."""
    rl = cfg.rl
    temperature = rl.temperature
    clip_high = rl.resolved_clip_high

    ppo = rl.algorithm == "ppo"

    def sums_of(p, frozen, b: Batch):
        out = response_outputs(
            graphdef,
            views.policy(p, frozen),
            b["prompts"],
            b["lengths"],
            b["tokens"],
            b["weights"] > 0,
            temperature=temperature,
            with_values=ppo,
        )
        logps_NR, entropy_NR = out["logps"], out["entropy"]
        weights_NR, denominator = rl_losses.token_weights(b["weights"], b["valid"], rl.aggregation)
        advantages = b["advantages"]  # [N] (GRPO family) or [N, R] (PPO)
        pg_NR, clipped_NR = rl_losses.clipped_surrogate(
            logps_NR,
            b["old_logps"],
            advantages if advantages.ndim == 2 else advantages[:, None],
            clip_low=rl.clip_low,
            clip_high=clip_high,
        )
        kl_NR = rl_losses.kl_k3(logps_NR, b["ref_logps"])
        if ppo:  # the KL penalty is in PPO's rewards; the critic learns beside the policy
            value_NR = rl_losses.clipped_value_loss(
                out["values"], b["old_values"], b["returns"], clip=rl.value_clip
            )
            per_token_NR = pg_NR + rl.value_weight * value_NR
        elif rl.kl_weight > 0:
            value_NR = jnp.zeros_like(pg_NR)
            per_token_NR = pg_NR + rl.kl_weight * kl_NR
        else:
            value_NR = jnp.zeros_like(pg_NR)
            per_token_NR = pg_NR
        counted_NR = (weights_NR > 0).astype(jnp.float32)
        loss_sum = jnp.sum(weights_NR * per_token_NR)
        sums = {
            "loss_sum": loss_sum,
            "policy_loss_sum": jnp.sum(weights_NR * pg_NR),
            "denominator": denominator,
            "tokens": counted_NR.sum(),
            "kl_sum": jnp.sum(counted_NR * kl_NR),
            "clipped_sum": jnp.sum(counted_NR * clipped_NR),
            "entropy_sum": jnp.sum(counted_NR * entropy_NR),
            # exp(log π - log π_old): 1 on a rollout's first update, up to float rounding
            "ratio_sum": jnp.sum(counted_NR * jnp.exp(logps_NR - b["old_logps"])),
            "value_loss_sum": jnp.sum(counted_NR * value_NR),
        }
        return loss_sum, sums

    def update(state: TrainState, batch: Batch, m: jax.Array):
        mini = _minibatch(batch, m, rl.minibatches)
        grad_fn = jax.grad(sums_of, has_aux=True)

        def sums_and_grads(b):
            grads, sums = grad_fn(state.params, state.frozen, b)
            return sums, grads

        def zeros():
            sums = {k: jnp.zeros((), jnp.float32) for k in UPDATE_SUMS}
            return sums, jax.tree.map(jnp.zeros_like, state.params)

        sums, grads = accumulate(sums_and_grads, mini, grad_accum=cfg.optim.grad_accum, zeros=zeros)
        denominator = sums["denominator"]
        grads = jax.tree.map(lambda g: g / jnp.maximum(denominator, 1.0), grads)
        grad_norm = optax.tree.norm(grads)
        loss = safe_mean(sums["loss_sum"], denominator)
        new_state, flags = guarded_update(
            state,
            grads,
            optimizer,
            loss,
            finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            has_data=denominator > 0,  # every group dropped: nothing to learn from
            spike_factor=0.0,  # RL losses move with the advantages; no spike rule here
            spike_warmup_steps=0,
            loss_ema_decay=0.99,
        )
        tokens = sums["tokens"]
        metrics = {
            "loss": loss,
            # the clipped surrogate alone (loss = it + kl_weight x the KL term)
            "policy_loss": safe_mean(sums["policy_loss_sum"], denominator),
            "ratio": safe_mean(sums["ratio_sum"], tokens),
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "kl": safe_mean(sums["kl_sum"], tokens),
            "clip_fraction": safe_mean(sums["clipped_sum"], tokens),
            "entropy": safe_mean(sums["entropy_sum"], tokens),
            "value_loss": safe_mean(sums["value_loss_sum"], tokens),  # PPO's critic
            **flags,
        }
        return new_state, metrics

    return update
