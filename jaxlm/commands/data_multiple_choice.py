"""`jaxlm data multiple-choice`: an offline multiple-choice set from held-out stdlib functions.

    jaxlm data multiple-choice OUT.jsonl [--style chat|completion] [--seed S]
        [--max-items N] [--split validation|train] [--val-fraction 0.02]
        [--max-files N] [--force]
    jaxlm eval exports/sft --multiple-choice OUT.jsonl

One record per documented function of the corpus's validation files: the request for
the function as context, the real function and its corruptions as choices. --style
chat (default) asks in ChatML, for SFT / DPO models; --style completion gives the
signature and docstring as code, for base models. The generator is
jaxlm.data.stdlib_multiple_choice; this module maps flags onto it.
"""

from __future__ import annotations

import argparse
import time

HELP = "multiple-choice items (real function vs corruptions) from held-out stdlib functions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT.jsonl", help="the jsonl file to write")
    parser.add_argument(
        "--style",
        choices=["chat", "completion"],
        default="chat",
        help="chat: a ChatML request (SFT/DPO models); completion: signature and docstring "
        "as code (base models) (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="phrasing, corruptions, choice order (default 0)"
    )
    parser.add_argument(
        "--max-items", type=int, default=None, metavar="N", help="at most N items (default all)"
    )
    parser.add_argument(
        "--split",
        choices=["validation", "train"],
        default="validation",
        help="validation: held-out functions (default); train: functions that training "
        "data contain, to measure memorisation (never report them as held out)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        help="stdlib files held out: keep it equal to pretraining's (default %(default)s)",
    )
    parser.add_argument(
        "--max-files", type=int, default=None, metavar="N", help="only the first N files per split"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    from jaxlm.data.stdlib_multiple_choice import write_multiple_choice

    start = time.perf_counter()
    summary = write_multiple_choice(
        args.out,
        force=args.force,
        style=args.style,
        seed=args.seed,
        split=args.split,
        max_items=args.max_items,
        val_fraction=args.val_fraction,
        max_files=args.max_files,
    )
    sizes = ", ".join(f"{n} choices: {count}" for n, count in summary["choices"].items())
    kinds = ", ".join(f"{kind} {count}" for kind, count in summary["wrong_kinds"].items())
    print(
        f"wrote {args.out} in {time.perf_counter() - start:.1f}s: {summary['records']} "
        f"{args.split} items ({args.style} style; {sizes}); chance accuracy "
        f"{summary['chance_accuracy']:.4f}"
    )
    print(f"  wrong choices: {kinds}")
    return 0
