"""Reinforcement learning on prompts (`data.format=rl`): the GRPO family.

One training step (`train_step`, called by the loop like any other step):

    1. rollout   (jitted, rl_steps.make_rollout_step) rl.group_size responses to
                 each prompt of the batch, with the sampler's log-probs and the
                 reference's;
    2. rewards   (host) each response decoded and scored by config.rl.rewards
                 (jaxlm.training.rewards), every component kept apart;
    3. advantages (host, rl_losses) group-normalised (grpo, dapo) or centred
                 (dr_grpo); dapo drops groups whose rewards are all equal and masks
                 truncated responses;
    4. updates   (jitted, rl_steps.make_update_step) rl.epochs passes of
                 rl.minibatches optimizer updates each, the sampler's log-probs as
                 the old policy.

`state.step` counts optimizer updates (epochs x minibatches per loop step), and the
learning-rate schedule is laid out over all of them. The rollout's random key comes
from the batch's number in the data stream, which checkpoints save, so a resumed run
continues bitwise as the uninterrupted one.

Evaluation (held-out prompts): the greedy response's rewards (its "answer"
component is the accuracy), and pass@k: the share of prompts with at least one right
answer among rl.eval_samples responses sampled at rl.temperature.

Metrics in each `train` record: reward (mean total) and each component
(`reward_<name>`), response length, truncated share, share of groups kept, KL to the
reference, clip fraction, policy entropy, and where the time went (rollout_s,
update_s, rollout_tokens_per_s: response tokens made per second of rollout).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxlm.config import ConfigError
from jaxlm.data import prompt_inputs
from jaxlm.data.posttrain_inputs import jsonl_fingerprint
from jaxlm.errors import InputError
from jaxlm.inference.loading import load_model
from jaxlm.inference.rollout import sequence_layout
from jaxlm.sharding import batch_sharding
from jaxlm.training import rl_losses
from jaxlm.training.hosts import log
from jaxlm.training.reward_model_steps import sequence_scores
from jaxlm.training.rewards import Rewards, Sample
from jaxlm.training.rl_steps import make_rollout_step, make_update_step, rollout_sampling
from jaxlm.training.steps import jit_rollout_step, jit_update_step
from jaxlm.training.tasks.base import Steps, Task

# Steps in a row without any learning signal before the run warns about it.
NO_SIGNAL_STEPS = 10

# Salts of the rollout keys: training draws and pass@k draws never share a key.
_TRAIN_SALT, _EVAL_SALT = 0, 1


class RLTask(Task):
    rows_per_example: ClassVar[int] = 1  # set per run: group_size responses per prompt

    def __init__(self, cfg):
        super().__init__(cfg)
        rows, rl, accum = cfg.data.batch_size * cfg.rl.group_size, cfg.rl, cfg.optim.grad_accum
        if rows % (rl.minibatches * accum):  # else a reshape fails while tracing the update
            raise ConfigError(
                f"rl.minibatches={rl.minibatches} x optim.grad_accum={accum} must divide "
                f"the {rows} responses of a step (data.batch_size={cfg.data.batch_size} x "
                f"rl.group_size={rl.group_size})"
            )
        self.rows_per_example = cfg.rl.group_size
        self.updates_per_step = cfg.rl.epochs * cfg.rl.minibatches
        # rl.reward_model: a loaded reward model (prepare) behind the "reward_model"
        # component, which hands over the scores of the rows being scored.
        self._rm = None
        self._rm_rows = np.zeros(0, np.float32)
        extra = {"reward_model": lambda samples: self._rm_rows} if cfg.rl.reward_model else None
        self.rewards = Rewards(cfg.rl.rewards, extra=extra, overlong_buffer=cfg.rl.overlong_buffer)
        self._prompts: dict[bool, list[prompt_inputs.Prompt]] = {}

    # -- data -------------------------------------------------------------------------

    def prompts(self, tokenizer, *, held_out: bool) -> list[prompt_inputs.Prompt]:
        if held_out not in self._prompts:
            self._prompts[held_out] = prompt_inputs.load_prompts(
                self.cfg, tokenizer, held_out=held_out
            )
        return self._prompts[held_out]

    def train_stream(self, tokenizer, process_index, process_count, batch_size):
        return prompt_inputs.prompt_stream(
            self.prompts(tokenizer, held_out=False),
            seed=self.cfg.data.seed,
            slots=prompt_inputs.prompt_slots(self.cfg),
            pad_id=tokenizer.pad_id,
            process_index=process_index,
            process_count=process_count,
            batch_size=batch_size,
        )

    def eval_batches(self, tokenizer, process_index, process_count, batch_size):
        return prompt_inputs.held_out_batches(
            self.prompts(tokenizer, held_out=True),
            slots=prompt_inputs.prompt_slots(self.cfg),
            pad_id=tokenizer.pad_id,
            process_index=process_index,
            process_count=process_count,
            batch_size=batch_size,
        )

    def one_epoch(self, tokenizer):
        raise InputError(
            "data.format=rl: train.epochs is not supported (prompts are sampled, not "
            "consumed); set train.steps"
        )

    def data_fingerprint(self, tokenizer_sha256):
        return jsonl_fingerprint(self.cfg, tokenizer_sha256)

    def frozen_params(self, params, log):
        if self.cfg.rl.kl_weight <= 0:
            return None
        if not self.cfg.train.init_from:
            log("warning: RL without train.init_from: the KL reference is a random model")
        # A separate buffer: the state is donated to the update.
        return jax.tree.map(lambda x: jnp.array(x, copy=True), params)

    def prepare(self, *, tokenizer, workdir, state, graphdef, views, mesh, batch_size):
        path = self.cfg.rl.reward_model
        if not path:
            return
        rm = load_model(path, mesh=mesh)
        if not rm.cfg.model.score_head:
            raise InputError(f"rl.reward_model={path}: not a reward model (no score head)")
        if rm.tokenizer.sha256 != tokenizer.sha256:
            raise InputError(
                f"rl.reward_model={path}: its tokenizer ({rm.tokenizer.path}) is not the "
                f"policy's ({tokenizer.path}); the reward model reads the policy's tokens"
            )
        P = prompt_inputs.prompt_slots(self.cfg)

        def score(params, prompts_NP, lengths_N, out):
            tokens, positions, segments = sequence_layout(
                prompts_NP, lengths_N, out["tokens"], out["mask"]
            )
            last_N = P + jnp.maximum(out["num_tokens"] - 1, 0)
            return sequence_scores(rm.graphdef, params, tokens, positions, segments, last_N)

        self._rm = rm
        self._rm_score = jax.jit(score)
        log(f"reward model {rm.source} scores the component 'reward_model'")

    # -- steps ------------------------------------------------------------------------

    def steps(self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
        cfg, rl = self.cfg, self.cfg.rl
        stops = self._stop_ids()
        pad = self._pad_id()

        def rollout_jit(group_size, sampling, with_reference, salt, with_values=False):
            fn = make_rollout_step(
                cfg,
                graphdef,
                views,
                stop_ids=stops,
                pad_id=pad,
                group_size=group_size,
                sampling=sampling,
                with_reference=with_reference,
                with_values=with_values,
                salt=salt,
            )
            return jit_rollout_step(fn, state_shardings, mesh)

        with_reference = rl.kl_weight > 0
        self._rollout = rollout_jit(
            rl.group_size, rollout_sampling(cfg), with_reference, 0, rl.algorithm == "ppo"
        )
        self._greedy = rollout_jit(1, rollout_sampling(cfg, greedy=True), False, _EVAL_SALT)
        self._pass_at_k = rollout_jit(rl.eval_samples, rollout_sampling(cfg), False, _EVAL_SALT)
        update = make_update_step(cfg, graphdef, optimizer, schedule, views)
        self._update = jit_update_step(update, state_shardings, mesh)
        self._mesh = mesh
        return Steps(self._train_step, self._eval_step)

    def _stop_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in self._run_tokenizer().stop_ids)

    def _pad_id(self) -> int:
        return int(self._run_tokenizer().pad_id)

    def _run_tokenizer(self):
        if self.tokenizer is None:  # setup binds it before building the steps
            raise RuntimeError("RLTask: bind_tokenizer() comes before steps()")
        return self.tokenizer

    # -- one training step ------------------------------------------------------------

    def _train_step(self, state, batch):
        rl = self.cfg.rl
        t0 = time.perf_counter()
        out = self._rollout(state.params, state.frozen, batch)
        host = _gather(out, ("tokens", "num_tokens", "truncated", "example_index"))
        rollout_s = time.perf_counter() - t0
        self._reward_model_scores(state, out, host)
        total, components, _ = self._score(host, held_out=False)
        signal = np.asarray(rl_losses.groups_with_signal(jnp.asarray(total), rl.group_size))
        self._watch_signal(signal)
        valid = signal if rl.drops_equal_groups else np.ones(len(total), bool)
        weights = np.asarray(_gather(out, ("mask",))["mask"], np.float32)
        if rl.masks_truncated:
            weights = weights * ~host["truncated"][:, None]
        sharding = batch_sharding(self._mesh)
        rollout_batch = {k: out[k] for k in ("prompts", "lengths", "tokens", "old_logps")}
        rollout_batch["ref_logps"] = out["ref_logps"]
        if rl.algorithm == "ppo":
            advantages, returns, kl_reward = self._ppo_advantages(out, host, total, weights)
            rollout_batch["old_values"] = out["old_values"]
            rollout_batch["returns"] = _global(returns, sharding)
        else:
            advantages = np.asarray(
                rl_losses.group_advantages(
                    jnp.asarray(total), rl.group_size, scale_by_std=rl.scales_by_std
                )
            )
            kl_reward = None
        rollout_batch.update(
            {
                "weights": _global(weights, sharding),
                "advantages": _global(advantages.astype(np.float32), sharding),
                "valid": _global(valid, sharding),
            }
        )
        t1 = time.perf_counter()
        updates = []
        for _ in range(rl.epochs):
            for m in range(rl.minibatches):
                state, metrics = self._update(state, rollout_batch, jnp.int32(m))
                updates.append(metrics)
        updates = jax.device_get(updates)
        update_s = time.perf_counter() - t1
        made = int(host["num_tokens"].sum())
        metrics = dict(updates[-1])
        metrics["finite"] = min(int(u["finite"]) for u in updates)
        for key in ("skipped_empty", "skipped_spike"):
            metrics[key] = max(int(u[key]) for u in updates)
        metrics.update(
            {
                "reward": float(total.mean()),
                "reward_std": float(total.std()),
                **{f"reward_{k}": float(v.mean()) for k, v in components.items()},
                "response_tokens": float(host["num_tokens"].mean()),
                "truncated": float(host["truncated"].mean()),
                "groups_kept": float(valid.mean()),
                "groups_with_signal": float(signal.mean()),
                "advantage_abs": float(np.abs(advantages[valid]).mean()) if valid.any() else 0.0,
                **({} if kl_reward is None else {"kl_penalty": kl_reward}),
                "rollout_s": rollout_s,
                "update_s": update_s,
                "rollout_tokens_per_s": made / max(rollout_s, 1e-9),
            }
        )
        return state, metrics

    def _ppo_advantages(self, out, host, total, weights):
        """PPO's per-token (advantages, returns) [N, R] and the mean KL penalty: rewards
        -kl_weight x (log π_old - log π_ref) on every response token, + the sequence
        reward on its last one; GAE over the critic's old values; advantages whitened
        over the response tokens (returns are not)."""
        rl = self.cfg.rl
        arrays = _gather(out, ("old_logps", "ref_logps", "old_values", "mask"))
        mask = arrays["mask"].astype(np.float32)
        kl = (arrays["old_logps"] - arrays["ref_logps"]) * mask
        rewards = -rl.kl_weight * kl
        last = np.maximum(host["num_tokens"] - 1, 0)
        rows = np.arange(len(total))
        rewards[rows, last] += total * (host["num_tokens"] > 0)
        advantages, returns = rl_losses.gae(
            jnp.asarray(rewards),
            jnp.asarray(arrays["old_values"]),
            jnp.asarray(mask),
            gamma=rl.gamma,
            lam=rl.lam,
        )
        whitened = rl_losses.masked_whiten(advantages, jnp.asarray(weights))
        penalty = float(kl.sum(axis=1).mean()) * rl.kl_weight
        return np.asarray(whitened), np.asarray(returns, np.float32), penalty

    def _reward_model_scores(self, state, out, host) -> None:
        """With rl.reward_model: its scores of this rollout's rows, for the
        "reward_model" reward component to hand over (see `_rm_component`)."""
        if self._rm is None:
            return
        scores = self._rm_score(self._rm.params, out["prompts"], out["lengths"], out)
        host["reward_model"] = np.asarray(_gather({"s": scores}, ("s",))["s"], np.float32)

    def _watch_signal(self, signal: np.ndarray) -> None:
        """Warn once when NO_SIGNAL_STEPS steps in a row had no group whose rewards
        differ: every advantage is then 0 and the policy learns nothing (all-zero
        rewards of a model too weak for the task, or a reward that never varies)."""
        self._flat_steps = 0 if signal.any() else getattr(self, "_flat_steps", 0) + 1
        if self._flat_steps == NO_SIGNAL_STEPS:
            log(
                f"warning: rl: {NO_SIGNAL_STEPS} steps in a row without a group whose rewards "
                "differ: every advantage is 0, nothing is learnt (is the task too hard for "
                "the starting model? does the reward ever vary? see reward_* in the metrics)"
            )

    def _score(self, host, *, held_out: bool):
        tokenizer = self._run_tokenizer()
        prompts = self._prompts[held_out]
        stops = set(self._stop_ids())
        R = self.cfg.rl.max_response_tokens
        samples, kept = [], []
        for row, (tokens, n, truncated, index) in enumerate(
            zip(
                host["tokens"],
                host["num_tokens"],
                host["truncated"],
                host["example_index"],
                strict=True,
            )
        ):
            if index < 0:  # filler row of the last held-out batch
                continue
            ids = [int(t) for t in tokens[:n]]
            if ids and ids[-1] in stops and not truncated:
                ids = ids[:-1]  # the stop token ends the response; it is not its text
            prompt = prompts[int(index)]
            samples.append(
                Sample(
                    prompt=prompt.text,
                    completion=tokenizer.decode(ids),
                    example=prompt.record,
                    num_tokens=int(n),
                    truncated=bool(truncated),
                    max_tokens=R,
                )
            )
            kept.append(row)
        if "reward_model" in host:  # what the "reward_model" component hands over
            self._rm_rows = host["reward_model"][kept]
        total, components = self.rewards.score(samples)
        return total, components, samples

    # -- evaluation -------------------------------------------------------------------

    def _eval_step(self, state, batch):
        k = self.cfg.rl.eval_samples
        out = self._greedy(state.params, state.frozen, batch)
        greedy = _gather(out, ("tokens", "num_tokens", "truncated", "example_index"))
        self._reward_model_scores(state, out, greedy)
        total, components, samples = self._score(greedy, held_out=True)
        sums: dict[str, float] = {
            "prompts": float(len(samples)),
            "reward_sum": float(total.sum()),
            "response_tokens_sum": float(sum(s.num_tokens for s in samples)),
            **{f"reward_{name}_sum": float(v.sum()) for name, v in components.items()},
        }
        if "answer" in components:
            out = self._pass_at_k(state.params, state.frozen, batch)
            sampled = _gather(out, ("tokens", "num_tokens", "truncated", "example_index"))
            self._reward_model_scores(state, out, sampled)
            _, sampled_parts, _ = self._score(sampled, held_out=True)
            right = sampled_parts["answer"].reshape(-1, k) >= 1.0
            sums["pass_at_k_sum"] = float(right.any(axis=1).sum())
        return sums

    def summarize(self, results: list[dict[str, Any]]) -> dict[str, float]:
        keys = results[0].keys()
        sums = {key: float(sum(r[key] for r in results)) for key in keys}
        prompts = max(sums["prompts"], 1.0)
        out = {"prompts": sums["prompts"]}
        for key, value in sums.items():
            if key.endswith("_sum"):
                out[key[: -len("_sum")]] = value / prompts
        if "reward_answer" in out:
            out["accuracy"] = out["reward_answer"]
            out[f"pass_at_{self.cfg.rl.eval_samples}"] = out.pop("pass_at_k")
        return out

    def eval_text(self, summary):
        text = f"reward {summary['reward']:.4f}"
        if "accuracy" in summary:
            k = self.cfg.rl.eval_samples
            text += (
                f", greedy accuracy {summary['accuracy']:.4f}, pass@{k} "
                f"{summary[f'pass_at_{k}']:.4f}"
            )
        parts = [n for n in self.rewards.names if n != "answer"]
        text += "".join(f", {n} {summary[f'reward_{n}']:.4f}" for n in parts)
        return text + f" on {summary['prompts']:.0f} held-out prompts"

    def step_metrics(self, metrics):
        return {
            k: float(v)
            for k, v in metrics.items()
            if k.startswith("reward")
            or k
            in (
                "response_tokens",
                "truncated",
                "groups_kept",
                "groups_with_signal",
                "kl_penalty",
                "value_loss",
                "policy_loss",
                "ratio",
                "advantage_abs",
                "kl",
                "clip_fraction",
                "entropy",
                "rollout_s",
                "update_s",
                "rollout_tokens_per_s",
            )
        }


def _gather(out: dict[str, jax.Array], keys) -> dict[str, np.ndarray]:
    """The whole (global) arrays on this host: every process scores every row."""
    if jax.process_count() == 1:
        return {k: np.asarray(jax.device_get(out[k])) for k in keys}
    return {k: np.asarray(multihost_utils.process_allgather(out[k], tiled=True)) for k in keys}


def _global(array: np.ndarray, sharding) -> jax.Array:
    """A global array from the full host copy every process holds."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
