"""`jaxlm train quickstart` whose data pipeline hangs after a number of batches.

Usage: python hung_data_train.py WORKDIR BATCHES [--set K=V ...]   (cwd: the repository)

The training stream yields BATCHES batches, then blocks forever in `next()`, as a
reader stuck on a dead network filesystem would. tests/test_watchdog.py checks that
train.step_timeout_s ends such a run with the watchdog's exit status.
"""

import argparse
import sys
import threading

from jaxlm.data import run_inputs
from jaxlm.training.experiment import load_experiment, resolve_config
from jaxlm.training.loop import train


class HangsAfter:
    """Wraps a grain IterDataset; its iterator hangs after `count` batches."""

    def __init__(self, dataset, count: int):
        self.dataset, self.count = dataset, count

    def __iter__(self):
        return _HangingIterator(iter(self.dataset), self.count)


class _HangingIterator:
    def __init__(self, iterator, count: int):
        self.iterator, self.left = iterator, count

    def __next__(self):
        if self.left == 0:
            print("data: hanging after the last batch", flush=True)
            threading.Event().wait()  # never set
        self.left -= 1
        return next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("batches", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    original = run_inputs.train_stream
    run_inputs.train_stream = lambda *a: HangsAfter(original(*a), args.batches)
    cfg = resolve_config(load_experiment("quickstart"), args.overrides, "quickstart")
    train(cfg, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
