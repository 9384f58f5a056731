"""The tokenizer a training workdir or params directory owns, found from that directory.

    DIR/tokenizer.model      the tokenizer DIR's model was trained with (SentencePiece)
    DIR/tokenizer.json       its sidecar (jaxlm.data.tokenizer_metadata), when it has one
    DIR/hf_tokenizer.json    or instead: a Hugging Face tokenizer (an imported model's,
                             jaxlm.data.hf_tokenizer), its files in one

A training run keeps its own copy: a text run trains one there, and a run given
`data.tokenizer` or `train.init_from` copies that tokenizer in at its start
(jaxlm.data.run_inputs.ensure_tokenizer). Exports and params directories carry one the
same way. Every reader of DIR (resume, generate, chat, eval, export, convert,
grow-vocab, init_from) uses DIR's copy, so what it reads does not depend on the
directory the command runs in, and a different file placed at the path `data.tokenizer`
named (often relative to where the run was started) is never used in its place.

A workdir written before runs kept their own copy has only config.json's
`data.tokenizer`: it is used where it is found (an absolute path, or a relative one
from the current directory), and its absence is an error saying what to copy where.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from jaxlm.data.tokenizer_files import (
    HF_TOKENIZER_FILE,
    SENTENCEPIECE_FILE,
    STORED_NAMES,
    stored_bytes,
    stored_name,
    stored_tokenizer,
    tokenizer_fingerprint,
)
from jaxlm.data.tokenizer_metadata import sidecar_path
from jaxlm.errors import InputError

# The SentencePiece tokenizer's file name in a workdir, an export or a params directory
# (a Hugging Face tokenizer's is HF_TOKENIZER_FILE).
TOKENIZER_FILE = SENTENCEPIECE_FILE
__all__ = ["HF_TOKENIZER_FILE", "TOKENIZER_FILE", "stored_tokenizer"]


def file_sha256(path: Path) -> str:
    """sha256 of the tokenizer at `path` as a directory stores it."""
    return tokenizer_fingerprint(path)


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two paths hold the same tokenizer: identical stored bytes."""
    return Path(a).absolute() == Path(b).absolute() or file_sha256(a) == file_sha256(b)


def owned_tokenizer(directory: Path | str, data_tokenizer: str) -> Path | None:
    """DIR's own tokenizer, else (an older directory) `data_tokenizer` where it exists;
    None when neither is found. A relative `data_tokenizer` found from the current
    directory is used with a warning: nothing says it is the file the run used."""
    directory = Path(directory).absolute()
    own = stored_tokenizer(directory)
    if own is not None:
        return own
    if not data_tokenizer or not Path(data_tokenizer).exists():
        return None
    named = Path(data_tokenizer).absolute()
    if not Path(data_tokenizer).is_absolute():
        print(
            f"jaxlm: warning: {directory} has no {TOKENIZER_FILE}; using data.tokenizer "
            f"'{data_tokenizer}' from the current directory ({named}), which nothing "
            f"verifies; copy the run's tokenizer to {own} to stop guessing",
            file=sys.stderr,
        )
    return named


def require_owned_tokenizer(directory: Path | str, data_tokenizer: str) -> Path:
    """`owned_tokenizer`, or an InputError naming what is missing and what to do."""
    found = owned_tokenizer(directory, data_tokenizer)
    if found is not None:
        return found
    directory = Path(directory).absolute()
    missing = f"{directory}: no {TOKENIZER_FILE}"
    if not data_tokenizer:
        raise InputError(f"{missing}; copy the tokenizer its model was trained with there")
    where = ""
    if not Path(data_tokenizer).is_absolute():
        where = f" from {Path.cwd()} (it is relative to the directory the run was started in)"
    raise InputError(
        f"{missing}, and its config's data.tokenizer '{data_tokenizer}' is not found{where}; "
        f"copy the run's tokenizer to {directory / TOKENIZER_FILE}"
    )


def adopt_tokenizer(source: Path, directory: Path) -> Path:
    """Copies `source` (and its sidecar) to DIR/tokenizer.model, or a Hugging Face
    tokenizer (a model directory, its tokenizer.json, a stored one) to
    DIR/hf_tokenizer.json; returns the copy.

    Each file is written under a temporary name and renamed, the model last: a copy
    cut short leaves no tokenizer, and the next run copies again. A sidecar left
    there by another tokenizer goes when `source` has none (it would not match), and
    so does a stored tokenizer of the other kind.
    """
    target = Path(directory) / stored_name(source)
    for name in STORED_NAMES:
        if name != target.name:
            (Path(directory) / name).unlink(missing_ok=True)
    if target.name == HF_TOKENIZER_FILE:
        sidecar_path(Path(directory) / TOKENIZER_FILE).unlink(missing_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        partial.write_bytes(stored_bytes(source))
        partial.replace(target)
        return target
    pairs = [(sidecar_path(source), sidecar_path(target)), (Path(source), target)]
    for src, dst in pairs:
        if src.is_file():
            partial = dst.with_name(f".{dst.name}.partial")
            shutil.copyfile(src, partial)
            partial.replace(dst)
        else:
            dst.unlink(missing_ok=True)
    return target
