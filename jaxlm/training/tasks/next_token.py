"""Next-token prediction: pretraining on text (`data.format=text`) and SFT on chat
(`data.format=chat`).

Both train the same loss with the same step (jaxlm.training.steps.make_lm_step); they
differ only in their data: SFT's loss_mask keeps the assistant tokens alone. Both
evaluate held-out loss per supervised token and bits per byte, summed by
`next_token_summary`, which `jaxlm eval` uses too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax

from jaxlm.data import posttrain_inputs, run_inputs
from jaxlm.sharding import replicated
from jaxlm.training import epochs
from jaxlm.training.hosts import allgather_max
from jaxlm.training.metrics import (
    bits_per_byte,
    gzip_bits_per_byte,
    stronger_compressors_bits_per_byte,
)
from jaxlm.training.steps import jit_eval_step, jit_train_step, make_eval_step, make_lm_step
from jaxlm.training.tasks.base import Steps, Task, summed


class NextTokenTask(Task):
    """What pretraining and SFT share: the step, the eval sums and their report."""

    def steps(self, graphdef, optimizer, schedule, state_shardings, mesh, views, token_bytes):
        cfg = self.cfg
        step = make_lm_step(
            graphdef,
            optimizer,
            schedule,
            grad_accum=cfg.optim.grad_accum,
            z_loss=cfg.optim.z_loss,
            spike_factor=cfg.optim.spike_factor,
            spike_warmup_steps=cfg.optim.spike_warmup_steps,
            views=views,
        )
        evaluate = jit_eval_step(make_eval_step(graphdef, views), state_shardings, mesh)
        token_bytes = jax.device_put(token_bytes, replicated(mesh))

        def eval_step(state, batch):
            return evaluate(state.params, state.frozen, batch, token_bytes)

        return Steps(jit_train_step(step, state_shardings, mesh), eval_step)

    def summarize(self, results: list[dict[str, Any]]) -> dict[str, float]:
        return next_token_summary(results)

    def eval_text(self, summary: dict[str, float]) -> str:
        return f"loss {summary['loss']:.4f}, {summary['bits_per_byte']:.4f} bits/byte"


class PretrainTask(NextTokenTask):
    """Packed documents of text sources; the run may train its own tokenizer."""

    trains_tokenizer: ClassVar[bool] = True
    token_eval_format: ClassVar[str | None] = "text"

    def train_stream(self, tokenizer, process_index, process_count, batch_size):
        return run_inputs.train_stream(self.cfg, tokenizer, process_index, process_count)

    def eval_batches(self, tokenizer, process_index, process_count, batch_size):
        return run_inputs.eval_batches(
            self.cfg, tokenizer, process_index, process_count, allgather_max
        )

    def data_fingerprint(self, tokenizer_sha256):
        return run_inputs.text_fingerprint(self.cfg, tokenizer_sha256)

    def one_epoch(self, tokenizer):
        return epochs.text_epoch(self.cfg, tokenizer)

    def finish(self, result) -> None:
        texts = run_inputs.eval_texts(self.cfg)
        if texts:
            result.gzip_bits_per_byte, _ = gzip_bits_per_byte(texts)
            result.compressors = stronger_compressors_bits_per_byte(texts)
        else:
            result.gzip_note = "the held-out sources are pre-tokenized: no text to compress"


class ChatTask(NextTokenTask):
    """Packed conversations of `jsonl:` sources; only assistant tokens carry loss."""

    token_eval_format: ClassVar[str | None] = "chat"

    def train_stream(self, tokenizer, process_index, process_count, batch_size):
        return posttrain_inputs.posttrain_train_stream(
            self.cfg,
            tokenizer,
            process_index,
            process_count,
            batch_size,
            pipeline=posttrain_inputs.chat_pipeline,
        )

    def eval_batches(self, tokenizer, process_index, process_count, batch_size):
        batches = posttrain_inputs.posttrain_eval_batches(
            self.cfg,
            tokenizer,
            process_index,
            process_count,
            batch_size,
            pipeline=posttrain_inputs.chat_pipeline,
        )
        return run_inputs.equalize_batch_count(batches, allgather_max, self.cfg, tokenizer.pad_id)

    def data_fingerprint(self, tokenizer_sha256):
        return posttrain_inputs.jsonl_fingerprint(self.cfg, tokenizer_sha256)

    def finish(self, result) -> None:
        # bits_per_byte counts the assistant tokens' bytes only; gzip would have to
        # compress whole conversations, prompts included, which is not the same task.
        result.gzip_note = "loss on assistant tokens only; gzip would see whole conversations"

    def one_epoch(self, tokenizer):
        return epochs.posttrain_epoch(self.cfg, tokenizer, posttrain_inputs.chat_pipeline)


def next_token_summary(results: list[dict[str, Any]]) -> dict[str, float]:
    """Loss per supervised token and bits per byte from `make_eval_step`'s sums.

    Bits per byte = total nats over the scored tokens / (ln 2 * the UTF-8 bytes those
    tokens decode to); `jaxlm eval` reports the same numbers.
    """
    sums = summed(results)
    return {
        "loss": sums["nll"] / max(sums["num_tokens"], 1.0),
        "bits_per_byte": bits_per_byte(sums["nll"], sums["num_bytes"]),
        "tokens": sums["num_tokens"],
        "bytes": sums["num_bytes"],
    }
