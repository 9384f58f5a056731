"""The data side of a post-training run: chat (SFT) and preference batches from a Config.

`data.format=chat` reads conversations and trains only assistant tokens (the LM step
with the chat loss mask); `data.format=preference` reads chosen/rejected pairs into
`[B, 2, T]` batches for the preference step. Both read `jsonl:` sources (MiniMind's
`sft_*.jsonl` / `dpo.jsonl` unchanged, or `jaxlm data posttrain` output).

Held-out data: `data.eval_sources` when given; otherwise a stable `data.val_fraction`
of each file's lines (jaxlm.data.sources.split), never trained on.

What was skipped or cut (conversations without an assistant turn, truncated ones,
malformed lines in skip mode) travels inside each batch under COUNTS_KEY, like the
pretraining pipeline's counts, and ends up as `data_*` in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxlm.config import Config
from jaxlm.data.chat import ChatStats
from jaxlm.data.counters import COUNTS_KEY
from jaxlm.data.jsonl import BadLineCounter
from jaxlm.data.preference import WHERE_KEY, PreferenceStats, preference_dataset
from jaxlm.data.sft import sft_dataset
from jaxlm.data.sources.paths import matching_files, relative_names
from jaxlm.errors import InputError
from jaxlm.source_spec import parse_sources


def jsonl_files(specs: str, key: str) -> tuple[list[Path], list[str]]:
    """Files of `jsonl:` specs and their split names (relative to each pattern's root)."""
    files, names = [], []
    for spec in parse_sources(specs, key=key):
        if spec.kind != "jsonl" or spec.weight != 1.0:
            raise InputError(
                f"{key}: {spec} — chat and preference data are read from unweighted "
                "'jsonl:PATTERN' sources"
            )
        matched = matching_files(spec.pattern)
        files += matched
        names += relative_names(matched, spec.pattern)
    return files, names


def lines_per_file(cfg: Config, *, with_eval: bool = False) -> dict[str, int]:
    """Non-blank lines per training file (and evaluation file): a resumed run must
    read the same data."""
    from jaxlm.data.jsonl import line_offsets

    files, _ = jsonl_files(cfg.data.sources, "data.sources")
    if with_eval and cfg.data.eval_sources:
        files += jsonl_files(cfg.data.eval_sources, "data.eval_sources")[0]
    return {str(f): len(line_offsets(f)[0]) for f in files}


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


def _dataset(cfg: Config, tokenizer, specs: str, key: str, **kwargs):
    files, names = jsonl_files(specs, key)
    bad_lines = BadLineCounter()
    common = dict(
        seq_len=cfg.data.seq_len,
        pad_id=tokenizer.pad_id,
        seed=cfg.data.seed,
        on_error=cfg.data.on_bad_record,
        bad_lines=bad_lines,
        val_fraction=cfg.data.val_fraction,
        names=names,
        **kwargs,
    )
    if cfg.data.format == "chat":
        stats = ChatStats()
        data = sft_dataset(files, tokenizer, packer=cfg.data.packer, stats=stats, **common)
        return data.map(AttachStats(stats, bad_lines, "chat"))
    stats = PreferenceStats()
    data = preference_dataset(files, tokenizer, stats=stats, **common)
    return data.map(AttachStats(stats, bad_lines, "pairs"))


def posttrain_train_stream(
    cfg: Config,
    tokenizer,
    process_index: int,
    process_count: int,
    batch_size: int,
    **extra,
):
    """This process's endless, checkpointable chat or preference batches.

    `extra` goes to the pipeline (e.g. `reference_logps` for preference pairs)."""
    return _dataset(
        cfg,
        tokenizer,
        cfg.data.sources,
        "data.sources",
        batch_size=batch_size,
        split="all" if cfg.data.eval_sources else "train",
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
    **extra,
) -> list[dict[str, np.ndarray]]:
    """Every held-out conversation or pair of this process once, in file order."""
    specs, key = (
        (cfg.data.eval_sources, "data.eval_sources")
        if cfg.data.eval_sources
        else (cfg.data.sources, "data.sources")
    )
    data = _dataset(
        cfg,
        tokenizer,
        specs,
        key,
        batch_size=batch_size,
        split="all" if cfg.data.eval_sources else "validation",
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
    batch_size: int, seq_len: int, pad_id: int, *, ref_logps: bool = False
) -> dict[str, np.ndarray]:
    """A `[B, 2, T]` preference batch with no valid pair (fills uneven hosts' eval sets);
    `ref_logps` adds zero reference log-probs, to match precomputed-reference batches."""
    zeros = np.zeros((batch_size, 2, seq_len), np.int32)
    names = ("targets", "loss_mask", "positions", "segment_ids")
    batch = {"tokens": np.full_like(zeros, pad_id), **{k: zeros.copy() for k in names}}
    if ref_logps:
        batch["ref_logps"] = np.zeros((batch_size, 2), np.float32)
    return batch
