"""`jaxlm data posttrain`: SFT and preference data from the standard library, offline.

    jaxlm data posttrain OUT_DIR [--max-sft N] [--max-pairs N] [--seed S] [--force]
        [--min-body-lines 2] [--max-body-lines 30] [--max-answer-chars 1500]
        [--val-fraction 0.02] [--max-files N]

Writes OUT_DIR/{sft_train,sft_val,dpo_train,dpo_val}.jsonl and manifest.json: "write
this function" chats answered with the real source of documented stdlib functions,
and pairs whose rejected answer is a corrupted version. The same Python version gives
the same bytes. The generator is jaxlm.data.stdlib_tasks; this module maps flags onto it.
"""

from __future__ import annotations

import argparse
import time

from jaxlm.errors import InputError

HELP = "SFT chats and preference pairs from the stdlib's documented functions (no download)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="directory for the jsonl files")
    parser.add_argument(
        "--max-sft", type=int, default=None, metavar="N", help="at most N chats per split"
    )
    parser.add_argument(
        "--max-pairs", type=int, default=None, metavar="N", help="at most N pairs per split"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="record order, phrasing and corruptions (default 0)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    limits = parser.add_argument_group("which functions become tasks")
    limits.add_argument(
        "--min-body-lines",
        type=int,
        default=2,
        metavar="N",
        help="non-blank lines after the docstring, at least (default %(default)s)",
    )
    limits.add_argument(
        "--max-body-lines", type=int, default=30, metavar="N", help="at most (default %(default)s)"
    )
    limits.add_argument(
        "--max-answer-chars",
        type=int,
        default=1500,
        metavar="N",
        help="whole function, at most (default %(default)s)",
    )
    limits.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        help="stdlib files held out: the corpus split; keep it equal to pretraining's "
        "(default %(default)s)",
    )
    limits.add_argument(
        "--max-files", type=int, default=None, metavar="N", help="only the first N files per split"
    )


def run(args: argparse.Namespace) -> int:
    from jaxlm.data.stdlib_tasks import FunctionLimits, write_posttrain_sets

    try:
        limits = FunctionLimits(
            min_body_lines=args.min_body_lines,
            max_body_lines=args.max_body_lines,
            max_answer_chars=args.max_answer_chars,
        )
    except ValueError as error:
        raise InputError(f"--min/max-body-lines, --max-answer-chars: {error}") from error
    start = time.perf_counter()
    manifest = write_posttrain_sets(
        args.out_dir,
        seed=args.seed,
        max_sft=args.max_sft,
        max_pairs=args.max_pairs,
        limits=limits,
        val_fraction=args.val_fraction,
        max_files=args.max_files,
        force=args.force,
    )
    print_summary(manifest, args.out_dir, time.perf_counter() - start)
    return 0


def print_summary(manifest: dict, out_dir: str, seconds: float) -> None:
    splits = manifest["splits"]
    print(
        f"wrote {out_dir} in {seconds:.1f}s from the Python {manifest['python_version']} "
        f"stdlib: {splits['train']['source_files']} train / "
        f"{splits['validation']['source_files']} validation files, "
        f"{splits['train']['functions']} / {splits['validation']['functions']} functions"
    )
    for name, info in manifest["files"].items():
        if "corruptions" in info:
            kinds = ", ".join(f"{k} {n}" for k, n in info["corruptions"].items())
            detail = f"chosen {info['mean_chosen_chars']:.0f} chars on average; {kinds}"
        else:
            detail = f"answers {info['mean_answer_chars']:.0f} chars on average"
        print(f"  {name:16s} {info['records']:6,d} records  {detail}")
