"""One process that runs the RL prompt batches of a two-process job (data.format=rl).

Usage: python rl_both_shards_train.py WORKDIR [--set K=V ...]   (cwd: the repository)

In a two-process RL run, process p draws prompt shard p of 2 and feeds rows
p*B/2 .. (p+1)*B/2 - 1 of each global prompt batch, every row numbered with the
batch's index (the rollout's random key). This driver runs the real `train()` in a
single process whose prompt stream yields shard 0's batch on top of shard 1's: the
same global batches, so the rollouts and rewards must match the two-process job's
(tests/test_rl_run.py). Held-out prompts are batched differently, but each is
scored once either way.
"""

import argparse
import sys

from both_shards_train import BothShards

from jaxlm.training.experiment import load_experiment, resolve_config
from jaxlm.training.loop import train
from jaxlm.training.tasks.rl import RLTask


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    original = RLTask.train_stream

    def both_shards(self, tokenizer, process_index, process_count, batch_size):
        assert process_count == 1, "run this driver as a single process"
        return BothShards([original(self, tokenizer, p, 2, batch_size // 2) for p in range(2)])

    RLTask.train_stream = both_shards
    cfg = resolve_config(load_experiment("quickstart"), args.overrides, "quickstart")
    train(cfg, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
