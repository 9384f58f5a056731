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

Extra special tokens (`user_symbols`) take the ids right after the chat markers and
push the byte pieces up by as many. Every model is written with a `PREFIX.json`
sidecar (jaxlm.data.tokenizer_metadata) that stores its chat template and is checked
against the model's hash on load. A model trained with `byte_fallback=False` maps
unknown characters to <unk>, so it is lossy: it loads only with
`require_lossless=False` (for `jaxlm tokenizer eval`), never for training.
"""

import dataclasses
import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2

from jaxlm.data.chat_template import ChatTemplate
from jaxlm.data.tokenizer_metadata import (
    TokenizerMetadata,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from jaxlm.errors import InputError

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


def _trainer_settings(
    vocab_size: int,
    model_type: str,
    num_threads: int,
    *,
    byte_fallback: bool = True,
    user_symbols: Sequence[str] = (),
    hard_vocab_limit: bool = True,
) -> dict:
    return dict(
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        user_defined_symbols=[*CHAT_MARKERS, *user_symbols],
        byte_fallback=byte_fallback,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=_MAX_SENTENCE_BYTES,
        # False makes vocab_size an upper bound instead of an error when the text
        # supports fewer pieces (used for the domain model of `tokenizer extend`).
        hard_vocab_limit=hard_vocab_limit,
        num_threads=num_threads,
        minloglevel=2,  # errors only; the trainer is chatty otherwise
    )


def check_user_symbols(symbols: Sequence[str]) -> tuple[str, ...]:
    """Extra special tokens, refused when SentencePiece could never match them in text."""
    reserved = {"<pad>", "<s>", "</s>", "<unk>", *CHAT_MARKERS}
    seen: set[str] = set()
    for symbol in symbols:
        if not symbol or any(c.isspace() for c in symbol) or _SPACE_MARK in symbol:
            # Spaces reach the model as U+2581, so a symbol with a space never matches.
            raise InputError(f"user symbol {symbol!r} must be non-empty and contain no spaces")
        if symbol in reserved or re.fullmatch(r"<0x[0-9A-F]{2}>", symbol):
            raise InputError(f"user symbol {symbol!r} is reserved by jaxlm or SentencePiece")
        if symbol in seen:
            raise InputError(f"user symbol {symbol!r} is given twice")
        seen.add(symbol)
    return tuple(symbols)


def train_tokenizer(
    texts: Iterable[str],
    model_prefix: Path,
    *,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    max_chars: int = 20_000_000,
    num_threads: int = 2,
    seed: int = 0,
    byte_fallback: bool = True,
    user_symbols: Sequence[str] = (),
) -> "Tokenizer":
    """Trains a SentencePiece model on at most `max_chars` characters of `texts`.

    Writes `<model_prefix>.model`, `.vocab` and the `.json` sidecar (see
    `save_tokenizer`) and returns the model loaded. The model bytes depend only on
    the input text and the arguments.
    """
    model_path = Path(f"{model_prefix}.model")
    model_proto = train_model_proto(
        texts,
        vocab_size=vocab_size,
        model_type=model_type,
        max_chars=max_chars,
        num_threads=num_threads,
        seed=seed,
        byte_fallback=byte_fallback,
        user_symbols=user_symbols,
        where=model_path,
    )
    return save_tokenizer(model_proto, model_prefix, require_lossless=byte_fallback)


def train_model_proto(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_type: Literal["bpe", "unigram"] = "bpe",
    max_chars: int = 20_000_000,
    num_threads: int = 2,
    seed: int = 0,
    byte_fallback: bool = True,
    user_symbols: Sequence[str] = (),
    hard_vocab_limit: bool = True,
    where: Path | str = "<tokenizer>",
) -> bytes:
    """The serialized model trained in memory; errors name `where`.

    The ids are checked before returning: the pinned ones, then `user_symbols` in
    order from 6.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    user_symbols = check_user_symbols(user_symbols)
    input_errors: list[BaseException] = []

    def sentences() -> Iterator[str]:
        # SentencePiece turns errors raised while reading input into a RuntimeError;
        # keep the original (e.g. a FileNotFoundError naming a file) to re-raise it.
        try:
            yield from training_sentences(capped_texts(texts, max_chars))
        except Exception as error:
            input_errors.append(error)
            raise

    settings = _trainer_settings(
        vocab_size,
        model_type,
        num_threads,
        byte_fallback=byte_fallback,
        user_symbols=user_symbols,
        hard_vocab_limit=hard_vocab_limit,
    )
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()  # not model_prefix=, which the model would record: a temp name
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model, **settings
        )
    except RuntimeError as error:
        if input_errors:
            raise input_errors[0] from error
        # Almost always the input's fault (e.g. more pieces asked for than it supports).
        raise InputError(f"training tokenizer {where} failed: {error}") from error
    model_proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    _check_pinned_ids(sp, Path(where), require_lossless=byte_fallback)
    got = [sp.id_to_piece(IM_END_ID + 1 + i) for i in range(len(user_symbols))]
    if got != list(user_symbols):
        raise ValueError(f"tokenizer {where}: user symbols got pieces {got}, not {user_symbols}")
    return model_proto


