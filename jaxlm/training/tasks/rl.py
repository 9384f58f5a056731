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

from jaxlm.data import prompt_inputs
from jaxlm.data.posttrain_inputs import jsonl_fingerprint
from jaxlm.errors import InputError
from jaxlm.sharding import batch_sharding
from jaxlm.training import rl_losses
from jaxlm.training.hosts import log
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
        self.rows_per_example = cfg.rl.group_size
        self.updates_per_step = cfg.rl.epochs * cfg.rl.minibatches
        self.rewards = Rewards(cfg.rl.rewards, overlong_buffer=cfg.rl.overlong_buffer)
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

    # -- steps ------------------------------------------------------------------------

    def steps(self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
        cfg, rl = self.cfg, self.cfg.rl
        stops = self._stop_ids()
        pad = self._pad_id()

        def rollout_jit(group_size, sampling, with_reference, salt):
            fn = make_rollout_step(
                cfg,
                graphdef,
                views,
                stop_ids=stops,
                pad_id=pad,
                group_size=group_size,
                sampling=sampling,
                with_reference=with_reference,
                salt=salt,
            )
            return jit_rollout_step(fn, state_shardings, mesh)

        with_reference = rl.kl_weight > 0
        self._rollout = rollout_jit(rl.group_size, rollout_sampling(cfg), with_reference, 0)
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
        total, components, _ = self._score(host, held_out=False)
        advantages = np.asarray(
            rl_losses.group_advantages(
                jnp.asarray(total), rl.group_size, scale_by_std=rl.scales_by_std
            )
        )
        signal = np.asarray(rl_losses.groups_with_signal(jnp.asarray(total), rl.group_size))
        self._watch_signal(signal)
        valid = signal if rl.drops_equal_groups else np.ones(len(total), bool)
        weights = np.asarray(_gather(out, ("mask",))["mask"], np.float32)
        if rl.masks_truncated:
            weights = weights * ~host["truncated"][:, None]
        sharding = batch_sharding(self._mesh)
        rollout_batch = {k: out[k] for k in ("prompts", "lengths", "tokens", "old_logps")}
        rollout_batch["ref_logps"] = out["ref_logps"]
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
                "rollout_s": rollout_s,
                "update_s": update_s,
                "rollout_tokens_per_s": made / max(rollout_s, 1e-9),
            }
        )
        return state, metrics

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
        samples = []
        for tokens, n, truncated, index in zip(
            host["tokens"],
            host["num_tokens"],
            host["truncated"],
            host["example_index"],
            strict=True,
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
        total, components = self.rewards.score(samples)
        return total, components, samples

    # -- evaluation -------------------------------------------------------------------

    def _eval_step(self, state, batch):
        k = self.cfg.rl.eval_samples
        greedy = _gather(
            self._greedy(state.params, state.frozen, batch),
            ("tokens", "num_tokens", "truncated", "example_index"),
        )
        total, components, samples = self._score(greedy, held_out=True)
        sums: dict[str, float] = {
            "prompts": float(len(samples)),
            "reward_sum": float(total.sum()),
            "response_tokens_sum": float(sum(s.num_tokens for s in samples)),
            **{f"reward_{name}_sum": float(v.sum()) for name, v in components.items()},
        }
        if "answer" in components:
            sampled = _gather(
                self._pass_at_k(state.params, state.frozen, batch),
                ("tokens", "num_tokens", "truncated", "example_index"),
            )
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
