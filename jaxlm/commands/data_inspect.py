"""`jaxlm data inspect EXPERIMENT`: print (and plot) a batch of a run's pipeline.

Builds exactly the training (or evaluation) stream the run would read, through the
run's Task (packed text, chat conversations or preference pairs, by `data.format`),
takes batch `--batch`, and shows its segments, positions and which tokens carry loss,
decoded with the run's tokenizer, so masks can be checked by eye before spending
compute: for chat data only the assistant turns, for pairs only each side's final
response (with `data.think_loss_weight`, the `<think>` spans marked with their weight).
"""

from __future__ import annotations

import itertools
from pathlib import Path

HELP = "print (and optionally plot) a batch: segments, positions, which tokens carry loss"


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
    from jaxlm.analysis.inspect_batch import plot_batch, render_batch, render_pairs, token_table
    from jaxlm.data import run_inputs
    from jaxlm.data.counters import DataTotals
    from jaxlm.data.preference import WHERE_KEY
    from jaxlm.training.experiment import load_experiment, resolve_config
    from jaxlm.training.tasks import task_for

    cfg = resolve_config(load_experiment(args.experiment), args.overrides, args.experiment)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    task = task_for(cfg)
    tokenizer = run_inputs.ensure_tokenizer(
        cfg,
        workdir,
        log=print,
        is_leader=True,
        barrier=lambda name: None,
        may_train=task.trains_tokenizer,
    )
    batch_size = run_inputs.local_batch_size(cfg, 1)
    if args.split == "train":
        stream = task.train_stream(tokenizer, 0, 1, batch_size)
        batch = next(itertools.islice(iter(stream), args.batch, None))
        DataTotals().pop_from(batch)
    else:
        batches = task.eval_batches(tokenizer, 0, 1, batch_size)
        if args.batch >= len(batches):
            raise IndexError(f"--batch {args.batch}: the eval split has {len(batches)} batches")
        batch = batches[args.batch]
    wheres = batch.get(WHERE_KEY)
    batch = {k: v for k, v in batch.items() if not k.startswith("_")}
    if batch["tokens"].ndim == 3:  # preference pairs [B, 2, T]
        text = render_pairs(
            batch, tokenizer.decode, rows=args.rows, max_chars=args.max_chars, wheres=wheres
        )
    else:
        text = render_batch(batch, tokenizer.decode, rows=args.rows, max_chars=args.max_chars)
    print(text)
    if args.tokens:
        print(token_table(batch, tokenizer.piece))
    if args.plot:
        print(f"plot: {plot_batch(batch, Path(args.plot))}")
    return 0
