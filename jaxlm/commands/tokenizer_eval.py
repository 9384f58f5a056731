"""`jaxlm tokenizer eval`: compression, coverage and encode speed on held-out text.

    jaxlm tokenizer eval --model tokenizers/code4k.model stdlib
    jaxlm tokenizer eval --model base.model --model extended.model 'zh/test/*.txt' --json

Reports bytes and characters per token, tokens per document, the share of
byte-fallback and <unk> tokens, and encode throughput (MB/s and tokens/s, one
document per call and through encode_batch); see jaxlm.data.tokenizer_eval. Given
several --model, they are measured on the same documents, side by side (with two, a
B / A column). `stdlib` means its held-out files here. Models trained with byte
fallback off are accepted (their <unk> rate is the point of comparing them).
"""

from __future__ import annotations

import argparse
import json

from jaxlm.commands.tokenizer_train import add_input_arguments
from jaxlm.errors import InputError

HELP = "measure bytes/token, chars/token and encode speed of tokenizers on held-out text"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="stdlib, a path/glob, or kind:GLOB"
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="PATH",
        help="a tokenizer to measure: a .model, or a Hugging Face model directory or "
        "tokenizer.json (repeat to compare)",
    )
    parser.add_argument("--max-chars", type=int, default=10_000_000, help="read at most this much")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of these")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_input_arguments(parser, split_default="validation")


def run(args: argparse.Namespace) -> int:
    from jaxlm.data.tokenizer_eval import evaluate_tokenizer, format_reports
    from jaxlm.data.tokenizer_inputs import open_inputs, read_texts

    if args.max_chars <= 0 or args.repeats <= 0:
        raise InputError("--max-chars and --repeats must be positive")
    from jaxlm.data.tokenizer_files import load_tokenizer

    # Either kind: a .model, or a Hugging Face model directory / tokenizer.json.
    tokenizers = [load_tokenizer(path, require_lossless=False) for path in args.models]
    opened = open_inputs(
        args.inputs, text_field=args.text_field, split=args.split, stdlib_split="validation"
    )
    documents = read_texts(opened, args.max_chars)
    if not documents:
        raise InputError(f"inputs {args.inputs} hold no text")
    reports = [evaluate_tokenizer(t, documents, repeats=args.repeats) for t in tokenizers]
    if args.json:
        print(json.dumps({"inputs": args.inputs, "reports": [r.to_json() for r in reports]}))
        return 0
    first = reports[0]
    print(
        f"held-out text: {first.documents:,} documents, {first.chars:,} characters, "
        f"{first.bytes:,} bytes from {', '.join(args.inputs)}"
    )
    print(format_reports(reports))
    return 0