def save_tokenizer(
    model_proto: bytes,
    model_prefix: Path | str,
    *,
    extended_from: dict | None = None,
    require_lossless: bool = True,
) -> "Tokenizer":
    """Writes `<prefix>.vocab`, `<prefix>.model` and the `<prefix>.json` sidecar.

    Each by atomic rename, the model after the vocab listing so a present `.model`
    is always complete, and any old sidecar removed before the model is replaced:
    a crash in between leaves a model without sidecar (which loads), never a model
    next to a sidecar describing another one.
    """
    model_path = Path(f"{model_prefix}.model")
    tokenizer = Tokenizer(model_proto, model_path, require_lossless=require_lossless)
    metadata = dataclasses.replace(tokenizer.metadata, extended_from=extended_from)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(Path(f"{model_prefix}.vocab"), tokenizer.vocab_listing().encode("utf-8"))
    sidecar_path(model_path).unlink(missing_ok=True)
    _write_atomically(model_path, model_proto)
    write_sidecar(model_path, metadata)
    return Tokenizer(model_proto, model_path, metadata, require_lossless=require_lossless)


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
    """A loaded SentencePiece model with jaxlm's pinned ids. Encoding adds no BOS/EOS.

    `metadata` is what the sidecar says (chat template, provenance), or what the
    model itself says when there is no sidecar.
    """

    kind = "sentencepiece"
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID
    # What ends a generation: EOS, and the end of a chat turn.
    stop_ids = (EOS_ID, IM_END_ID)

    def __init__(
        self,
        model_proto: bytes,
        path: Path,
        metadata: TokenizerMetadata | None = None,
        *,
        require_lossless: bool = True,
    ):
        self.path = Path(path)
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self._model_proto = model_proto
        self._require_lossless = require_lossless
        self._sp = _processor(model_proto, self.path)
        _check_pinned_ids(self._sp, self.path, require_lossless=require_lossless)
        self.metadata = metadata or describe_model(model_proto, self.sha256)
        if self.metadata.byte_fallback:
            self._space_mark_ids = [_byte_piece_id(self._sp, b) for b in _SPACE_MARK.encode()]
        else:
            self._space_mark_ids = [UNK_ID]
        # Every special symbol stays text in `encode_literal`; longest first, so a
        # symbol that starts with another one is matched whole.
        specials = sorted([*CHAT_MARKERS, *self.metadata.user_symbols], key=len, reverse=True)
        self._specials = frozenset(specials)
        self._special_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    @classmethod
    def load(cls, path: Path, *, require_lossless: bool = True) -> "Tokenizer":
        """Loads a `.model` file and its `.json` sidecar if there is one.

        A missing model raises FileNotFoundError naming it; a sidecar that does not
        match the model raises InputError naming both.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        model_proto = path.read_bytes()
        try:
            described = describe_model(model_proto, hashlib.sha256(model_proto).hexdigest())
        except DecodeError:
            raise _not_a_model(path, model_proto) from None
        metadata = read_sidecar(path, described) or described
        return cls(model_proto, path, metadata, require_lossless=require_lossless)

    def __reduce__(self):
        # Grain's multiprocess prefetch sends the pipeline to worker processes; rebuild
        # from the model bytes there rather than from a file that may have moved.
        return (
            _rebuild_tokenizer,
            (self._model_proto, self.path, self.metadata, self._require_lossless),
        )

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (what the `.model` file holds)."""
        return self._model_proto

    @property
    def chat_template(self) -> ChatTemplate:
        return self.metadata.chat_template

    @property
    def user_symbols(self) -> tuple[str, ...]:
        """Extra special tokens after the chat markers, in id order."""
        return tuple(self.metadata.user_symbols)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        """The id of `piece`, or `unk_id` when the vocabulary lacks it."""
        return self._sp.piece_to_id(piece)

    def is_byte(self, token_id: int) -> bool:
        return self._sp.is_byte(int(token_id))

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
        """Like `encode`, but text that spells a special symbol stays text (byte pieces).

        For untrusted content (chat messages): a user who types "<|im_end|>" must not
        be able to close their turn and forge an assistant one. The same holds for
        the model's user symbols. Decoding gives the text back unchanged, and
        `token_bytes` stays exact.
        """
        ids: list[int] = []
        for part in self._special_split.split(text):
            if part in self._specials:
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

    def piece(self, token_id: int) -> str:
        """The SentencePiece piece of one id (e.g. '▁def', '<0x0A>')."""
        return self._sp.id_to_piece(int(token_id))

    def piece_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one id adds to decoded text (b"" for pad, BOS, EOS, <unk>)."""
        token_id = int(token_id)
        if self._sp.is_control(token_id) or self._sp.is_unknown(token_id):
            return b""
        if self._sp.is_byte(token_id):
            return bytes([int(self._sp.id_to_piece(token_id)[3:5], 16)])
        return self._sp.id_to_piece(token_id).replace(_SPACE_MARK, " ").encode("utf-8")

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
        bits-per-byte exact. (Not in a model without byte fallback, where an <unk>
        stands for text it lost.)
        """
        return self._token_bytes.copy()

    @functools.cached_property
    def _token_bytes(self) -> np.ndarray:
        counts = np.zeros(self.vocab_size, dtype=np.int32)
        for token_id in range(self.vocab_size):
            counts[token_id] = _piece_byte_count(self._sp, token_id)
        return counts


