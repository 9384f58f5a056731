"""One process that trains on the global batches of a two-process job.

Usage: python both_shards_train.py WORKDIR [--set K=V ...]   (cwd: the repository)

Chat and preference runs (data.format) are covered the same way.

In a two-process `jaxlm train`, process p reads data shard p of 2 and feeds the rows
p*B/2 .. (p+1)*B/2 - 1 of each global batch. This driver runs the real `train()` in a
single process whose training stream yields, at every step, shard 0's batch on top of
shard 1's: the same global batches, so the per-step losses must match the
two-process job's (tests/test_multihost_preemption.py).
"""

import argparse
import sys

import numpy as np

from jaxlm.data import posttrain_inputs, run_inputs
from jaxlm.data.counters import COUNTS_KEY
from jaxlm.training.experiment import load_experiment, resolve_config
from jaxlm.training.loop import train


class BothShards:
    """An iterable like grain's IterDataset over the per-process streams."""

    def __init__(self, shards):
        self.shards = shards

    def __iter__(self):
        return _BothShardsIterator([iter(shard) for shard in self.shards])


class _BothShardsIterator:
    def __init__(self, iterators):
        self.iterators = iterators

    def __next__(self):
        batches = [next(it) for it in self.iterators]
        counts = [batch.pop(COUNTS_KEY, None) for batch in batches]
        out = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
        if counts[0] is not None:  # the data counters only feed metrics: shard 0's will do
            out[COUNTS_KEY] = counts[0]
        return out

    def get_state(self):
        return {"shards": [it.get_state() for it in self.iterators]}

    def set_state(self, state):
        for it, shard_state in zip(self.iterators, state["shards"], strict=True):
            it.set_state(shard_state)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    original = run_inputs.train_stream

    def both_shards(cfg, tokenizer, process_index, process_count):
        assert process_count == 1, "run this driver as a single process"
        return BothShards([original(cfg, tokenizer, p, 2) for p in range(2)])

    run_inputs.train_stream = both_shards
    original_posttrain = posttrain_inputs.posttrain_train_stream

    def both_posttrain_shards(cfg, tokenizer, process_index, process_count, batch_size, **extra):
        assert process_count == 1, "run this driver as a single process"
        shards = [
            original_posttrain(cfg, tokenizer, p, 2, batch_size // 2, **extra) for p in range(2)
        ]
        return BothShards(shards)

    posttrain_inputs.posttrain_train_stream = both_posttrain_shards
    cfg = resolve_config(load_experiment("quickstart"), args.overrides, "quickstart")
    train(cfg, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
