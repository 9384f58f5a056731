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
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxlm.config import config_from_dict
from jaxlm.errors import InputError

HELP = "grow a checkpoint's embedding and output matrices to a larger vocabulary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC_WORKDIR", help="a training run's workdir")
    parser.add_argument("dst", metavar="DST_DIR", help="a new directory for the grown params")
    parser.add_argument("--vocab-size", type=int, required=True, help="the new vocabulary size")
    parser.add_argument(
        "--tokenizer", default=None, metavar="PATH.model", help="the extended tokenizer"
    )
    parser.add_argument(
        "--noise-std", type=float, default=0.0, help="Gaussian noise added to the new rows"
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import jax  # when the command runs: `jaxlm --help` imports every command module

    from jaxlm.checkpointing.params_io import restore_latest_params, save_params
    from jaxlm.data.tokenizer import Tokenizer
    from jaxlm.data.workdir_tokenizer import TOKENIZER_FILE, owned_tokenizer
    from jaxlm.models.vocab_resize import grow_vocab

    if args.noise_std < 0:
        raise InputError(f"--noise-std must be >= 0, got {args.noise_std}")
    dst = Path(args.dst).absolute()
    if dst.exists() and any(dst.iterdir()):
        raise InputError(f"{dst} exists and is not empty; choose a new directory")
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    if tokenizer is not None and tokenizer.vocab_size != args.vocab_size:
        raise InputError(
            f"{tokenizer.path} has {tokenizer.vocab_size} pieces but --vocab-size is "
            f"{args.vocab_size}"
        )
    params, cfg, step = restore_latest_params(args.src)
    old_size = cfg.model.vocab_size
    if args.vocab_size <= old_size:
        raise InputError(
            f"--vocab-size {args.vocab_size} must exceed the checkpoint's vocabulary "
            f"({old_size}, {Path(args.src)})"
        )
    # The source run's own copy (an older run: its data.tokenizer where found).
    source_tokenizer = owned_tokenizer(args.src, cfg.data.tokenizer) or (
        Path(args.src).absolute() / TOKENIZER_FILE
    )
    if tokenizer is not None:
        check_extends(tokenizer, source_tokenizer, old_size)
    grown = grow_vocab(
        params, args.vocab_size, rng=jax.random.key(args.seed), noise_std=args.noise_std
    )
    data = cfg.to_dict()
    data["model"]["vocab_size"] = args.vocab_size
    data["data"]["tokenizer_vocab_size"] = args.vocab_size
    # Never "" (train a fresh tokenizer): new ids only mean something with the extension.
    data["data"]["tokenizer"] = str(dst / TOKENIZER_FILE if tokenizer else source_tokenizer)
    save_params(dst, grown, config_from_dict(data), tokenizer=tokenizer.path if tokenizer else None)
    print(f"grew {Path(args.src)} step {step}: vocabulary {old_size} -> {args.vocab_size}")
    print(f"  params    {dst / 'params'}")
    print(f"  config    {dst / 'config.json'}  (data.tokenizer = {data['data']['tokenizer']})")
    if tokenizer is None:
        print(f"  note: point data.tokenizer at a tokenizer with {args.vocab_size} pieces")
    return 0


def check_extends(tokenizer, source_tokenizer, old_size: int) -> None:
    """Refuses a tokenizer whose first `old_size` ids differ from the source run's."""
    from jaxlm.data.tokenizer import Tokenizer

    extended_from = tokenizer.metadata.extended_from or {}
    if extended_from.get("vocab_size", old_size) != old_size:
        raise InputError(
            f"{tokenizer.path} extends a {extended_from['vocab_size']}-piece tokenizer, but "
            f"the checkpoint has a vocabulary of {old_size}"
        )
    if not source_tokenizer.is_file():
        print(f"  note: {source_tokenizer} not found; the first {old_size} ids are not compared")
        return
    source = Tokenizer.load(source_tokenizer)
    for token_id in range(min(old_size, source.vocab_size)):
        if tokenizer.id_to_piece(token_id) != source.id_to_piece(token_id):
            raise InputError(
                f"{tokenizer.path} does not extend {source_tokenizer}: id {token_id} is "
                f"{tokenizer.id_to_piece(token_id)!r} there, {source.id_to_piece(token_id)!r} "
                "in the checkpoint's tokenizer"
            )
