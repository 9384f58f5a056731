"""`jaxlm data clean`: normalise, filter, deduplicate (and optionally scrub PII) a corpus.

    jaxlm data clean 'raw/**/*.txt' raw/web.jsonl -o clean/corpus.jsonl
    jaxlm data clean raw/web.jsonl -o out.jsonl --scrub-pii --disable dup_lines,top_ngram

Writes `{"text", "source"}` jsonl and `<output>.report.json`; prints what each stage
removed. The pipeline is jaxlm.prep.clean; this module only maps flags onto it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxlm.errors import InputError

HELP = "normalise, quality-filter, deduplicate (exact + MinHash) and optionally scrub PII"

_DEFAULT_TOP_NGRAM = "2:0.2,3:0.18,4:0.16"
_DEFAULT_DUP_NGRAM = "5:0.15,6:0.14,7:0.13,8:0.12,9:0.11,10:0.1"
# jaxlm.prep.clean.STAGE_NAMES, spelled out so that --help imports nothing heavy
# (a test keeps the two equal).
STAGES = (
    "min_bytes",
    "min_chars",
    "max_chars",
    "dup_lines",
    "dup_line_chars",
    "top_ngram",
    "dup_ngram",
    "exact_dup",
    "near_dup",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="text files (one document each) or jsonl; globs ok",
    )
    io.add_argument("-o", "--output", required=True, help="the clean jsonl file to write")
    io.add_argument("--force", action="store_true", help="overwrite an existing output/report")
    io.add_argument(
        "--text-field",
        default="text",
        help="jsonl field holding the document (default %(default)s)",
    )
    io.add_argument(
        "--format",
        default="auto",
        choices=["auto", "text", "jsonl"],
        help="input format; auto: .jsonl/.ndjson are jsonl, anything else is text",
    )
    io.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip (and count) malformed jsonl lines and non-UTF-8 files instead of failing",
    )
    io.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        help="with --skip-bad-lines, still fail above this fraction of bad lines, plus a "
        "chance margin sqrt(fraction * lines) (default 0.01)",
    )

    text = parser.add_argument_group("normalisation and PII")
    text.add_argument(
        "--normalize",
        default="NFC",
        metavar="{NFC,NFKC,none}",
        help="Unicode form (default NFC; NFKC also folds compatibility characters)",
    )
    text.add_argument(
        "--scrub-pii",
        action="store_true",
        help="replace e-mail addresses and phone numbers by <EMAIL> / <PHONE>",
    )

    quality = parser.add_argument_group("quality filters (Gopher-style defaults)")
    quality.add_argument(
        "--min-bytes",
        type=int,
        default=50,
        help="drop documents shorter than this many UTF-8 bytes (default %(default)s: about "
        "ten English words or seventeen Chinese characters; a CJK character is 3 bytes)",
    )
    quality.add_argument(
        "--min-chars",
        type=int,
        default=0,
        help="drop documents of fewer characters, whatever their script (default 0: off)",
    )
    quality.add_argument(
        "--max-chars",
        type=int,
        default=1_000_000,
        help="drop longer ones (default %(default)s; 0: no limit)",
    )
    quality.add_argument(
        "--max-dup-line-frac",
        type=float,
        default=0.30,
        help="drop if more of the non-blank lines repeat an earlier line (default %(default)s)",
    )
    quality.add_argument(
        "--max-dup-line-char-frac",
        type=float,
        default=0.20,
        help="drop if more of the line characters are in repeated lines (default %(default)s)",
    )
    quality.add_argument(
        "--top-ngram",
        default=_DEFAULT_TOP_NGRAM,
        metavar="N:FRAC,...",
        help=f"drop if the most frequent word N-gram covers more than FRAC of the characters "
        f"(default {_DEFAULT_TOP_NGRAM})",
    )
    quality.add_argument(
        "--dup-ngram",
        default=_DEFAULT_DUP_NGRAM,
        metavar="N:FRAC,...",
        help=f"drop if repeated word N-grams cover more than FRAC of the characters "
        f"(default {_DEFAULT_DUP_NGRAM})",
    )
    quality.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="STAGE[,STAGE]",
        help=f"turn stages off (repeatable): {', '.join(STAGES)}",
    )

    near = parser.add_argument_group("near-duplicate removal (MinHash + LSH)")
    near.add_argument(
        "--shingle-size", type=int, default=5, help="tokens per shingle (default %(default)s)"
    )
    near.add_argument(
        "--num-perm", type=int, default=128, help="MinHash permutations (default %(default)s)"
    )
    near.add_argument(
        "--bands",
        type=int,
        default=16,
        help="LSH bands (default %(default)s); rows per band = num-perm / bands",
    )
    near.add_argument(
        "--jaccard",
        type=float,
        default=0.8,
        help="drop a document whose estimated Jaccard similarity with a kept one is >= this "
        "(default %(default)s)",
    )
    near.add_argument(
        "--seed", type=int, default=0, help="fixes the MinHash permutations (default %(default)s)"
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=5,
        help="removed documents listed per stage in the report (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from jaxlm.prep.clean import clean_corpus, report_path
    from jaxlm.prep.sources import expand_inputs

    settings = _settings(args)
    files = expand_inputs(args.inputs)
    output = Path(args.output)
    report = clean_corpus(files, output, settings, force=args.force)
    print(report.summary())
    print(f"report: {report_path(output)}")
    return 0


def _settings(args: argparse.Namespace):
    """The flags as a jaxlm.prep.clean.CleanSettings; InputError names a bad flag."""
    from jaxlm.prep.clean import CleanSettings
    from jaxlm.prep.filters import FilterSettings, parse_ngram_thresholds
    from jaxlm.prep.normalize import check_form

    for flag, value in [
        ("--max-dup-line-frac", args.max_dup_line_frac),
        ("--max-dup-line-char-frac", args.max_dup_line_char_frac),
        ("--max-bad-fraction", args.max_bad_fraction),
    ]:
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{flag} must be a fraction in [0, 1], got {value}")
    for flag, value in [
        ("--min-bytes", args.min_bytes),
        ("--min-chars", args.min_chars),
        ("--max-chars", args.max_chars),
        ("--examples", args.examples),
    ]:
        if value < 0:
            raise InputError(f"{flag} must be >= 0, got {value}")
    if args.shingle_size < 1 or args.num_perm < 1:
        raise InputError("--shingle-size and --num-perm must be >= 1")
    if args.bands < 1 or args.num_perm % args.bands:
        raise InputError(f"--bands ({args.bands}) must divide --num-perm ({args.num_perm})")
    if not 0.0 < args.jaccard <= 1.0:
        raise InputError(f"--jaccard must be in (0, 1], got {args.jaccard}")

    disabled = [name.strip() for d in args.disable for name in d.split(",") if name.strip()]
    if args.max_chars == 0:  # "no upper limit" reads better as the stage being off
        disabled.append("max_chars")
    filters = FilterSettings(
        min_bytes=args.min_bytes,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        max_dup_line_frac=args.max_dup_line_frac,
        max_dup_line_char_frac=args.max_dup_line_char_frac,
        top_ngram=parse_ngram_thresholds(args.top_ngram, "--top-ngram"),
        dup_ngram=parse_ngram_thresholds(args.dup_ngram, "--dup-ngram"),
    )
    return CleanSettings(
        text_field=args.text_field,
        input_format=args.format,
        skip_bad_lines=args.skip_bad_lines,
        max_bad_fraction=args.max_bad_fraction,
        normalization=check_form(args.normalize),
        scrub_pii=args.scrub_pii,
        filters=filters,
        disabled=tuple(disabled),
        shingle_size=args.shingle_size,
        num_perm=args.num_perm,
        bands=args.bands,
        jaccard_threshold=args.jaccard,
        seed=args.seed,
        max_examples=args.examples,
    )
