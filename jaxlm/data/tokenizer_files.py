"""Either kind of tokenizer from a path: jaxlm's SentencePiece model or a Hugging Face one.

    load_tokenizer("runs/x/tokenizer.model")        # SentencePiece (jaxlm.data.tokenizer)
    load_tokenizer("runs/x/hf_tokenizer.json")      # a stored Hugging Face tokenizer
    load_tokenizer("path/to/Qwen2.5-0.5B")          # a model directory's tokenizer.json
    load_tokenizer("path/to/Qwen2.5-0.5B/tokenizer.json")

Both kinds offer the same interface (`encode`, `encode_literal`, `decode`,
`token_bytes`, `piece_bytes`, `bos_id` (may be None), `eos_id`, `pad_id`,
`stop_ids`, `vocab_size`, `sha256`, `chat_template`), so pipelines, packing, chat and
preference encoding, evaluation and generation take either. A workdir, export or
params directory stores its tokenizer under the name of its kind: `tokenizer.model`,
or `hf_tokenizer.json` (the model directory's tokenizer files in one file,
jaxlm.data.hf_tokenizer).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from jaxlm.data.hf_tokenizer import BUNDLE_FILE, HFTokenizer, files_at, is_hf_tokenizer_path
from jaxlm.data.hf_tokenizer import bundle_bytes as _bundle_bytes
from jaxlm.data.tokenizer import Tokenizer

SENTENCEPIECE_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = BUNDLE_FILE
STORED_NAMES = (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE)


def load_tokenizer(path: Path | str, *, require_lossless: bool = True):
    """The tokenizer at `path`, of whichever kind it is."""
    path = Path(path)
    if is_hf_tokenizer_path(path):
        return HFTokenizer.load(path)
    if path.is_dir():
        raise FileNotFoundError(
            f"{path}: a directory with neither tokenizer.json, {HF_TOKENIZER_FILE} nor a "
            "tokenizer file given by name"
        )
    return Tokenizer.load(path, require_lossless=require_lossless)


def stored_name(path: Path | str) -> str:
    """The file name a directory keeps the tokenizer at `path` under."""
    return HF_TOKENIZER_FILE if is_hf_tokenizer_path(Path(path)) else SENTENCEPIECE_FILE


def stored_bytes(path: Path | str) -> bytes:
    """What a directory stores for the tokenizer at `path` (a bundle for Hugging Face)."""
    path = Path(path)
    if is_hf_tokenizer_path(path):
        return _bundle_bytes(files_at(path))
    return path.read_bytes()


def tokenizer_fingerprint(path: Path | str) -> str:
    """sha256 of what a directory stores for it: equal for the same tokenizer wherever
    it lies (a model directory, its tokenizer.json, or a run's stored copy)."""
    return hashlib.sha256(stored_bytes(path)).hexdigest()


def stored_tokenizer(directory: Path | str) -> Path | None:
    """The tokenizer file a directory holds, of either kind; None without one."""
    for name in STORED_NAMES:
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return None
