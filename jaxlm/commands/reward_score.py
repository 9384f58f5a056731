"""`jaxlm reward score`: a reward model's scores of responses in a jsonl file.

    jaxlm reward score --model exports/rm --input records.jsonl --output scored.jsonl
    jaxlm reward score --model runs/rm --input pairs.jsonl          # jsonl to stdout

MODEL is a reward model (model.score_head=true, trained with data.format=reward): an
export directory or a training workdir. Records are `{"prompt", "response"}`,
`{"messages": [...]}` ending in an assistant turn, or preference pairs
`{"chosen", "rejected"}` (with or without "prompt"); see
jaxlm.evaluation.reward_scores. Each is rendered exactly as reward-model training
renders a pair's side (the model's tokenizer and chat template), so a pair scores
here as in the run's eval.

Output: each record with `score` (or `chosen_score` and `rejected_score`) added, and
`truncated: true` when its conversation was cut at --seq-len (the response is then
scored at the cut); to --output (written whole or not at all), else to stdout. The
summary (counts, mean score; for pairs the pair accuracy with ties counted half, and
the mean margin) goes to stdout after --output is written, else to stderr. A bad
record is one error line naming file:line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jaxlm.errors import InputError

HELP = "score prompt/response records or preference pairs with a reward model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="MODEL", help="a reward model's export or workdir"
    )
    parser.add_argument("--input", required=True, metavar="FILE.jsonl", help="records to score")
    parser.add_argument(
        "--output", default=None, metavar="OUT.jsonl", help="scored records (default: stdout)"
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        metavar="T",
        help="tokens per sequence (default: the run's data.seq_len)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="B", help="sequences per batch (>= 2)"
    )


def _summary_text(summary: dict) -> str:
    text = (
        f"{summary['records']} records, {summary['responses']} responses, mean score "
        f"{summary['mean_score']:.4f}"
    )
    if summary["truncated"]:
        text += f", {summary['truncated']} cut at seq_len"
    if summary["pairs"]:
        text += (
            f"; {summary['pairs']} pairs: pair accuracy {summary['pair_accuracy']:.4f} "
            f"({summary['pair_ties']:.0%} ties, counted half), mean margin "
            f"{summary['mean_margin']:.4f}"
        )
    return text


def run(args: argparse.Namespace) -> int:
    # JAX loads when the command runs: `jaxlm --help` imports every command module.
    from jaxlm.evaluation.reward_scores import score_records, summarize
    from jaxlm.inference.loading import load_model

    if args.batch_size < 2:
        raise InputError(f"--batch-size {args.batch_size}: a pair needs 2 sequences")
    model = load_model(args.model)
    seq_len = args.seq_len or model.cfg.data.seq_len
    if seq_len < 2:
        raise InputError(f"--seq-len {seq_len} must be at least 2")
    records = score_records(model, args.input, seq_len=seq_len, batch_size=args.batch_size)
    scored = []
    if args.output is None:
        for item in records:
            scored.append(item)
            print(json.dumps(item.output(), ensure_ascii=False), flush=True)
        print(_summary_text(summarize(scored)), file=sys.stderr)
        return 0
    out = Path(args.output)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            for item in records:
                scored.append(item)
                f.write(json.dumps(item.output(), ensure_ascii=False) + "\n")
    except BaseException:
        partial.unlink(missing_ok=True)  # a bad record leaves no half-written output
        raise
    os.replace(partial, out)
    print(_summary_text(summarize(scored)))
    print(f"scores written to {out}")
    return 0
