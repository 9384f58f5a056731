"""The data side of a training run, built from a Config: tokenizer, streams, eval set.

    ensure_tokenizer   the workdir's own tokenizer: trained there on the training
                       documents, or copied in from data.tokenizer / train.init_from
    train_stream       the endless, checkpointable batch iterator of this process
    eval_batches       every held-out document once, equal batch counts on all hosts
    eval_texts         the held-out texts themselves (for the gzip baseline)
    text_fingerprint   what the stream was built from (counts, sampled content, tokenizer)
    check_fingerprint  refuses a resume on other data, or warns (data.allow_changed_data)

Which documents train and which are held out: jaxlm.data.splits. The chat and
preference counterparts are in jaxlm.data.posttrain_inputs; a run's Task
(jaxlm.training.tasks) chooses between them.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grain
import numpy as np

from jaxlm.config import Config, config_from_dict
from jaxlm.data import content_digest
from jaxlm.data.counters import DataCounters
from jaxlm.data.packing import padding_batch
from jaxlm.data.pipeline import dataset_from_specs
from jaxlm.data.sources import open_source
from jaxlm.data.splits import held_out_split, training_split
from jaxlm.data.think import loss_mask_dtype
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.data.tokenizer_files import load_tokenizer, stored_name, stored_tokenizer
from jaxlm.data.workdir_tokenizer import (
    TOKENIZER_FILE,
    adopt_tokenizer,
    file_sha256,
    owned_tokenizer,
    same_tokenizer,
)
from jaxlm.errors import InputError
from jaxlm.source_spec import parse_sources


def open_sources(
    cfg: Config, specs: str, split: str, tokenizer_sha256: str | None
) -> list[tuple[str, grain.MapDataset]]:
    """(spec text, MapDataset of documents) for every source in `specs`."""
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
    cfg: Config,
    workdir: Path,
    *,
    log: Callable[[str], None],
    is_leader: bool,
    barrier,
    may_train: bool,
) -> Tokenizer:
    """The run's tokenizer: the workdir's own copy, <workdir>/tokenizer.model.

    It is trained there (when `may_train`, i.e. a pretraining run on text, and neither
    data.tokenizer nor train.init_from gives one), or copied there once, at
    the start of the run, from data.tokenizer, else from the tokenizer.model inside
    `train.init_from` (a run that continues a model reads text the way that model
    learnt it: never a newly trained tokenizer, same size with other pieces). Every
    later reader uses the copy (jaxlm.data.workdir_tokenizer), whatever
    directory it runs in.
    A caller that only looks at the data before any run created the workdir (`jaxlm
    data inspect`) gets the given tokenizer, and nothing is written.

    Refused, naming both files:
      - a tokenizer to copy in whose content differs from the workdir's copy (e.g. a
        resume from another directory where the relative data.tokenizer names some
        other file); a data.tokenizer that does not exist here leaves the copy in use;
      - data.tokenizer differing by content from the `train.init_from` model's
        tokenizer (same vocabulary size, other pieces: a silently scrambled model),
        unless `train.allow_tokenizer_change` says it is vocabulary surgery.
    """
    source = _tokenizer_to_copy(cfg, may_train)
    if source is None:
        return _trained_tokenizer(cfg, workdir, log=log, is_leader=is_leader, barrier=barrier)
    if cfg.data.tokenizer and cfg.train.init_from:
        _check_init_from_tokenizer(cfg, log)
    own = stored_tokenizer(workdir) or workdir / stored_name(source)
    have_copy = own.is_file()
    # Every process looks before the leader writes: one that looked after the copy
    # appeared would skip the barrier below, and its next collective (the data check
    # of the first device_put) would meet the others' barrier in gloo, which aborts.
    barrier("tokenizer_looked")
    if have_copy:
        if source.exists() and not same_tokenizer(source, own):
            raise InputError(
                f"{source} (the tokenizer this run was given) differs from {own}, the "
                f"tokenizer {workdir} was trained with (sha256 {file_sha256(source)[:12]} "
                f"vs {file_sha256(own)[:12]}); point data.tokenizer at the run's own "
                "tokenizer, or use a new --workdir"
            )
        if not source.exists():
            log(f"{source} not found here; using the workdir's own tokenizer {own}")
        return load_tokenizer(own)
    given = load_tokenizer(source)  # a file that is no tokenizer is refused before it is copied
    if not workdir.is_dir():  # a look at the data before any run (jaxlm data inspect)
        return given
    if is_leader:
        adopt_tokenizer(source, workdir)
    barrier("tokenizer")
    log(f"tokenizer {source} copied to {own}")
    return load_tokenizer(own)


def _tokenizer_to_copy(cfg: Config, may_train: bool) -> Path | None:
    """data.tokenizer, else init_from's tokenizer; None when the run trains its own."""
    if cfg.data.tokenizer:
        return Path(cfg.data.tokenizer).absolute()
    if may_train and not cfg.train.init_from:
        return None
    # Only a copy the model's directory holds; never one its config merely names (a
    # grow-vocab output without --tokenizer names the smaller tokenizer it grew from).
    init_from = Path(cfg.train.init_from).absolute() if cfg.train.init_from else None
    inherited = init_from and (stored_tokenizer(init_from) or init_from / TOKENIZER_FILE)
    if inherited is None or not inherited.is_file():
        what = "train.init_from" if cfg.train.init_from else f"data.format={cfg.data.format}"
        raise InputError(
            f"{what} needs the model's tokenizer: set data.tokenizer, or train.init_from to "
            f"an export or workdir that holds {TOKENIZER_FILE} (looked for {inherited})"
        )
    return inherited


