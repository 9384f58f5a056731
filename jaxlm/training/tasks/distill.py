"""Knowledge distillation (distill.teacher set on a data.format=text or chat run).

The student learns the teacher's next-token distributions on the run's own data:

    alpha · CE(targets) + (1 - alpha) · τ² · D(teacher, student)

on the tokens the loss mask selects (SFT-style distillation trains assistant tokens
only), D = forward KL, reverse KL or generalised JSD (jaxlm.training.distill_losses).
The data, held-out sets and reports are the next-token task's (pretraining or SFT,
tasks/next_token.py); what changes is where the teacher comes from:

    online     (distill.top_k = 0) the teacher — an export, a workdir, an imported
               Hugging Face model — is loaded once, sharded over the run's mesh by the
               same rules as the student, and runs forward inside every jitted step
               (jaxlm.training.distill_steps). It is not trained and not saved in
               checkpoints (a resume loads it again and checks its params' checksum).
    offline    (distill.top_k > 0) the teacher reads the training rows once, before
               the first step, into a table of top-k log-probs
               (jaxlm.training.teacher_topk), which the pipeline attaches to each
               batch; the teacher is then freed.
    on-policy  (distill.on_policy = λ > 0, chat data; GKD) a share λ of the steps
               trains on the student's own responses to the data's prompts (the
               conversations up to their last assistant turn), sampled in the same
               jitted step with the KV-cached rollout (jaxlm.inference.rollout) and
               scored by the teacher; the other steps train on the data's responses.

The teacher must share the student's vocabulary (the tokenizers' pieces, id by id);
otherwise the run is refused with both tokenizers named. Eval reports the student's
held-out loss and bits per byte beside the teacher's, and their divergence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data import prompt_inputs
from jaxlm.data.chat import encode_chat_prompt, parse_conversation
from jaxlm.errors import InputError
from jaxlm.inference.loading import LoadedModel, load_model
from jaxlm.inference.rollout import make_rollout
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.sharding import replicated
from jaxlm.training import teacher_topk
from jaxlm.training.distill_steps import make_distill_step, make_teacher_eval_step
from jaxlm.training.hosts import log
from jaxlm.training.metrics import bits_per_byte
from jaxlm.training.steps import jit_eval_step, jit_train_step, make_eval_step
from jaxlm.training.tasks.base import Steps, summed
from jaxlm.training.tasks.next_token import ChatTask, PretrainTask, next_token_summary

# Salt of the on-policy sampling keys (RL's rollouts use 0 and 1).
_ON_POLICY_SALT = 2


def check_same_vocabulary(student_tok, teacher_tok, teacher_source: str) -> None:
    """Refuse a teacher whose tokenizer is not the student's, piece for piece."""
    if student_tok.sha256 == teacher_tok.sha256:
        return
    where = f"the student's tokenizer {student_tok.path} and the teacher's {teacher_tok.path}"
    if student_tok.vocab_size != teacher_tok.vocab_size:
        raise InputError(
            f"distill.teacher={teacher_source}: different vocabularies ({where}: "
            f"{student_tok.vocab_size} vs {teacher_tok.vocab_size} tokens)"
        )
    for i in range(student_tok.vocab_size):
        if student_tok.id_to_piece(i) != teacher_tok.id_to_piece(i):
            raise InputError(
                f"distill.teacher={teacher_source}: different vocabularies ({where}: id {i} "
                f"is {student_tok.id_to_piece(i)!r} vs {teacher_tok.id_to_piece(i)!r})"
            )


