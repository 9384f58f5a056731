"""Loss, perplexity and bits per byte of a trained model on data sources (`jaxlm eval`).

    model = load_model("exports/quickstart")
    [result] = evaluate_sources(model, [EvalSource("stdlib", split="validation")],
                                seq_len=256, batch_size=8, max_docs=50)
    result.loss, result.perplexity, result.bits_per_byte

A source is read, tokenized and packed exactly as a training run's held-out evaluation
reads its own (the eval batches of the run's Task, jaxlm.training.tasks):
every document once, in file order, as `[BOS] + text + [EOS]`, cut into pieces of at
most `seq_len` tokens, packed with the run's packer. It is scored by the training
run's eval step (jaxlm.training.steps.make_eval_step) and summed the same way
(jaxlm.training.tasks.next_token.next_token_summary), so for the same data, seq_len and max_docs
the numbers equal the `eval` records of the run's metrics.jsonl.

    tokens         scored (target) tokens: every token but the first of each piece,
                   EOS included; chat data: assistant tokens and their <|im_end|>
    loss           total nats / tokens
    perplexity     exp(loss)
    bits_per_byte  total nats / (ln 2 * UTF-8 bytes those tokens decode to), bytes from
                   the tokenizer's per-piece lengths (EOS and BOS count 0 bytes, a chat
                   marker the length of its text); comparable across tokenizers and
                   with gzip. The nats of EOS are counted, its bytes are not.

Runs in one process, data parallel over the local devices that divide the batch
(params replicated); --set model.* overrides (RoPE scaling, a longer max_seq_len) go
to jaxlm.inference.loading.load_model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import numpy as np

from jaxlm.config import Config
from jaxlm.data.splits import held_out_split
from jaxlm.errors import InputError
from jaxlm.inference.loading import LoadedModel
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.source_spec import parse_sources
from jaxlm.training.metrics import bits_per_byte
from jaxlm.training.steps import jit_eval_step, make_eval_step
from jaxlm.training.tasks import task_for
from jaxlm.training.tasks.next_token import next_token_summary

EvalSplit = Literal["all", "validation"]
EvalFormat = Literal["text", "chat"]


@dataclasses.dataclass(frozen=True)
class EvalSource:
    """One source to evaluate on.

    `spec` is in jaxlm.source_spec syntax (`stdlib`, `jsonl:data/*.jsonl`, ...).
    split "all" reads every document; "validation" the held-out part that a run
    training on this source left out (data.val_fraction's stable split). format "chat"
    reads conversations and scores only assistant tokens, as an SFT run's eval does.
    """

    spec: str
    split: EvalSplit = "all"
    format: EvalFormat = "text"


@dataclasses.dataclass(frozen=True)
class SourceResult:
    source: str
    split: str
    format: str
    tokens: int
    bytes: int
    nats: float  # summed over the scored tokens
    seconds: float

    @property
    def loss(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nats, self.bytes)

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def combined(results: Sequence[SourceResult], name: str = "all") -> SourceResult:
    """The results of several sources as one (token-weighted loss, byte-weighted bpb)."""
    return SourceResult(
        source=name,
        split="/".join(sorted({r.split for r in results})),
        format="/".join(sorted({r.format for r in results})),
        tokens=sum(r.tokens for r in results),
        bytes=sum(r.bytes for r in results),
        nats=sum(r.nats for r in results),
        seconds=sum(r.seconds for r in results),
    )


def run_sources(cfg: Config) -> list[EvalSource]:
    """The sources the run itself evaluated on (data.eval_sources, else its held-out split)."""
    eval_format = task_for(cfg).token_eval_format
    if eval_format is None:
        raise InputError(
            f"{cfg.name}: a {cfg.data.format} run's held-out data are pairs, which have no "
            "single loss; pass --data (e.g. --data stdlib --split validation, or --format "
            "chat --data jsonl:sft_val.jsonl)"
        )
    held_out = held_out_split(cfg)
    return [EvalSource(str(s), held_out.split, eval_format) for s in parse_sources(held_out.specs)]


def source_config(
    cfg: Config,
    source: EvalSource,
    *,
    seq_len: int,
    batch_size: int,
    max_docs: int,
    text_field: str | None = None,
    tokenizer_path: str | None = None,
) -> Config:
    """`cfg` with its data section reading `source` as the run's held-out set.

    `tokenizer_path` (the loaded model's) lets `tokens:` sources check their tokenizer.
    """
    if source.split not in ("all", "validation"):
        raise InputError(f"--split: must be 'all' or 'validation', got {source.split!r}")
    if source.split == "all":
        sources, eval_sources = cfg.data.sources, source.spec
    else:  # eval_sources empty: the held-out split of data.sources
        sources, eval_sources = source.spec, ""
    data = dataclasses.replace(
        cfg.data,
        sources=sources,
        eval_sources=eval_sources,
        format=source.format,
        seq_len=seq_len,
        batch_size=batch_size,
        eval_max_docs=max_docs,
        text_field=text_field or cfg.data.text_field,
        tokenizer=tokenizer_path or cfg.data.tokenizer,
    )
    return dataclasses.replace(cfg, data=data)


def source_batches(cfg: Config, tokenizer) -> list[dict[str, np.ndarray]]:
    """The held-out batches of `cfg`'s data section, as a training run builds them."""
    return task_for(cfg).eval_batches(tokenizer, 0, 1, cfg.data.batch_size)


def data_parallel_mesh(batch_size: int):
    """A data-parallel mesh over the local devices that divide `batch_size`."""
    devices = jax.local_devices()
    count = math.gcd(batch_size, len(devices))
    return make_mesh((count, 1, 1), devices[:count])


def place_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """A host batch on the model's devices (batch-sharded over `mesh` when there is one)."""
    if mesh is None:
        return {k: jax.numpy.asarray(v) for k, v in batch.items()}
    return host_batch_to_global(batch, mesh)


def mesh_context(mesh):
    """`jax.set_mesh(mesh)`, or nothing without a mesh."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def evaluate_sources(
    model: LoadedModel,
    sources: Sequence[EvalSource],
    *,
    seq_len: int,
    batch_size: int,
    max_docs: int = 0,
    text_field: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[SourceResult]:
    """Each source's scored tokens, bytes and nats (see the module docstring).

    `max_docs` > 0 reads only the first that many documents of each source.
    """
    if seq_len > model.cfg.model.max_seq_len:
        raise InputError(
            f"--seq-len {seq_len} exceeds model.max_seq_len={model.cfg.model.max_seq_len} "
            "(raise it with --set model.max_seq_len=N, with RoPE scaling if the model needs it)"
        )
    step = jit_eval_step(make_eval_step(model.graphdef))
    token_bytes = jax.numpy.asarray(model.tokenizer.token_bytes())
    results = []
    for source in sources:
        t0 = time.perf_counter()
        cfg = source_config(
            model.cfg,
            source,
            seq_len=seq_len,
            batch_size=batch_size,
            max_docs=max_docs,
            text_field=text_field,
            tokenizer_path=str(model.tokenizer.path),
        )
        batches = source_batches(cfg, model.tokenizer)
        with mesh_context(model.mesh):
            sums = [
                step(model.params, None, place_batch(b, model.mesh), token_bytes) for b in batches
            ]
            summary = next_token_summary(jax.device_get(sums))
        result = SourceResult(
            source=source.spec,
            split=source.split,
            format=source.format,
            tokens=round(summary["tokens"]),
            bytes=round(summary["bytes"]),
            nats=summary["loss"] * summary["tokens"],
            seconds=time.perf_counter() - t0,
        )
        log(
            f"{result.source} ({result.split}): {result.tokens} tokens, loss {result.loss:.4f}, "
            f"{result.bits_per_byte:.4f} bits/byte in {result.seconds:.1f}s"
        )
        results.append(result)
    return results