def _init_from_tokenizer(cfg: Config) -> Path | None:
    """The tokenizer of the `train.init_from` model, when it has one or names one."""
    init_from = Path(cfg.train.init_from).absolute()
    saved = ""
    config_file = init_from / "config.json"
    if stored_tokenizer(init_from) is None and config_file.is_file():
        # An older directory (or grow-vocab without --tokenizer) names its tokenizer.
        saved = config_from_dict(json.loads(config_file.read_text(encoding="utf-8"))).data.tokenizer
    return owned_tokenizer(init_from, saved)


def _check_init_from_tokenizer(cfg: Config, log: Callable[[str], None]) -> None:
    given, inherited = Path(cfg.data.tokenizer).absolute(), _init_from_tokenizer(cfg)
    if inherited is None or not given.is_file():
        if inherited is None:
            log(f"train.init_from={cfg.train.init_from} has no tokenizer to compare with {given}")
        return
    if same_tokenizer(given, inherited):
        return
    what = (
        f"data.tokenizer {given} differs from {inherited}, the tokenizer of the "
        f"train.init_from model (sha256 {file_sha256(given)[:12]} vs "
        f"{file_sha256(inherited)[:12]})"
    )
    if not cfg.train.allow_tokenizer_change:
        raise InputError(
            f"{what}: the model's embeddings would read other ids. Leave data.tokenizer "
            "unset to use the model's own, or set train.allow_tokenizer_change=true for "
            "vocabulary surgery (jaxlm checkpoint grow-vocab)"
        )
    log(f"warning: {what}; accepted (train.allow_tokenizer_change=true)")


def _trained_tokenizer(
    cfg: Config, workdir: Path, *, log: Callable[[str], None], is_leader: bool, barrier
) -> Tokenizer:
    """The tokenizer trained into the workdir on the training documents (once)."""
    prefix = workdir / "tokenizer"
    model_path = prefix.with_suffix(".model")
    missing = not model_path.exists()
    barrier("tokenizer_looked")  # before the leader writes it (see ensure_tokenizer)
    if missing:
        if is_leader:
            log(f"training a {cfg.data.tokenizer_vocab_size}-piece tokenizer -> {model_path}")
            t0 = time.perf_counter()
            training = training_split(cfg)
            sources = open_sources(cfg, training.specs, training.split, None)
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
    cfg: Config, tokenizer: Tokenizer, process_index: int, process_count: int, *, repeat=True
) -> grain.IterDataset:
    """This process's endless training batches (with counts under COUNTS_KEY).

    `repeat=False` gives one pass, read in this process (no Grain workers): what
    `train.epochs` counts (jaxlm.training.epochs), built here so the two cannot differ.
    """
    return dataset_from_specs(
        cfg.data.sources,
        tokenizer,
        split=training_split(cfg).split,
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
        repeat=repeat,
        num_threads=cfg.data.reader_threads,
        shuffle_window=cfg.data.shuffle_window,
        workers=cfg.data.workers if repeat else 0,
    )


