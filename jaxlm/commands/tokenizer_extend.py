"""`jaxlm tokenizer extend`: append pieces learned on new text, keeping every old id.

    jaxlm tokenizer extend tokenizers/en32k.model 'zh/*.txt' --vocab-size 48000 \\
        --out tokenizers/en32k-zh

Trains a domain model of the base's type on the inputs, appends its pieces that the
base lacks (up to --vocab-size in all) and writes PREFIX.model, PREFIX.vocab and
PREFIX.json (whose `extended_from` names the base). `--pieces new-chars` (default)
adds only pieces holding a character the base lacks, so text the base fully covers
keeps its exact encoding; `--pieces all` also adds pieces of known characters (a new
domain in the same script). See jaxlm.data.tokenizer_extend for what is guaranteed.

It then reports characters per token of the base and the extended model on the
first MB of the inputs (training text: measure held-out text with `tokenizer eval`).
Grow a checkpoint to match with `jaxlm checkpoint grow-vocab`.

A Hugging Face tokenizer (a model directory, its tokenizer.json, or an import's
hf_tokenizer.json) is extended the same way with a BPE trained through its own
normaliser and pre-tokenizer (jaxlm.data.hf_tokenizer_extend); --out is then a
directory that receives tokenizer.json and the unchanged files beside it. A byte-level
BPE (Qwen, Llama-3) has no unknown characters: it takes `--pieces all`.
"""

from __future__ import annotations

import argparse

from jaxlm.commands.tokenizer_train import add_input_arguments
from jaxlm.errors import InputError

HELP = "add pieces learned on new text to a tokenizer, keeping every existing id"

_SAMPLE_CHARS = 1_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "base", metavar="BASE", help="the tokenizer to extend (a .model, or a Hugging Face one)"
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="stdlib, a path/glob, or kind:GLOB"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PREFIX",
        help="writes PREFIX.model (a Hugging Face base: the directory PREFIX)",
    )
    parser.add_argument(
        "--vocab-size", type=int, required=True, help="target size (at most this many pieces)"
    )
    parser.add_argument(
        "--pieces",
        choices=("new-chars", "all"),
        default="new-chars",
        help="new-chars: only pieces holding a character the base lacks, so text of known "
        "characters encodes as before; all: every new piece",
    )
    parser.add_argument(
        "--domain-vocab-size",
        type=int,
        default=0,
        help="pieces of the model trained on the new text (default: fixed pieces + the "
        "text's alphabet + twice the budget)",
    )
    parser.add_argument("--max-chars", type=int, default=20_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    add_input_arguments(parser, split_default="train")


def run(args: argparse.Namespace) -> int:
    from jaxlm.data.tokenizer_extend import extend_tokenizer
    from jaxlm.data.tokenizer_files import load_tokenizer
    from jaxlm.data.tokenizer_inputs import iter_texts, open_inputs
    from jaxlm.data.tokenizer_metadata import sidecar_path

    if args.max_chars <= 0 or args.domain_vocab_size < 0:
        raise InputError("--max-chars must be positive and --domain-vocab-size >= 0")
    base = load_tokenizer(args.base)  # a SentencePiece model or a Hugging Face tokenizer
    opened = open_inputs(args.inputs, text_field=args.text_field, split=args.split)
    if base.kind == "huggingface":
        return _extend_hf(args, base, opened)
    result = extend_tokenizer(
        base,
        iter_texts(opened),
        args.out,
        vocab_size=args.vocab_size,
        pieces=args.pieces,
        domain_vocab_size=args.domain_vocab_size or None,
        max_chars=args.max_chars,
        num_threads=args.threads,
        seed=args.seed,
    )
    extended, plan = result.tokenizer, result.plan
    _report(args, base, extended, "pieces", "model", plan, result.domain_vocab_size)
    print(f"  sidecar {sidecar_path(extended.path)}")
    _compare(base, extended, opened)
    return 0


def _extend_hf(args, base, opened) -> int:
    from jaxlm.data.hf_tokenizer_extend import extend_hf_tokenizer
    from jaxlm.data.tokenizer_inputs import iter_texts

    result = extend_hf_tokenizer(
        base,
        iter_texts(opened),
        args.out,
        vocab_size=args.vocab_size,
        pieces=args.pieces,
        domain_vocab_size=args.domain_vocab_size or None,
        max_chars=args.max_chars,
    )
    extended = result.tokenizer
    _report(args, base, extended, "tokens", "BPE", result, result.domain_vocab_size)
    _compare(base, extended, opened)
    return 0


def _report(args, base, extended, unit: str, domain: str, plan, domain_size: int) -> None:
    """What was appended and why the domain's other pieces were not (either kind)."""
    print(f"extended {base.path} ({base.vocab_size} {unit}) -> {extended.path}")
    print(f"  ids 0..{base.vocab_size - 1} unchanged; {len(plan.added)} {unit} appended")
    print(f"  vocab size {extended.vocab_size} (target {args.vocab_size})")
    print(
        f"  domain {domain}: {domain_size} {unit}; not added: "
        f"{plan.already_in_base} already in the base, {plan.only_known_chars} of known "
        f"characters only (--pieces {args.pieces}), {plan.unreachable} unreachable merges, "
        f"{plan.over_budget} over the budget"
    )


def _compare(base, extended, opened) -> None:
    from jaxlm.data.tokenizer_inputs import read_texts

    # The sources are random access, so reading them again starts from the beginning.
    sample = "".join(read_texts(opened, _SAMPLE_CHARS))
    before, after = len(base.encode(sample)), len(extended.encode(sample))
    if before and after:
        print(
            f"  on {len(sample):,} characters of the training input: "
            f"{len(sample) / before:.3f} -> {len(sample) / after:.3f} chars/token "
            f"({before / after:.2f}x fewer tokens)"
        )
