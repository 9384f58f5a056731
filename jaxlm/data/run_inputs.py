"""The data side of a training run, built from a Config: tokenizer, streams, eval set.

    ensure_tokenizer   load data.tokenizer, or train one on the training documents
    train_stream       the endless, checkpointable batch iterator of this process
    eval_batches       every held-out document once, equal batch counts on all hosts
    eval_texts         the held-out texts themselves (for the gzip baseline)
    data_fingerprint   what the stream was built from, to refuse a silent change on resume

Splits: with `data.eval_sources` empty, each source's documents are split by a stable
hash into training (1 - val_fraction) and held-out; otherwise training reads all of
`data.sources` and evaluation all of `data.eval_sources`.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grain
import numpy as np

from jaxlm.config import Config
from jaxlm.data.counters import DataCounters
from jaxlm.data.packing import padding_batch
from jaxlm.data.pipeline import dataset_from_specs
from jaxlm.data.source_spec import parse_sources
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import InputError


def train_split(cfg: Config) -> str:
    return "all" if cfg.data.eval_sources else "train"


def eval_specs_and_split(cfg: Config) -> tuple[str, str]:
    if cfg.data.eval_sources:
        return cfg.data.eval_sources, "all"
    return cfg.data.sources, "validation"


def open_sources(
    cfg: Config, specs: str, split: str, tokenizer_sha256: str | None
) -> list[tuple[str, grain.MapDataset]]:
    """(spec text, MapDataset of documents) for every source in `specs`."""
    from jaxlm.data.sources import open_source

    return [
        (
            str(spec),
            open_source(
                spec,
                text_field=cfg.data.text_field,
                on_error=cfg.data.on_bad_record,
                counters=DataCounters(),
                tokenizer_sha256=tokenizer_sha256,
                split=split,
                val_fraction=cfg.data.val_fraction,
            ),
        )
        for spec in parse_sources(specs)
    ]


def ensure_tokenizer(
    cfg: Config, workdir: Path, *, log: Callable[[str], None], is_leader: bool, barrier
) -> Tokenizer:
    """Load the configured tokenizer, or train one on the training documents.

    A run that continues a model (`train.init_from`: post-training, continued
    pretraining, context extension) must read text the way that model learnt it, so
    its tokenizer is data.tokenizer, else the tokenizer.model inside the init_from
    export or workdir; never a newly trained one (same vocabulary size, other pieces:
    a silently different model).
    """
    if cfg.data.tokenizer:
        return Tokenizer.load(Path(cfg.data.tokenizer))
    if cfg.data.format != "text" or cfg.train.init_from:
        inherited = Path(cfg.train.init_from) / "tokenizer.model" if cfg.train.init_from else None
        if inherited is None or not inherited.is_file():
            what = "train.init_from" if cfg.train.init_from else f"data.format={cfg.data.format}"
            raise InputError(
                f"{what} needs the model's tokenizer: set "
                "data.tokenizer, or train.init_from to an export or workdir that holds "
                f"tokenizer.model (looked for {inherited})"
            )
        # A copy in the workdir keeps the run self-contained (export, resume, inspect).
        copy = workdir / "tokenizer.model"
        if is_leader and not copy.exists():
            from jaxlm.data.tokenizer_metadata import sidecar_path

            shutil.copyfile(inherited, copy)
            if sidecar_path(inherited).is_file():
                shutil.copyfile(sidecar_path(inherited), sidecar_path(copy))
        barrier("tokenizer")
        log(f"tokenizer from train.init_from: {inherited} (copied to {copy})")
        return Tokenizer.load(copy)
    prefix = workdir / "tokenizer"
    model_path = prefix.with_suffix(".model")
    if not model_path.exists():
        if is_leader:
            log(f"training a {cfg.data.tokenizer_vocab_size}-piece tokenizer -> {model_path}")
            t0 = time.perf_counter()
            sources = open_sources(cfg, cfg.data.sources, train_split(cfg), None)
            train_tokenizer(
                interleaved_texts([source for _, source in sources]),
                prefix,
                vocab_size=cfg.data.tokenizer_vocab_size,
                max_chars=cfg.data.tokenizer_max_chars,
                seed=cfg.data.seed,
            )
            log(f"tokenizer trained in {time.perf_counter() - t0:.1f}s")
        barrier("tokenizer")
    tokenizer = Tokenizer.load(model_path)
    if tokenizer.vocab_size != cfg.model.vocab_size:
        raise InputError(
            f"{model_path}: tokenizer has {tokenizer.vocab_size} pieces but model.vocab_size="
            f"{cfg.model.vocab_size}"
        )
    return tokenizer


def interleaved_texts(sources: list[grain.MapDataset]) -> Iterator[str]:
    """Documents of all sources round-robin (so a tokenizer sees every source early)."""
    iterators = [iter(source.to_iter_dataset()) for source in sources]
    for group in itertools.zip_longest(*iterators):
        for text in group:
            if isinstance(text, str):
                yield text


def local_batch_size(cfg: Config, process_count: int) -> int:
    if cfg.data.batch_size % process_count:
        raise InputError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by {process_count} processes"
        )
    return cfg.data.batch_size // process_count


def train_stream(
    cfg: Config, tokenizer: Tokenizer, process_index: int, process_count: int
) -> grain.IterDataset:
    """This process's endless training batches (with counts under COUNTS_KEY)."""
    return dataset_from_specs(
        cfg.data.sources,
        tokenizer,
        split=train_split(cfg),
        text_field=cfg.data.text_field,
        val_fraction=cfg.data.val_fraction,
        on_error=cfg.data.on_bad_record,
        seq_len=cfg.data.seq_len,
        batch_size=local_batch_size(cfg, process_count),
        packer=cfg.data.packer,
        num_packing_bins=cfg.data.packing_bins,
        seed=cfg.data.seed,
        process_index=process_index,
        process_count=process_count,
        num_threads=cfg.data.reader_threads,
        shuffle_window=cfg.data.shuffle_window,
        workers=cfg.data.workers,
    )


