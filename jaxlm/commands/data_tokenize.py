"""`jaxlm data tokenize`: text sources to pre-tokenized shards (`tokens:` sources).

    jaxlm data tokenize 'jsonl:data/*.jsonl,stdlib' --tokenizer tok.model --out shards/x
        [--text-field text] [--split all|train|validation] [--shard-tokens N]
        [--workers K] [--skip-bad-lines] [--force]

The output is the same bytes whatever --workers is. Layout: jaxlm/data/sources/token_shards.py.
"""

from __future__ import annotations

import argparse

from jaxlm.source_spec import parse_sources

HELP = "tokenize text sources into pre-tokenized shards (read back as tokens:DIR)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", help="comma-separated sources, e.g. 'jsonl:data/*.jsonl'")
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model file")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--text-field", default="text", help="jsonl field / parquet column")
    parser.add_argument("--split", default="all", choices=("all", "train", "validation"))
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument(
        "--shard-tokens", type=int, default=100_000_000, help="start a new shard past this many"
    )
    parser.add_argument("--workers", type=int, default=0, help="encoding processes (0: inline)")
    parser.add_argument(
        "--skip-bad-lines", action="store_true", help="skip and count malformed records"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from jaxlm.data.sources.tokenize import tokenize_sources
    from jaxlm.data.tokenizer_files import load_tokenizer

    specs = parse_sources(args.sources, key="SOURCES")
    tokenizer = load_tokenizer(args.tokenizer)
    summary = tokenize_sources(
        specs,
        tokenizer,
        args.out,
        text_field=args.text_field,
        split=args.split,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens,
        workers=args.workers,
        on_error="skip" if args.skip_bad_lines else "raise",
        force=args.force,
    )
    shards = summary.manifest["shards"]
    written = sum(f["bytes"] for shard in shards for f in shard["files"].values())
    rate = summary.tokens / max(summary.seconds, 1e-9)
    print(f"wrote {args.out}: {len(shards)} shard(s), {written:,} bytes")
    print(f"documents        {summary.documents:,}")
    print(f"tokens           {summary.tokens:,} (with BOS/EOS)")
    print(f"text bytes       {summary.text_bytes:,}")
    print(f"empty dropped    {summary.empty_documents:,}")
    print(f"skipped records  {summary.skipped_records:,}")
    print(f"time             {summary.seconds:.1f}s, {rate:,.0f} tokens/s")
    return 0