class DistillMixin:
    """What distillation adds to a next-token task (combined below with each)."""

    cfg: Config

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.teacher: LoadedModel | None = None
        self.table: teacher_topk.TopKTable | None = None

    # -- the teacher ------------------------------------------------------------------

    def load_teacher(self, mesh) -> LoadedModel:
        if self.teacher is not None:
            return self.teacher
        cfg, source = self.cfg, self.cfg.distill.teacher
        try:
            teacher = load_model(source, mesh=mesh)
        except FileNotFoundError as e:
            raise InputError(f"distill.teacher={source}: {e}") from None
        check_same_vocabulary(self.tokenizer, teacher.tokenizer, source)
        if teacher.cfg.model.score_head:
            raise InputError(f"distill.teacher={source}: a reward model (score head), not an LM")
        if teacher.cfg.model.vocab_size != cfg.model.vocab_size:
            raise InputError(
                f"distill.teacher={source}: its model.vocab_size={teacher.cfg.model.vocab_size}"
                f" differs from the student's {cfg.model.vocab_size} (same tokenizer, other "
                "padding of the embedding)"
            )
        if teacher.cfg.model.max_seq_len < cfg.data.seq_len:
            raise InputError(
                f"distill.teacher={source}: model.max_seq_len={teacher.cfg.model.max_seq_len}"
                f" is shorter than data.seq_len={cfg.data.seq_len}"
            )
        self.teacher = teacher
        log(
            f"teacher {teacher.source}: {_count(teacher.params) / 1e6:.2f}M params, "
            f"{cfg.distill.loss} at temperature {cfg.distill.temperature}, alpha "
            f"{cfg.distill.alpha}"
            + (f", top-{cfg.distill.top_k} table" if cfg.distill.top_k else ", online")
        )
        return teacher

    @property
    def online(self) -> bool:
        return self.cfg.distill.top_k == 0

    # -- data -------------------------------------------------------------------------

    def data_fingerprint(self, tokenizer_sha256):
        fingerprint = super().data_fingerprint(tokenizer_sha256)
        if self.teacher is not None:  # the online teacher: a resume must see the same
            fingerprint = {**fingerprint, "teacher": self._teacher_identity()}
        return fingerprint

    def _teacher_identity(self) -> dict[str, Any]:
        return {
            "source": str(self.cfg.distill.teacher),
            "params_checksum": teacher_topk.params_checksum(self.teacher.params),
        }

    def train_stream(self, tokenizer, process_index, process_count, batch_size):
        stream = super().train_stream(tokenizer, process_index, process_count, batch_size)
        if self.table is not None:
            return stream.map(self.table.attach)
        if self.cfg.distill.on_policy > 0:
            prompts = prompt_inputs.prompt_stream(
                self.response_prompts(tokenizer),
                seed=self.cfg.data.seed,
                slots=self.prompt_slots,
                pad_id=tokenizer.pad_id,
                process_index=process_index,
                process_count=process_count,
                batch_size=batch_size,
            )
            return MixedStream(stream, prompts, self.cfg.distill.on_policy, self.cfg.data.seed)
        return stream

    @property
    def prompt_slots(self) -> int:
        return self.cfg.data.seq_len - self.cfg.distill.max_response_tokens

    def response_prompts(self, tokenizer) -> list[prompt_inputs.Prompt]:
        """The training conversations cut before their last assistant turn: what the
        student answers in on-policy steps."""
        key, _, records = prompt_inputs.split_records(self.cfg, held_out=False)
        prompts = []
        for where, record in records:
            messages = parse_conversation(record, where=where)
            last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
            if last <= 0:
                continue  # no assistant turn, or nothing before it: no prompt to answer
            ids = encode_chat_prompt(messages[:last], tokenizer)
            if len(ids) > self.prompt_slots:
                raise InputError(
                    f"{where}: the prompt before the last assistant turn is {len(ids)} tokens;"
                    f" at most {self.prompt_slots} fit (data.seq_len - "
                    "distill.max_response_tokens)"
                )
            text = tokenizer.decode(ids)
            prompts.append(prompt_inputs.Prompt(where, record, text, tuple(int(i) for i in ids)))
        if not prompts:
            raise InputError(f"{key}: no conversation with a prompt for on-policy steps")
        return prompts

    def prepare(self, *, tokenizer, workdir, state, graphdef, views, mesh, batch_size):
        if self.online:
            return
        cfg = self.cfg
        directory = teacher_topk_dir(cfg, workdir)
        rows_needed = self.total_steps * cfg.data.batch_size
        want = {
            "data": super().data_fingerprint(tokenizer.sha256),
            "seq_len": cfg.data.seq_len,
            "seed": cfg.data.seed,
            "top_k": cfg.distill.top_k,
            "temperature": cfg.distill.temperature,
        }
        if (directory / teacher_topk.MANIFEST).is_file():
            table = teacher_topk.TopKTable(directory)
            log(f"teacher top-k table {directory} ({table.manifest['rows']} rows)")
        else:
            teacher = self.load_teacher(mesh)
            where = (jax.process_index(), jax.process_count())
            batches = iter(super().train_stream(tokenizer, *where, batch_size))
            table = teacher_topk.compute_table(
                directory,
                batches=batches,
                num_batches=self.total_steps,
                teacher=teacher,
                mesh=mesh,
                top_k=cfg.distill.top_k,
                temperature=cfg.distill.temperature,
                manifest={**want, "teacher": self._teacher_identity()},
                log=log,
            )
            self.teacher = None  # the table holds what the run needs of it
        teacher_topk.check_manifest(table, want, rows_needed)
        self.table = table

    # -- steps ------------------------------------------------------------------------

    def steps(self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
        cfg = self.cfg
        teacher = self.load_teacher(mesh) if self.online else None
        common = dict(
            grad_accum=cfg.optim.grad_accum,
            z_loss=cfg.optim.z_loss,
            spike_factor=cfg.optim.spike_factor,
            spike_warmup_steps=cfg.optim.spike_warmup_steps,
            views=views,
        )
        token_bytes = jax.device_put(token_bytes, replicated(mesh))
        if teacher is None:
            step = make_distill_step(graphdef, optimizer, schedule, cfg.distill, **common)
            jitted = jit_train_step(
                lambda state, batch: step(state, batch, None), state_shardings, mesh
            )
            evaluate = jit_eval_step(make_eval_step(graphdef, views), state_shardings, mesh)
            return Steps(
                jitted,
                lambda state, batch: evaluate(state.params, state.frozen, batch, token_bytes),
            )
        step = make_distill_step(
            graphdef, optimizer, schedule, cfg.distill, teacher_graphdef=teacher.graphdef, **common
        )
        teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher.params)
        jitted = jit_train_step(step, state_shardings, mesh, extra=(teacher_shardings,))
        evaluate = jit_eval_step(
            make_teacher_eval_step(graphdef, teacher.graphdef, cfg.distill, views),
            state_shardings,
            mesh,
            extra=(teacher_shardings,),
        )
        on_policy = None
        if cfg.distill.on_policy > 0:
            on_policy = self._on_policy_step(graphdef, step, views, state_shardings, mesh)

        def train_step(state, batch):
            if on_policy is None:
                return jitted(state, batch, teacher.params)
            if "lengths" in batch:  # a prompt batch (MixedStream): the student answers
                state, metrics = on_policy(state, batch, teacher.params)
                return state, {**metrics, "on_policy": 1}
            state, metrics = jitted(state, batch, teacher.params)
            return state, {**metrics, "on_policy": 0, "response_tokens": float("nan")}

        def eval_step(state, batch):
            return evaluate(state.params, state.frozen, batch, token_bytes, teacher.params)

        return Steps(train_step, eval_step)

    def _on_policy_step(self, graphdef, step, views, state_shardings, mesh):
        """step(state, prompt batch, teacher) on the student's own sampled responses:
        sampling and the update in one jitted program."""
        cfg, d = self.cfg, self.cfg.distill
        tokenizer = self.tokenizer
        sample = make_rollout(
            cfg.model,
            graphdef,
            max_new_tokens=d.max_response_tokens,
            sampling=SamplingConfig(temperature=d.sample_temperature),
            stop_ids=tuple(int(i) for i in tokenizer.stop_ids),
            pad_id=int(tokenizer.pad_id),
        )

        def on_policy(state, batch, teacher_params):
            key = jax.random.fold_in(jax.random.key(cfg.train.seed), _ON_POLICY_SALT)
            key = jax.random.fold_in(key, batch["batch_index"][0])
            policy = jax.lax.stop_gradient(views.policy(state.params, state.frozen))
            out = sample(policy, batch["tokens"], batch["lengths"], key)
            sequences = response_batch(batch["tokens"], batch["lengths"], out.tokens, out.mask)
            new_state, metrics = step(state, sequences, teacher_params)
            return new_state, {**metrics, "response_tokens": jnp.mean(out.num_tokens)}

        teacher_shardings = jax.tree.map(lambda x: x.sharding, self.teacher.params)
        return jit_train_step(on_policy, state_shardings, mesh, extra=(teacher_shardings,))

    # -- reports ----------------------------------------------------------------------

    def summarize(self, results: list[dict[str, Any]]) -> dict[str, float]:
        out = next_token_summary(results)
        if "teacher_nll" in results[0]:
            sums = summed(results)
            tokens = max(sums["num_tokens"], 1.0)
            out["divergence"] = sums["divergence"] / tokens
            out["teacher_loss"] = sums["teacher_nll"] / tokens
            out["teacher_bits_per_byte"] = bits_per_byte(sums["teacher_nll"], sums["num_bytes"])
        return out

    def eval_text(self, summary):
        text = super().eval_text(summary)
        if "teacher_bits_per_byte" in summary:
            text += (
                f" (teacher {summary['teacher_bits_per_byte']:.4f} bits/byte, divergence "
                f"{summary['divergence']:.4f})"
            )
        return text

    def step_metrics(self, metrics):
        keys = ("divergence", "distill_loss", "response_tokens", "on_policy", "num_tokens")
        return {k: float(metrics[k]) for k in keys if k in metrics}


