"""`jaxlm sweep EXPERIMENT`: run every point of the experiment's sweep(), resumably.

    jaxlm sweep scaling_sweep                      # all points, one after another
    jaxlm sweep scaling_sweep --list               # one `jaxlm train` command per point
    jaxlm sweep scaling_sweep --only d128-l4       # one point (e.g. one cluster job)
    jaxlm compare runs/scaling_sweep-sweep/*/      # then compare the runs

Each point runs in ROOT/NAME (ROOT defaults to runs/EXPERIMENT-sweep); ROOT/index.json
and index.md list the points, their status and final numbers. Running it again skips
finished points and resumes the rest. See jaxlm/training/sweep.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run an experiment's sweep points, each in its own workdir, with an index of runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment name (./experiments/NAME.py) or file")
    parser.add_argument("--root", default=None, help="default: runs/EXPERIMENT-sweep")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--only", action="append", default=None, metavar="NAME")
    parser.add_argument("--list", action="store_true", help="print the points' commands only")


def run(args: argparse.Namespace) -> int:
    from jaxlm.training.experiment import load_experiment
    from jaxlm.training.sweep import point_config, run_sweep, sweep_points, train_command

    module = load_experiment(args.experiment)
    name = Path(args.experiment).stem
    root = Path(args.root or Path("runs") / f"{name}-sweep")
    if args.list:
        for point in sweep_points(module):
            point_config(module, point, args.overrides)  # validate before printing
            print(train_command(args.experiment, root / point.name, point, args.overrides))
        return 0
    index = run_sweep(args.experiment, module, root, extra=args.overrides, only=args.only)
    statuses = {n: e["status"] for n, e in index["points"].items()}
    print(f"[sweep] index: {root / 'index.json'}  ({root / 'index.md'})")
    failed = [n for n, s in statuses.items() if s == "failed"]
    if failed:
        print(f"[sweep] failed points: {failed} (errors in the index)")
        return 1
    return 0
