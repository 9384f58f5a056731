"""`jaxlm data inspect EXPERIMENT`: print (and plot) a packed batch of a run's pipeline.

Builds exactly the training (or evaluation) stream the run would read, takes batch
`--batch`, and shows its segments, positions and which tokens carry loss, decoded with
the run's tokenizer, so masks can be checked by eye before spending compute.
"""

from __future__ import annotations

import itertools
from pathlib import Path

HELP = "print (and optionally plot) a packed batch: segments, positions, loss mask"


def add_arguments(parser) -> None:
    parser.add_argument("experiment", help="experiment name (./experiments/NAME.py) or file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--workdir", default=None, help="where a trained tokenizer lives")
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    parser.add_argument("--batch", type=int, default=0, help="which batch (0 = first)")
    parser.add_argument("--rows", type=int, default=4, help="rows to print")
    parser.add_argument("--max-chars", type=int, default=400, help="per segment")
    parser.add_argument("--tokens", action="store_true", help="also list row 0 token by token")
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw the batch to a PNG")


def run(args) -> int:
    from jaxlm.analysis.inspect_batch import plot_batch, render_batch, token_table
    from jaxlm.data import run_inputs
    from jaxlm.data.counters import DataTotals
    from jaxlm.training.experiment import load_experiment, resolve_config
    from jaxlm.training.tasks import task_for

    cfg = resolve_config(load_experiment(args.experiment), args.overrides, args.experiment)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    tokenizer = run_inputs.ensure_tokenizer(
        cfg,
        workdir,
        log=print,
        is_leader=True,
        barrier=lambda name: None,
        may_train=task_for(cfg).trains_tokenizer,
    )
    if args.split == "train":
        stream = run_inputs.train_stream(cfg, tokenizer, 0, 1)
        batch = next(itertools.islice(iter(stream), args.batch, None))
        totals = DataTotals()
        batch = totals.pop_from(batch)
    else:
        batches = run_inputs.eval_batches(cfg, tokenizer, 0, 1, lambda n: n)
        if args.batch >= len(batches):
            raise IndexError(f"--batch {args.batch}: the eval split has {len(batches)} batches")
        batch = batches[args.batch]
    print(render_batch(batch, tokenizer.decode, rows=args.rows, max_chars=args.max_chars))
    if args.tokens:
        print(token_table(batch, tokenizer.piece))
    if args.plot:
        print(f"plot: {plot_batch(batch, Path(args.plot))}")
    return 0
