"""Grain worker processes: same documents as in-process, and exact resume at every step.

The iterator state round trip is checked at every step of the
real pipeline (`grain.experimental.assert_equal_output_after_checkpoint`), with the
state passed through JSON as the checkpointer stores it, and with multiprocess prefetch.
"""

import collections
import json

import grain
import numpy as np
import pytest
from helpers.batches import ByteTokenizer

from jaxlm.data import pipeline
from jaxlm.data.packing import BATCH_KEYS


def _documents(count: int) -> grain.MapDataset:
    rng = np.random.default_rng(0)
    return grain.MapDataset.source(
        [f"doc {i}: " + "word " * int(rng.integers(1, 40)) for i in range(count)]
    )


def _schema_only(batch):
    # Counts depend on how far readers ran ahead, which differs between runs.
    return {key: batch[key] for key in BATCH_KEYS}


class _JsonState(grain.IterDataset):
    """Passes iterator states through JSON, as jaxlm's checkpoints store them."""

    def __iter__(self):
        return _JsonStateIterator(self._parent.__iter__())


class _JsonStateIterator(grain.DatasetIterator):
    def __next__(self):
        return next(self._parent)

    def get_state(self):
        return json.loads(json.dumps(self._parent.get_state()))

    def set_state(self, state):
        self._parent.set_state(state)


def _dataset(workers: int, **kwargs) -> grain.IterDataset:
    kwargs = {"seq_len": 32, "batch_size": 2, "seed": 3, "shuffle_window": 8, **kwargs}
    dataset = pipeline.mixture_dataset([_documents(24)], ByteTokenizer(), workers=workers, **kwargs)
    return dataset


def _pieces(batches):
    pieces = collections.Counter()
    for batch in batches:
        for tokens, segments in zip(batch["tokens"], batch["segment_ids"], strict=True):
            for segment in np.unique(segments[segments != 0]):
                pieces[tuple(tokens[segments == segment].tolist())] += 1
    return pieces


def test_workers_read_the_same_documents_as_one_process():
    kwargs = {"shuffle": False, "repeat": False}
    assert _pieces(_dataset(0, **kwargs)) == _pieces(_dataset(2, **kwargs))


# Two Grain worker processes (~21 s) run with the slow tests; in-process reading (0)
# checks the same resume at every step by default.
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_at_every_step_with_json_state(workers):
    dataset = _dataset(workers)
    dataset = grain.experimental.LimitIterDataset(dataset, count=4)  # each restore respawns workers
    dataset = _JsonState(dataset.map(_schema_only))
    grain.experimental.assert_equal_output_after_checkpoint(dataset)