def eval_batches(
    cfg: Config, tokenizer: Tokenizer, process_index: int, process_count: int, allgather_max
) -> list[dict[str, np.ndarray]]:
    """Every held-out document once, in fixed order; equal batch counts on all hosts.

    `allgather_max(n)` returns the largest n over processes; hosts with fewer batches
    append all-padding batches (no loss), so collectives stay in step.
    """
    held_out = held_out_split(cfg)
    dataset = dataset_from_specs(
        held_out.specs,
        tokenizer,
        split=held_out.split,
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
        held_out = held_out_split(cfg)
        raise InputError(
            f"the evaluation sources {(held_out.specs, held_out.split)} gave no batches"
        )
    shape = batches[0]["tokens"].shape if batches else None
    while len(batches) < count:  # all-padding batches carry no loss
        rows, seq_len = shape or (cfg.data.batch_size, cfg.data.seq_len)
        filler = padding_batch(rows, seq_len, pad_id=pad_id)
        # The dtype of the run's real batches (float32 loss weights of chat data under a
        # fractional think_loss_weight: jaxlm.data.think; text batches are int32).
        chat = cfg.data.format != "text"
        dtype = loss_mask_dtype(cfg.data.think_loss_weight) if chat else np.int32
        filler["loss_mask"] = filler["loss_mask"].astype(dtype)
        batches.append(filler)
    return batches


def eval_texts(cfg: Config) -> list[str]:
    """The held-out texts (empty when the eval sources are pre-tokenized)."""
    held_out = held_out_split(cfg)
    texts = []
    for _, source in open_sources(cfg, held_out.specs, held_out.split, None):
        if cfg.data.eval_max_docs:
            source = source[: cfg.data.eval_max_docs]
        texts.extend(doc for doc in source.to_iter_dataset() if isinstance(doc, str))
    return texts


def text_fingerprint(cfg: Config, tokenizer_sha256: str) -> dict[str, Any]:
    """What the training text is, for a resumed run to check it reads the same data.

    documents_per_source  documents per source: what the data position counts
    content_per_source    a sampled sha256 of every source's files
                          (jaxlm.data.content_digest, at most 64 KiB read per file,
                          whatever its size)
    tokenizer_sha256      the tokenizer the batches were made with

    posttrain_inputs.jsonl_fingerprint has the same keys for chat and preference data.
    """
    training = training_split(cfg)
    counts = {
        spec: len(source)
        for spec, source in open_sources(cfg, training.specs, training.split, tokenizer_sha256)
    }
    content = {
        str(spec): content_digest.files_digest(*content_digest.source_files(spec))
        for spec in parse_sources(cfg.data.sources)
    }
    return {
        "documents_per_source": counts,
        "content_per_source": content,
        "tokenizer_sha256": tokenizer_sha256,
    }


def check_fingerprint(
    saved: dict[str, Any], now: dict[str, Any], where: str, cfg: Config, log: Callable[[str], None]
) -> None:
    """Refuses a resume whose data or tokenizer is not the checkpoint's.

    `saved` is the checkpoint's data item (text_fingerprint's keys among others). A
    different document count or tokenizer is always refused: the saved data position
    would point at other documents. Changed content with the same counts is refused
    too, unless `data.allow_changed_data` accepts it with a logged warning. A
    checkpoint from before content fingerprints is checked on its counts alone.
    """
    _check_counts(saved["documents_per_source"], now["documents_per_source"], where)
    if "teacher" in now and saved.get("teacher", now["teacher"]) != now["teacher"]:
        raise InputError(
            f"{where}: the checkpoint was distilled from teacher {saved['teacher']}; this "
            f"run's is {now['teacher']} (other params or source). Restore that teacher or "
            "use a new --workdir"
        )
    if "content_per_source" not in saved:
        log(f"note: {where} predates data content fingerprints; only document counts were compared")
        return
    if saved["tokenizer_sha256"] != now["tokenizer_sha256"]:
        raise InputError(
            f"{where}: the checkpoint was trained with tokenizer sha256 "
            f"{saved['tokenizer_sha256']}, this run's has {now['tokenizer_sha256']}; the "
            "workdir's tokenizer.model was replaced. Restore it or use a new --workdir"
        )
    old, new = saved["content_per_source"], now["content_per_source"]
    changed = sorted(source for source in new if old.get(source) != new[source])
    if not changed:
        return
    what = (
        f"the content of the training data changed since this checkpoint was saved "
        f"({', '.join(changed)}: same document count, other sampled bytes)"
    )
    if not cfg.data.allow_changed_data:
        raise InputError(
            f"{where}: {what}; resuming would read other documents at the saved position. "
            "Restore the data, use a new --workdir, or set data.allow_changed_data=true "
            "to continue on the new data"
        )
    log(f"warning: {where}: {what}; continuing (data.allow_changed_data=true)")


def _check_counts(saved: dict[str, int], now: dict[str, int], where: str) -> None:
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
