"""`jaxlm checkpoint grow-vocab`: a run's params with a larger vocabulary, to pretrain on.

    jaxlm tokenizer extend runs/en/tokenizer.model 'zh/*.txt' --vocab-size 6144 --out zh6k
    jaxlm checkpoint grow-vocab runs/en runs/en-zh-init --vocab-size 6144 --tokenizer zh6k.model

Reads the params of the newest checkpoint in SRC_WORKDIR (no optimizer state, no
shardings needed), grows the embedding and, when untied, the output head to
--vocab-size with jaxlm.models.vocab_resize.grow_vocab (old rows bit for bit, new
rows the mean of the old), and writes a params directory DST_DIR (layout in
jaxlm.checkpointing.params_io; read it back with `load_params`). Its config.json is the
source run's config with model.vocab_size set, and data.tokenizer pointing at the
copy of --tokenizer in DST_DIR.

The tokenizer must have exactly --vocab-size pieces and must extend the one the
checkpoint was trained with (SRC_WORKDIR/tokenizer.model, the run's own copy): its
first V pieces are compared, so a tokenizer with other ids cannot scramble the
embeddings silently. Without --tokenizer, data.tokenizer keeps naming the source's
tokenizer, and a run refuses it until it is pointed at one with --vocab-size pieces,
with train.allow_tokenizer_change=true (it is not the tokenizer DST_DIR names).

SRC may also be a params directory (`jaxlm export`, `jaxlm convert --from-hf`), and
the tokenizer a Hugging Face one extended by `jaxlm tokenizer extend` (a directory or
tokenizer.json). Hugging Face models often have more embedding rows than tokens
(Qwen2.5: 151,936 rows, 151,665 tokens), so such a tokenizer may have fewer ids than
--vocab-size, and --vocab-size may equal the rows already there when the new tokens
fit in them. Rows that held no token of the source tokenizer and now hold a new one
are initialised like grown rows (the mean of the rows of real tokens), not kept.

    jaxlm tokenizer extend exports/qwen/hf_tokenizer.json 'domain/*.txt' --pieces all \
        --vocab-size 152064 --out qwen-domain
    jaxlm checkpoint grow-vocab exports/qwen exports/qwen-domain-init --vocab-size 152064 \
        --tokenizer qwen-domain
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxlm.config import config_from_dict
from jaxlm.errors import InputError

HELP = "grow a checkpoint's embedding and output matrices to a larger vocabulary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", metavar="SRC", help="a training run's workdir, or a params directory"
    )
    parser.add_argument("dst", metavar="DST_DIR", help="a new directory for the grown params")
    parser.add_argument("--vocab-size", type=int, required=True, help="the new vocabulary size")
    parser.add_argument(
        "--tokenizer", default=None, metavar="PATH", help="the extended tokenizer (either kind)"
    )
    parser.add_argument(
        "--noise-std", type=float, default=0.0, help="Gaussian noise added to the new rows"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import jax  # when the command runs: `jaxlm --help` imports every command module

    from jaxlm.checkpointing.params_io import load_params, restore_latest_params, save_params
    from jaxlm.data.tokenizer_files import load_tokenizer, stored_name
    from jaxlm.data.workdir_tokenizer import TOKENIZER_FILE, owned_tokenizer
    from jaxlm.models.vocab_resize import grow_vocab

    if args.noise_std < 0:
        raise InputError(f"--noise-std must be >= 0, got {args.noise_std}")
    dst = Path(args.dst).absolute()
    if dst.exists() and any(dst.iterdir()):
        raise InputError(f"{dst} exists and is not empty; choose a new directory")
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    huggingface = tokenizer is not None and tokenizer.kind == "huggingface"
    if tokenizer is not None and not huggingface and tokenizer.vocab_size != args.vocab_size:
        raise InputError(
            f"{tokenizer.path} has {tokenizer.vocab_size} pieces but --vocab-size is "
            f"{args.vocab_size}"
        )
    if huggingface and tokenizer.vocab_size > args.vocab_size:
        raise InputError(
            f"{tokenizer.path} has {tokenizer.vocab_size} ids, more than --vocab-size "
            f"{args.vocab_size}"
        )
    src = Path(args.src).absolute()
    if (src / "params").is_dir() and (src / "config.json").is_file():
        params, cfg = load_params(src)
        step = "(params directory)"
    else:
        params, cfg, step = restore_latest_params(args.src)
    old_size = cfg.model.vocab_size
    # The source's own copy (an older run: its data.tokenizer where found).
    source_tokenizer = owned_tokenizer(src, cfg.data.tokenizer) or src / TOKENIZER_FILE
    fresh_from = old_size  # the first row that holds no trained token
    if tokenizer is not None:
        source_size = check_extends(tokenizer, source_tokenizer, old_size)
        if huggingface and source_size is not None and tokenizer.vocab_size > source_size:
            fresh_from = min(source_size, old_size)
    grows = args.vocab_size > old_size or (args.vocab_size == old_size and fresh_from < old_size)
    if not grows:
        raise InputError(
            f"--vocab-size {args.vocab_size} must exceed the checkpoint's vocabulary "
            f"({old_size}, {Path(args.src)})"
        )
    grown = grow_vocab(
        params,
        args.vocab_size,
        rng=jax.random.key(args.seed),
        noise_std=args.noise_std,
        fresh_from=fresh_from,
    )
    data = cfg.to_dict()
    data["model"]["vocab_size"] = args.vocab_size
    data["data"]["tokenizer_vocab_size"] = args.vocab_size
    # Never "" (train a fresh tokenizer): new ids only mean something with the extension.
    data["data"]["tokenizer"] = str(
        dst / stored_name(tokenizer.path) if tokenizer else source_tokenizer
    )
    save_params(dst, grown, config_from_dict(data), tokenizer=tokenizer.path if tokenizer else None)
    print(f"grew {Path(args.src)} step {step}: vocabulary {old_size} -> {args.vocab_size}")
    if fresh_from < old_size:
        print(f"  rows {fresh_from}..{old_size - 1} held no token before: initialised as new")
    print(f"  params    {dst / 'params'}")
    print(f"  config    {dst / 'config.json'}  (data.tokenizer = {data['data']['tokenizer']})")
    if tokenizer is None:
        print(f"  note: point data.tokenizer at a tokenizer with {args.vocab_size} pieces")
    return 0


def check_extends(tokenizer, source_tokenizer, old_size: int) -> int | None:
    """Refuses a tokenizer whose ids differ from the source's where the source has
    them; returns the source tokenizer's size (None when it cannot be read)."""
    from jaxlm.data.tokenizer_files import load_tokenizer

    metadata = getattr(tokenizer, "metadata", None)
    extended_from = (metadata.extended_from if metadata is not None else None) or {}
    if extended_from.get("vocab_size", old_size) != old_size:
        raise InputError(
            f"{tokenizer.path} extends a {extended_from['vocab_size']}-piece tokenizer, but "
            f"the checkpoint has a vocabulary of {old_size}"
        )
    if not source_tokenizer.is_file():
        print(f"  note: {source_tokenizer} not found; the first {old_size} ids are not compared")
        return None
    source = load_tokenizer(source_tokenizer)
    if source.kind != tokenizer.kind:
        raise InputError(
            f"{tokenizer.path} is a {tokenizer.kind} tokenizer, the checkpoint's "
            f"{source_tokenizer} a {source.kind} one: it cannot extend it"
        )
    for token_id in range(min(old_size, source.vocab_size)):
        if tokenizer.id_to_piece(token_id) != source.id_to_piece(token_id):
            raise InputError(
                f"{tokenizer.path} does not extend {source_tokenizer}: id {token_id} is "
                f"{tokenizer.id_to_piece(token_id)!r} there, {source.id_to_piece(token_id)!r} "
                "in the checkpoint's tokenizer"
            )
    return source.vocab_size