class DistillTextTask(DistillMixin, PretrainTask):
    """Distillation while pretraining on text."""


class DistillChatTask(DistillMixin, ChatTask):
    """Distillation on chat data (assistant tokens), optionally on-policy (GKD)."""


def teacher_topk_dir(cfg: Config, workdir) -> Path:
    return Path(cfg.distill.table) if cfg.distill.table else Path(workdir) / "teacher_topk"


def response_batch(prompts_BP, lengths_B, tokens_BR, mask_BR) -> dict[str, jax.Array]:
    """Prompt + sampled response as one left-aligned row per example, in the batch
    schema (jaxlm.data.packing): tokens, positions, segment_ids, targets and a
    loss_mask on the positions that predict a response token (its stop token too)."""
    B, P = prompts_BP.shape
    R = tokens_BR.shape[1]
    S = P + R
    n_B = jnp.sum(mask_BR, axis=1).astype(jnp.int32)
    s = jnp.arange(S)[None, :]
    from_prompt = s < lengths_B[:, None]
    response_at = jnp.clip(s - lengths_B[:, None], 0, R - 1)
    prompt_at = jnp.clip(s, 0, P - 1)
    tokens = jnp.where(
        from_prompt,
        jnp.take_along_axis(prompts_BP, jnp.broadcast_to(prompt_at, (B, S)), axis=1),
        jnp.take_along_axis(tokens_BR, response_at, axis=1),
    )
    end_B = lengths_B + n_B  # one past the last real token
    valid = s < end_B[:, None]
    tokens = jnp.where(valid, tokens, 0).astype(jnp.int32)
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((B, 1), jnp.int32)], axis=1)
    loss_mask = (s >= lengths_B[:, None] - 1) & (s < end_B[:, None] - 1)
    return {
        "tokens": tokens,
        "positions": jnp.where(valid, s, 0).astype(jnp.int32),
        "segment_ids": valid.astype(jnp.int32),
        "targets": jnp.where(loss_mask, targets, 0),
        "loss_mask": loss_mask.astype(jnp.int32),
    }


class MixedStream:
    """GKD's mixture: batch n is the student's own (a prompt batch) with probability λ,
    decided by hash(seed, n), else the data's; checkpointable like a Grain iterator."""

    def __init__(self, data, prompts, on_policy: float, seed: int):
        self.data, self.prompts = iter(data), iter(prompts)
        self.on_policy, self.seed, self.drawn = on_policy, seed, 0

    def __iter__(self):
        return self

    def choose(self, n: int) -> bool:
        u = np.random.default_rng([self.seed, n, 0x6B64]).random()
        return bool(u < self.on_policy)

    def __next__(self):
        on = self.choose(self.drawn)
        self.drawn += 1
        return next(self.prompts) if on else next(self.data)

    def get_state(self):
        return {
            "drawn": self.drawn,
            "data": self.data.get_state(),
            "prompts": self.prompts.get_state(),
        }

    def set_state(self, state) -> None:
        self.drawn = int(state["drawn"])
        self.data.set_state(state["data"])
        self.prompts.set_state(state["prompts"])


def _count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
