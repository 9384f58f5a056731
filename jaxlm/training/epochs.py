"""A run's length in epochs: `train.epochs` turned into optimizer steps, exactly.

One epoch is one pass over the training split of `data.sources`, packed the way the
run packs it (its seq_len, packer, packing bins, seed and shuffle order), counted in
sequences: packed rows for text and chat data, pairs for preference data (a
preference batch holds data.batch_size pairs). The count is made before the first
step by running the run's own pipeline once without repeating (every process counts
the whole data, so all of them agree without talking), and

    steps = ceil(train.epochs * sequences / data.batch_size)

rounded up, so every sequence of the last (partial) epoch is trained; the last batch
may then begin the next pass. The training stream itself is endless and packs
across epoch boundaries, so "epoch" means this many sequences, not a fence in the
stream. Weighted sources (`@W`) change the proportions the stream draws from, not
this count: one epoch is as many sequences as every document once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np

from jaxlm.config import Config
from jaxlm.data import posttrain_inputs, run_inputs
from jaxlm.errors import InputError


def count_sequences(batches: Iterable[dict[str, np.ndarray]]) -> int:
    """Rows holding at least one real token ([B, T]); pairs ([B, 2, T]) by their chosen side."""
    total = 0
    for batch in batches:
        segments = batch["segment_ids"]
        rows = segments[:, 0, :] if segments.ndim == 3 else segments
        total += int(np.count_nonzero(rows.any(axis=-1)))
    return total


def steps_for_epochs(epochs: float, sequences: int, batch_size: int) -> int:
    """ceil(epochs * sequences / batch_size), at least 1."""
    return max(1, math.ceil(epochs * sequences / batch_size))


def epoch_steps(cfg: Config, one_epoch: Iterable, log: Callable[[str], None]) -> tuple[int, int]:
    """(steps, sequences per epoch) for cfg.train.epochs; logs how they were computed."""
    t0 = time.perf_counter()
    sequences = count_sequences(one_epoch)
    if sequences == 0:
        raise InputError(
            f"train.epochs={cfg.train.epochs}: the training data ({cfg.data.sources}) packs "
            "into no sequence; nothing to train on"
        )
    epochs, batch = cfg.train.epochs, cfg.data.batch_size
    steps = steps_for_epochs(epochs, sequences, batch)
    log(
        f"train.epochs={epochs:g}: one epoch is {sequences} packed sequences of "
        f"{cfg.data.seq_len} tokens (counted in {time.perf_counter() - t0:.1f}s); "
        f"{epochs:g} x {sequences} / data.batch_size {batch} = "
        f"{epochs * sequences / batch:.2f}, rounded up: {steps} steps"
    )
    return steps, sequences


def text_epoch(cfg: Config, tokenizer) -> Iterable:
    """The training text once, batched as the run's stream batches it (one process)."""
    return run_inputs.train_stream(cfg, tokenizer, 0, 1, repeat=False)


def posttrain_epoch(cfg: Config, tokenizer, pipeline) -> Iterable:
    """The training conversations or pairs once (`pipeline`: posttrain_inputs')."""
    return posttrain_inputs.posttrain_train_stream(
        cfg, tokenizer, 0, 1, cfg.data.batch_size, pipeline=pipeline, repeat=False
    )
