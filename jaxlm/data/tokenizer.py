r"""SentencePiece tokenizer: in-process training, lossless encoding, bytes per token.

Pinned ids, the same for every jaxlm tokenizer so batches and models agree on them:

    0 <pad>   1 <s> (BOS)   2 </s> (EOS)   3 <unk>   4 <|im_start|>   5 <|im_end|>
    6..261 byte-fallback pieces <0x00>..<0xFF>, then learned pieces

The settings keep the round trip `decode(encode(text)) == text` exact for any text:
no normalisation, no dummy prefix, whitespace kept as is, and byte fallback for every
character the vocabulary lacks. SentencePiece reads its training input one sentence
at a time, so texts are fed as line-aligned chunks that keep their newlines; pieces
such as ":\n" or ")\n\n" are then learned like any other. (Stdlib validation split,
vocab 4096, 5M training characters: 3.12 bytes/token this way; 2.93 with "\n" as a
reserved single-piece symbol, which forbids those merges, whether lines or chunks are
fed.)
"""

import functools
import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import sentencepiece as spm

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")
IM_START_ID = 4
IM_END_ID = 5

# SentencePiece skips training sentences longer than this many bytes, so chunks stay
# below it. 4 KiB keeps whole functions together while staying cheap to train on.
_MAX_SENTENCE_BYTES = 4096
# A single line longer than a chunk is cut every this many characters (<= 4 bytes each).
_LONG_LINE_CHARS = _MAX_SENTENCE_BYTES // 4

# SentencePiece writes spaces as U+2581 inside pieces and turns every U+2581 back
# into a space when decoding, so a literal U+2581 in the input would come back as a
# space. Such characters are encoded as their three UTF-8 byte pieces instead.
_SPACE_MARK = "\u2581"
_MARKER_SPLIT = re.compile("(" + "|".join(re.escape(m) for m in CHAT_MARKERS) + ")")


def _trainer_settings(vocab_size: int, model_type: str, num_threads: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        user_defined_symbols=list(CHAT_MARKERS),
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        num_threads=num_threads,
        minloglevel=2,  # errors only; the trainer is chatty otherwise
    )


def train_tokenizer(
    texts: Iterable[str],
    model_prefix: Path,
    *,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    max_chars: int = 20_000_000,
    num_threads: int = 2,
    seed: int = 0,
) -> "Tokenizer":
    """Trains a SentencePiece model on at most `max_chars` characters of `texts`.

    Writes `<model_prefix>.model` and `<model_prefix>.vocab` (the model last, each by
    atomic rename, so a present `.model` is always complete) and returns it loaded.
    The model bytes depend only on the input text and the arguments.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    model_path = Path(f"{model_prefix}.model")
    vocab_path = Path(f"{model_prefix}.vocab")
    input_errors: list[BaseException] = []

    def sentences() -> Iterator[str]:
        # SentencePiece turns errors raised while reading input into a RuntimeError;
        # keep the original (e.g. a FileNotFoundError naming a file) to re-raise it.
        try:
            yield from training_sentences(capped_texts(texts, max_chars))
        except Exception as error:
            input_errors.append(error)
            raise

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()  # not model_prefix=, which the model would record: a temp name
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            **_trainer_settings(vocab_size, model_type, num_threads),
        )
    except RuntimeError as error:
        if input_errors:
            raise input_errors[0] from error
        raise ValueError(f"training tokenizer {model_path} failed: {error}") from error
    tokenizer = Tokenizer(model.getvalue(), model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(vocab_path, tokenizer.vocab_listing().encode("utf-8"))
    _write_atomically(model_path, model.getvalue())
    return tokenizer


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, path)


def capped_texts(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Yields texts until `max_chars` characters in all; the last one is cut to fit."""
    remaining = max_chars
    for text in texts:
        if remaining <= 0:
            return
        text = text[:remaining]
        remaining -= len(text)
        yield text


