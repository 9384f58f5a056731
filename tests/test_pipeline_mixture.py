"""Weighted mixtures of sources, and the counts that ride along in batches."""

import collections
import itertools

import grain
import numpy as np
import pytest
from helpers.batches import BOS, ByteTokenizer

from jaxlm.data import pipeline
from jaxlm.data.counters import COUNTS_KEY, DataTotals
from jaxlm.errors import InputError


def _source(letter: str, count: int) -> grain.MapDataset:
    """Documents "A0 ...", "A1 ..." whose first byte names the source."""
    return grain.MapDataset.source([f"{letter}{i} " + "x" * (5 + i % 7) for i in range(count)])


def _first_letters(batches):
    """The source letter of every document start (position 0 right after BOS)."""
    letters = collections.Counter()
    for batch in batches:
        starts = (batch["positions"] == 1) & (batch["segment_ids"] != 0)
        starts &= np.roll(batch["tokens"], 1, axis=1) == BOS
        letters.update(chr(t - 10) for t in batch["tokens"][starts])  # ByteTokenizer offset
    return letters


def test_training_mixture_follows_the_weights():
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("A") == [ord("A") + 10]
    dataset = pipeline.mixture_dataset(
        [_source("A", 50), _source("B", 7)], tokenizer, weights=[3, 1],
        seq_len=64, batch_size=4, seed=1, shuffle_window=64,
    )  # fmt: skip
    letters = _first_letters(itertools.islice(dataset, 60))
    share = letters["A"] / (letters["A"] + letters["B"])
    assert abs(share - 0.75) < 0.03, letters  # documents, not tokens, follow the weights


def test_evaluation_reads_every_source_once_whatever_the_weights():
    dataset = pipeline.mixture_dataset(
        [_source("A", 20), _source("B", 5)], ByteTokenizer(), weights=[9, 1],
        seq_len=64, batch_size=4, shuffle=False, repeat=False,
    )  # fmt: skip
    assert _first_letters(dataset) == {"A": 20, "B": 5}


def test_counts_add_up_to_the_documents_read():
    texts = ["one", "", "   \n", "two two", "three"]
    dataset = pipeline.mixture_dataset(
        [grain.MapDataset.source(texts)], ByteTokenizer(), seq_len=8, batch_size=2,
        shuffle=False, repeat=False,
    )  # fmt: skip
    totals = DataTotals()
    for batch in dataset:
        assert COUNTS_KEY in batch
        totals.pop_from(batch)
        assert COUNTS_KEY not in batch
    assert totals.as_dict() == {
        "documents": 3,
        "empty_documents": 2,
        "document_tokens": 3 + 7 + 5 + 3 * 2,
    }


def test_a_source_too_small_to_shard_is_named():
    with pytest.raises(InputError, match="small: 1 documents"):
        pipeline.mixture_dataset(
            [_source("A", 4), _source("B", 1)], ByteTokenizer(), names=["big", "small"],
            seq_len=8, batch_size=2, process_count=2,
        )  # fmt: skip


def test_weights_must_match_sources():
    with pytest.raises(InputError, match="one positive weight per source"):
        pipeline.mixture_dataset(
            [_source("A", 4)], ByteTokenizer(), weights=[1, 2], seq_len=8, batch_size=2
        )
