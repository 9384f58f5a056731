"""`jaxlm compare`: loss curves of several runs on four x axes, and a final-metrics table.

    jaxlm compare runs/a runs/b runs/c --out compare/abc --smooth 0.9 --log-x

Reads each RUN_DIR's metrics.jsonl (and config.json) and writes to --out:

    loss_curves.png, loss_curves.svg   a 2×2 grid: train loss (lines) and eval loss
                                       (markers) against step, tokens trained, model
                                       FLOPs and wall time
    metrics.png, metrics.svg           with --metrics reward,kl,...: one panel per
                                       logged metric against step (train lines, eval
                                       markers), e.g. an RL run's reward and KL
    final_metrics.md, final_metrics.csv
                                       per run: status (finished / preempted / in
                                       progress / NaN at step N), steps, final train and
                                       eval loss, bits per byte, tokens, FLOPs, wall
                                       time, mean MFU, goodput; notes on derived values

Runs that are still going (a last line being written, no summary yet) and runs whose
loss went NaN (drawn up to it, flagged in the table) are fine; runs logged before
tokens/FLOPs/wall time were recorded get them derived from config.json (jaxlm.analysis.compare).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "plot loss curves of runs against steps, tokens, FLOPs and time; tabulate final metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run workdirs (or metrics.jsonl)"
    )
    parser.add_argument("--out", required=True, help="directory for the figures and tables")
    parser.add_argument(
        "--smooth",
        type=float,
        default=None,
        help="smooth train losses: an EMA factor in (0, 1), or a window of N logged points",
    )
    parser.add_argument("--log-x", action="store_true", help="logarithmic x axes")
    parser.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    parser.add_argument(
        "--labels", default=None, help="comma-separated run names (default: directory names)"
    )
    parser.add_argument(
        "--metrics",
        default="",
        help="comma-separated logged metrics to draw against step as well, e.g. "
        "reward,kl,response_tokens,entropy,accuracy (metrics.png)",
    )


def run(args: argparse.Namespace) -> int:
    from jaxlm.analysis.compare import load_runs, smooth, table_markdown, write_tables
    from jaxlm.analysis.compare_plots import plot_comparison, plot_metrics

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    smooth([1.0], args.smooth)  # a bad --smooth fails before any work
    runs = load_runs([Path(p) for p in args.runs], labels)
    out = Path(args.out)
    figures = plot_comparison(
        runs, out / "loss_curves", smoothing=args.smooth, log_x=args.log_x, log_y=args.log_y
    )
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if names:
        figures += plot_metrics(runs, names, out / "metrics", smoothing=args.smooth)
    tables = write_tables(runs, out)
    print(table_markdown(runs))
    for path in (*figures, *tables):
        print(f"wrote {path}")
    return 0