def _processor(model_proto: bytes, path: Path) -> spm.SentencePieceProcessor:
    if not model_proto:  # SentencePiece accepts it as a model without pieces
        raise _not_a_model(path, model_proto)
    try:
        return spm.SentencePieceProcessor(model_proto=model_proto)
    except RuntimeError:  # its only error: the bytes do not parse as a model
        raise _not_a_model(path, model_proto) from None


def _not_a_model(path: Path, content: bytes) -> InputError:
    """The error for a file given as a tokenizer that is not one, saying what it looks
    like (the usual mix-up is a Hugging Face tokenizer.json for a .model)."""
    return InputError(
        f"tokenizer {path} is not a SentencePiece model ({_looks_like(content)}); jaxlm "
        "loads SentencePiece .model files, e.g. one `jaxlm tokenizer train` wrote"
    )


def _looks_like(content: bytes) -> str:
    if not content.strip():
        return "the file is empty"
    if _starts_like_a_model(content):
        return "it starts like one but is damaged or truncated"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return "unreadable bytes"
    try:
        data = json.loads(text)
    except ValueError:
        return "it is a text file"
    if isinstance(data, dict) and "model" in data:
        return "it looks like a Hugging Face tokenizer.json"
    return "it is a JSON file"


def _starts_like_a_model(content: bytes) -> bool:
    """A serialized model begins with its first piece (field 1, length-delimited); a
    damaged or truncated one still does, and that piece parses."""
    if content[:1] != b"\x0a":
        return False
    length, position = 0, 1
    for shift in range(0, 35, 7):  # the piece's length, a varint of at most 5 bytes
        if position >= len(content):
            return False
        byte = content[position]
        length |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            break
    piece = sentencepiece_model_pb2.ModelProto.SentencePiece()
    try:
        piece.ParseFromString(content[position : position + length])
    except DecodeError:
        return False
    return position + length <= len(content) and bool(piece.piece)


def _rebuild_tokenizer(model_proto, path, metadata, require_lossless) -> Tokenizer:
    return Tokenizer(model_proto, path, metadata, require_lossless=require_lossless)


def describe_model(model_proto: bytes, sha256: str) -> TokenizerMetadata:
    """What a serialized model says about itself, as sidecar metadata (ChatML template)."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
    return TokenizerMetadata(
        model_sha256=sha256,
        model_type=model_type.lower(),
        vocab_size=len(proto.pieces),
        byte_fallback=proto.trainer_spec.byte_fallback,
        special_ids=dict(_PINNED_IDS),
        user_symbols={
            piece.piece: index
            for index, piece in enumerate(proto.pieces)
            if piece.type == user_defined and piece.piece not in CHAT_MARKERS
        },
    )


def _piece_byte_count(sp: spm.SentencePieceProcessor, token_id: int) -> int:
    if sp.is_control(token_id) or sp.is_unknown(token_id):
        return 0
    if sp.is_byte(token_id):
        return 1
    return len(sp.id_to_piece(token_id).replace(_SPACE_MARK, " ").encode("utf-8"))


def _byte_piece_id(sp: spm.SentencePieceProcessor, byte: int) -> int:
    return sp.piece_to_id(f"<0x{byte:02X}>")


_PINNED_IDS = {
    "<pad>": PAD_ID,
    "<s>": BOS_ID,
    "</s>": EOS_ID,
    "<unk>": UNK_ID,
    CHAT_MARKERS[0]: IM_START_ID,
    CHAT_MARKERS[1]: IM_END_ID,
}


def _check_pinned_ids(
    sp: spm.SentencePieceProcessor, path: Path, *, require_lossless: bool = True
) -> None:
    """Refuses models whose special ids differ from jaxlm's or that lack byte fallback."""
    actual = {piece: sp.piece_to_id(piece) for piece in _PINNED_IDS}
    if actual != _PINNED_IDS:
        raise InputError(f"tokenizer {path} has special ids {actual}, jaxlm needs {_PINNED_IDS}")
    if require_lossless and not all(sp.is_byte(_byte_piece_id(sp, b)) for b in range(256)):
        raise InputError(
            f"tokenizer {path} lacks byte-fallback pieces, so it is not lossless (trained "
            "with byte fallback off? such a model can only be evaluated, not trained on)"
        )
