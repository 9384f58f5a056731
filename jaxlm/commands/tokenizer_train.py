"""`jaxlm tokenizer train`: a SentencePiece model with jaxlm's pinned ids, from text.

    jaxlm tokenizer train stdlib --vocab-size 4096 --out tokenizers/code4k
    jaxlm tokenizer train 'corpus/**/*.txt' data.jsonl --text-field content \\
        --model-type unigram --vocab-size 32000 --user-symbols '<|tool|>,<|/tool|>' \\
        --out tokenizers/web32k

Writes PREFIX.model, PREFIX.vocab (piece and score per line) and PREFIX.json (the
sidecar with the chat template; jaxlm.data.tokenizer_metadata). Ids: 0 <pad>, 1 <s>,
2 </s>, 3 <unk>, 4 <|im_start|>, 5 <|im_end|>, then the --user-symbols in order,
then the 256 byte pieces (with byte fallback), then learned pieces; all of them are
checked after training. Inputs are read as described in jaxlm.data.tokenizer_inputs.
"""

from __future__ import annotations

import argparse
import time

from jaxlm.errors import InputError

HELP = "train a SentencePiece tokenizer (BPE or unigram) with pinned special ids"


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected 'on' or 'off', got {text!r}")
    return text == "on"


def add_input_arguments(parser: argparse.ArgumentParser, *, split_default: str) -> None:
    """The input flags train, eval and extend share."""
    parser.add_argument(
        "--text-field", default="text", help="jsonl field / parquet column (default: text)"
    )
    parser.add_argument(
        "--split",
        default="auto",
        choices=("auto", "all", "train", "validation"),
        help=f"which documents to read (auto: the stdlib's {split_default} files, all of "
        "every other input)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="stdlib, a path/glob, or kind:GLOB"
    )
    parser.add_argument("--out", required=True, metavar="PREFIX", help="writes PREFIX.model")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument(
        "--byte-fallback",
        type=on_off,
        default=True,
        metavar="on|off",
        help="off maps unknown characters to <unk>: lossy, usable by `tokenizer eval` only",
    )
    parser.add_argument("--max-chars", type=int, default=20_000_000)
    parser.add_argument(
        "--user-symbols",
        default="",
        metavar="SYM,SYM",
        help="extra special tokens, comma separated, given ids from 6 on",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    add_input_arguments(parser, split_default="train")


def run(args: argparse.Namespace) -> int:
    from jaxlm.data.tokenizer import train_tokenizer
    from jaxlm.data.tokenizer_inputs import iter_texts, open_inputs
    from jaxlm.data.tokenizer_metadata import sidecar_path

    if args.vocab_size <= 0 or args.max_chars <= 0:
        raise InputError("--vocab-size and --max-chars must be positive")
    symbols = [s.strip() for s in args.user_symbols.split(",") if s.strip()]
    opened = open_inputs(args.inputs, text_field=args.text_field, split=args.split)
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        iter_texts(opened),
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        max_chars=args.max_chars,
        num_threads=args.threads,
        seed=args.seed,
        byte_fallback=args.byte_fallback,
        user_symbols=symbols,
    )
    meta = tokenizer.metadata
    print(f"trained {meta.model_type} tokenizer in {time.perf_counter() - start:.1f}s")
    print(f"  model       {tokenizer.path}  ({tokenizer.vocab_size} pieces)")
    print(
        f"  sidecar     {sidecar_path(tokenizer.path)}  (chat template {meta.chat_template.name})"
    )
    print(f"  special ids {meta.special_ids}")
    if meta.user_symbols:
        print(f"  user ids    {meta.user_symbols}")
    print(f"  byte fallback {'on' if meta.byte_fallback else 'off (lossy: eval only)'}")
    return 0