def eval_batches(
    cfg: Config, tokenizer: Tokenizer, process_index: int, process_count: int, allgather_max
) -> list[dict[str, np.ndarray]]:
    """Every held-out document once, in fixed order; equal batch counts on all hosts.

    `allgather_max(n)` returns the largest n over processes; hosts with fewer batches
    append all-padding batches (no loss), so collectives stay in step.
    """
    specs, split = eval_specs_and_split(cfg)
    dataset = dataset_from_specs(
        specs,
        tokenizer,
        split=split,
        text_field=cfg.data.text_field,
        val_fraction=cfg.data.val_fraction,
        on_error=cfg.data.on_bad_record,
        max_documents=cfg.data.eval_max_docs,
        seq_len=cfg.data.seq_len,
        batch_size=local_batch_size(cfg, process_count),
        packer=cfg.data.packer,
        num_packing_bins=cfg.data.packing_bins,
        seed=cfg.data.seed,
        shuffle=False,
        repeat=False,
        process_index=process_index,
        process_count=process_count,
        num_threads=cfg.data.reader_threads,
    )
    batches = [{k: v for k, v in b.items() if not k.startswith("_")} for b in dataset]
    return equalize_batch_count(batches, allgather_max, cfg, tokenizer.pad_id)


def equalize_batch_count(batches, allgather_max, cfg: Config, pad_id: int):
    count = int(allgather_max(len(batches)))
    if count == 0:
        raise InputError(f"the evaluation sources {eval_specs_and_split(cfg)} gave no batches")
    shape = batches[0]["tokens"].shape if batches else None
    while len(batches) < count:  # all-padding batches carry no loss
        rows, seq_len = shape or (cfg.data.batch_size, cfg.data.seq_len)
        batches.append(padding_batch(rows, seq_len, pad_id=pad_id))
    return batches


def eval_texts(cfg: Config) -> list[str]:
    """The held-out texts (empty when the eval sources are pre-tokenized)."""
    specs, split = eval_specs_and_split(cfg)
    texts = []
    for _, source in open_sources(cfg, specs, split, None):
        if cfg.data.eval_max_docs:
            source = source[: cfg.data.eval_max_docs]
        texts.extend(doc for doc in source.to_iter_dataset() if isinstance(doc, str))
    return texts


def data_fingerprint(cfg: Config, tokenizer_sha256: str) -> dict[str, int]:
    """Documents per training source: a resumed run must see the same data."""
    return {
        spec: len(source)
        for spec, source in open_sources(cfg, cfg.data.sources, train_split(cfg), tokenizer_sha256)
    }


def check_fingerprint(saved: dict[str, int], now: dict[str, int], where: str) -> None:
    if saved == now:
        return
    changes = [
        f"{spec}: {saved.get(spec, 'absent')} -> {now.get(spec, 'absent')} documents"
        for spec in sorted(set(saved) | set(now))
        if saved.get(spec) != now.get(spec)
    ]
    raise InputError(
        f"{where}: the training data changed since this checkpoint was saved ("
        + "; ".join(changes)
        + "); resuming would read different documents. Restore the data or use a new --workdir"
    )