def training_sentences(texts: Iterable[str]) -> Iterator[str]:
    """Splits texts into line-aligned chunks of at most `_MAX_SENTENCE_BYTES` bytes.

    Newlines stay inside the chunks, so the trainer sees (and can merge) them.
    """
    for text in texts:
        chunk: list[str] = []
        chunk_bytes = 0
        for piece in _lines_cut_to_fit(text):
            piece_bytes = len(piece.encode("utf-8"))
            if chunk and chunk_bytes + piece_bytes > _MAX_SENTENCE_BYTES:
                yield "".join(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(piece)
            chunk_bytes += piece_bytes
        if chunk:
            yield "".join(chunk)


def _lines_cut_to_fit(text: str) -> Iterator[str]:
    for line in text.splitlines(keepends=True):
        for start in range(0, len(line), _LONG_LINE_CHARS):
            yield line[start : start + _LONG_LINE_CHARS]


class Tokenizer:
    """A loaded SentencePiece model with jaxlm's pinned ids. Encoding adds no BOS/EOS."""

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, model_proto: bytes, path: Path):
        self.path = Path(path)
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self._model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        _check_pinned_ids(self._sp, self.path)
        self._space_mark_ids = [_byte_piece_id(self._sp, b) for b in _SPACE_MARK.encode()]

    @classmethod
    def load(cls, path: Path) -> "Tokenizer":
        """Loads a `.model` file; a missing file raises FileNotFoundError naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        return cls(path.read_bytes(), path)

    def __reduce__(self):
        # Grain's multiprocess prefetch sends the pipeline to worker processes; rebuild
        # from the model bytes there rather than from a file that may have moved.
        return (Tokenizer, (self._model_proto, self.path))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        if _SPACE_MARK not in text:
            return self._sp.encode(text)
        ids: list[int] = []
        for index, part in enumerate(text.split(_SPACE_MARK)):
            if index:
                ids.extend(self._space_mark_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return ids

    def encode_literal(self, text: str) -> list[int]:
        """Like `encode`, but text that spells a chat marker stays text (byte pieces).

        For untrusted content (chat messages): a user who types "<|im_end|>" must not
        be able to close their turn and forge an assistant one. Decoding gives the
        text back unchanged, and `token_bytes` stays exact.
        """
        ids: list[int] = []
        for part in _MARKER_SPLIT.split(text):
            if part in CHAT_MARKERS:
                ids.extend(_byte_piece_id(self._sp, b) for b in part.encode("utf-8"))
            elif part:
                ids.extend(self.encode(part))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; plain texts go through SentencePiece's batch encoder."""
        texts = list(texts)
        if any(_SPACE_MARK in text for text in texts):
            return [self.encode(text) for text in texts]
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; pad, BOS and EOS are skipped."""
        return self._sp.decode([int(i) for i in ids])

    def vocab_listing(self) -> str:
        """`piece<TAB>score` per line, as SentencePiece writes `.vocab` files."""
        return "".join(
            f"{self._sp.id_to_piece(i)}\t{self._sp.get_score(i):g}\n"
            for i in range(self.vocab_size)
        )

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id adds to decoded text (int32, shape [vocab_size]).

        Byte pieces count 1, control pieces (pad, BOS, EOS) and <unk> count 0, chat
        markers count the length of their text. For any text,
        `token_bytes()[encode(text)].sum() == len(text.encode("utf-8"))`, which makes
        bits-per-byte exact.
        """
        return self._token_bytes.copy()

    @functools.cached_property
    def _token_bytes(self) -> np.ndarray:
        counts = np.zeros(self.vocab_size, dtype=np.int32)
        for token_id in range(self.vocab_size):
            counts[token_id] = _piece_byte_count(self._sp, token_id)
        return counts


def _piece_byte_count(sp: spm.SentencePieceProcessor, token_id: int) -> int:
    if sp.is_control(token_id) or sp.is_unknown(token_id):
        return 0
    if sp.is_byte(token_id):
        return 1
    return len(sp.id_to_piece(token_id).replace(_SPACE_MARK, " ").encode("utf-8"))


def _byte_piece_id(sp: spm.SentencePieceProcessor, byte: int) -> int:
    return sp.piece_to_id(f"<0x{byte:02X}>")


def _check_pinned_ids(sp: spm.SentencePieceProcessor, path: Path) -> None:
    """Refuses models whose special ids differ from jaxlm's or that lack byte fallback."""
    expected = {
        "<pad>": PAD_ID,
        "<s>": BOS_ID,
        "</s>": EOS_ID,
        "<unk>": UNK_ID,
        CHAT_MARKERS[0]: IM_START_ID,
        CHAT_MARKERS[1]: IM_END_ID,
    }
    actual = {piece: sp.piece_to_id(piece) for piece in expected}
    if actual != expected:
        raise ValueError(f"tokenizer {path} has special ids {actual}, jaxlm needs {expected}")
    if not all(sp.is_byte(_byte_piece_id(sp, byte)) for byte in range(256)):
        raise ValueError(f"tokenizer {path} lacks byte-fallback pieces, so it is not lossless")
