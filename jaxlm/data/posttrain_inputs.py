"""The data side of a post-training run: chat (SFT) and preference batches from a Config.

`data.format=chat` reads conversations and trains only assistant tokens (the LM step
with the chat loss mask); `data.format=preference` reads chosen/rejected pairs into
`[B, 2, T]` batches for the preference step. Both read `jsonl:` sources (MiniMind's
`sft_*.jsonl` / `dpo.jsonl` unchanged, or `jaxlm data posttrain` output), optionally
weighted like text sources (`jsonl:sft.jsonl@1,jsonl:identity.jsonl@0.2`; see
`jsonl_sources`).

Which of the two a run reads is its Task's choice (jaxlm.training.tasks): it passes
`chat_pipeline` or `pair_pipeline` to the stream and eval functions here.

Held-out data: `data.eval_sources` when given; otherwise a stable `data.val_fraction`
of each file's lines (jaxlm.data.splits), never trained on.

What was skipped or cut (conversations without an assistant turn, truncated ones,
malformed lines in skip mode) travels inside each batch under COUNTS_KEY, like the
pretraining pipeline's counts, and ends up as `data_*` in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.config import Config
from jaxlm.data.chat import ChatStats
from jaxlm.data.content_digest import file_digest
from jaxlm.data.counters import COUNTS_KEY
from jaxlm.data.jsonl import BadLineCounter, line_offsets
from jaxlm.data.jsonl_records import WeightedFiles
from jaxlm.data.preference import WHERE_KEY, PreferenceStats, preference_dataset
from jaxlm.data.sft import sft_dataset
from jaxlm.data.sources.paths import matching_files, relative_names
from jaxlm.data.splits import held_out_split, training_split
from jaxlm.data.think import loss_mask_dtype
from jaxlm.errors import InputError
from jaxlm.source_spec import has_weights, parse_sources


def jsonl_sources(specs: str, key: str) -> list[WeightedFiles]:
    """The sources of `jsonl:PATTERN[@WEIGHT]` specs, each with its files and split names.

    Without any weight written, every file is one pool (each record equally likely,
    whatever file it is in), as before mixtures existed. With weights (any `@W`), each
    spec is one source of a weighted mixture, drawn as text sources are (jaxlm.
    source_spec): `jsonl:sft.jsonl@1,jsonl:identity.jsonl@0.2` gives the identity set
    one record in six, however few lines it has.
    """
    sources = []
    for spec in parse_sources(specs, key=key):
        if spec.kind != "jsonl":
            raise InputError(
                f"{key}: {spec} — chat and preference data are read from "
                "'jsonl:PATTERN' sources (optionally weighted: 'jsonl:PATTERN@WEIGHT')"
            )
        matched = matching_files(spec.pattern)
        sources.append(WeightedFiles(matched, relative_names(matched, spec.pattern), spec.weight))
    if has_weights(specs):
        return sources
    files = [file for source in sources for file in source.files]
    return [WeightedFiles(files, [name for source in sources for name in source.names])]


def jsonl_files(specs: str, key: str) -> tuple[list[Path], list[str]]:
    """Files of `jsonl:` specs and their split names (relative to each pattern's root)."""
    files, names = [], []
    for source in jsonl_sources(specs, key):
        files += source.files
        names += source.names
    return files, names


def _run_files(cfg: Config, with_eval: bool) -> list[tuple[str, Path]]:
    """(fingerprint key, file) of the training (and evaluation) files.

    The key is the file, with its weight when the training sources are a weighted
    mixture: a resume with other weights would read other records at the saved
    position, so it is refused like one on other data (as for weighted text sources).
    """
    keyed = []
    weighted = has_weights(cfg.data.sources)
    for source in jsonl_sources(cfg.data.sources, "data.sources"):
        suffix = f"@{source.weight:g}" if weighted else ""
        keyed += [(f"{file}{suffix}", file) for file in source.files]
    if with_eval and cfg.data.eval_sources:
        keyed += [(str(f), f) for f in jsonl_files(cfg.data.eval_sources, "data.eval_sources")[0]]
    return keyed


def lines_per_file(cfg: Config, *, with_eval: bool = False) -> dict[str, int]:
    """Non-blank lines per training file (and evaluation file): a resumed run must
    read the same data."""
    return {key: len(line_offsets(f)[0]) for key, f in _run_files(cfg, with_eval)}


def jsonl_content(cfg: Config, *, with_eval: bool = False) -> dict[str, str]:
    """The sampled content digest of every training file (and evaluation file), by
    path, as `lines_per_file` counts their lines."""
    return {key: file_digest(file) for key, file in _run_files(cfg, with_eval)}


def jsonl_fingerprint(cfg: Config, tokenizer_sha256: str) -> dict[str, Any]:
    """What the training files are, for a resumed run to check it reads the same data:
    run_inputs.text_fingerprint's keys, counted per file (non-blank lines) and
    digested per file (jaxlm.data.content_digest, at most 64 KiB read per file)."""
    return {
        "documents_per_source": lines_per_file(cfg),
        "content_per_source": jsonl_content(cfg),
        "tokenizer_sha256": tokenizer_sha256,
    }


class AttachStats:
    """Stage: puts the growth of the pipeline's stats since the last batch in the batch.

    The encode stage updates plain dataclass counters in this process (these pipelines
    read with one thread and no worker processes); the difference since the previous
    batch is shipped like jaxlm.data.counters does, so each count reaches DataTotals once.
    """

    def __init__(self, stats: ChatStats | PreferenceStats, bad_lines: BadLineCounter, kind: str):
        self.stats, self.bad_lines, self.kind = stats, bad_lines, kind
        self.seen: dict[str, int] = {}

    def current(self) -> dict[str, int]:
        now = {f"{self.kind}_{k}": v for k, v in dataclasses.asdict(self.stats).items()}
        now["malformed_lines"] = self.bad_lines.bad
        return now

    def __call__(self, batch: dict) -> dict:
        counts = {}
        for key, value in self.current().items():
            if value != self.seen.get(key, 0):
                counts[key] = value - self.seen.get(key, 0)
                self.seen[key] = value
        return {**batch, COUNTS_KEY: counts}


def chat_pipeline(cfg: Config, tokenizer, files: list[Path], **common):
    """Packed SFT rows of conversations (loss on assistant tokens only), with stats."""
    stats = ChatStats()
    data = sft_dataset(
        files,
        tokenizer,
        packer=cfg.data.packer,
        stats=stats,
        think_loss_weight=cfg.data.think_loss_weight,
        **common,
    )
    return data.map(AttachStats(stats, common["bad_lines"], "chat"))


def pair_pipeline(cfg: Config, tokenizer, files: list[Path], **common):
    """`[B, 2, T]` chosen/rejected batches, with stats."""
    stats = PreferenceStats()
    data = preference_dataset(
        files, tokenizer, stats=stats, think_loss_weight=cfg.data.think_loss_weight, **common
    )
    return data.map(AttachStats(stats, common["bad_lines"], "pairs"))


def _dataset(cfg: Config, tokenizer, pipeline, specs: str, key: str, **kwargs):
    sources = jsonl_sources(specs, key)
    return pipeline(
        cfg,
        tokenizer,
        [file for source in sources for file in source.files],
        seq_len=cfg.data.seq_len,
        pad_id=tokenizer.pad_id,
        seed=cfg.data.seed,
        on_error=cfg.data.on_bad_record,
        bad_lines=BadLineCounter(),
        val_fraction=cfg.data.val_fraction,
        sources=sources,
        **kwargs,
    )


def posttrain_train_stream(
    cfg: Config,
    tokenizer,
    process_index: int,
    process_count: int,
    batch_size: int,
    *,
    pipeline,
    **extra,
):
    """This process's endless, checkpointable batches of `pipeline` (chat_pipeline or
    pair_pipeline).

    `extra` goes to the pipeline (e.g. `reference_logps` for preference pairs)."""
    training = training_split(cfg)
    return _dataset(
        cfg,
        tokenizer,
        pipeline,
        training.specs,
        training.key,
        batch_size=batch_size,
        split=training.split,
        process_index=process_index,
        process_count=process_count,
        **extra,
    )


def posttrain_eval_batches(
    cfg: Config,
    tokenizer,
    process_index: int,
    process_count: int,
    batch_size: int,
    *,
    pipeline,
    **extra,
) -> list[dict[str, np.ndarray]]:
    """Every held-out conversation or pair of this process once, in file order."""
    held_out = held_out_split(cfg)
    data = _dataset(
        cfg,
        tokenizer,
        pipeline,
        held_out.specs,
        held_out.key,
        batch_size=batch_size,
        split=held_out.split,
        shuffle=False,
        repeat=False,
        process_index=process_index,
        process_count=process_count,
        **extra,
    )
    return [{k: v for k, v in b.items() if not k.startswith("_")} for b in data]


def all_pairs(
    cfg: Config, tokenizer, specs: str, key: str, process_index, process_count, batch_size
):
    """Every pair of `specs` (no split) once, with "_where": for jaxlm.training.reference_logps."""
    data = _dataset(
        cfg,
        tokenizer,
        pair_pipeline,
        specs,
        key,
        batch_size=batch_size,
        split="all",
        shuffle=False,
        repeat=False,
        process_index=process_index,
        process_count=process_count,
    )
    return [{k: v for k, v in b.items() if not k.startswith("_") or k == WHERE_KEY} for b in data]


def empty_pairs(
    batch_size: int,
    seq_len: int,
    pad_id: int,
    *,
    ref_logps: bool = False,
    think_loss_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """A `[B, 2, T]` preference batch with no valid pair (fills uneven hosts' eval sets);
    `ref_logps` adds zero reference log-probs, to match precomputed-reference batches;
    its loss_mask has the dtype of the run's real batches (jaxlm.data.think)."""
    zeros = np.zeros((batch_size, 2, seq_len), np.int32)
    names = ("targets", "positions", "segment_ids")
    batch = {"tokens": np.full_like(zeros, pad_id), **{k: zeros.copy() for k in names}}
    batch["loss_mask"] = np.zeros_like(zeros, loss_mask_dtype(think_loss_weight))
    if ref_logps:
        batch["ref_logps"] = np.zeros((batch_size, 2), np.float32)
    return batch
