r"""Hugging Face tokenizers (a model directory's `tokenizer.json`) behind jaxlm's interface.

The open models people fine-tune ship their tokenizer as the files transformers reads:

    tokenizer.json            the `tokenizers` pipeline: normalizer, pre-tokenizer, BPE
                              vocabulary and merges, added (special) tokens, decoder
    tokenizer_config.json     bos/eos/pad/unk token names, often the Jinja chat_template
    special_tokens_map.json   older home of the same token names
    chat_template.jinja       newer home of the chat template
    generation_config.json    the model's stop tokens (eos_token_id, an id or a list)

Two kinds of BPE are read, told apart by the decoder: byte-level BPE (Qwen2/2.5/3,
Llama-3, SmolLM, GPT-2: every token is a string of bytes written with GPT-2's
byte-to-unicode alphabet) and SentencePiece-derived BPE with byte fallback (Llama-2
and Mistral `tokenizer.json`: "▁" for spaces, `<0xAB>` pieces for bytes). Anything
else (WordPiece, Unigram without byte pieces) is refused, naming the file.

Nothing is assumed about special-token ids: bos/eos/pad come from the config files,
`bos_id` is the token transformers itself puts before a text (None for Qwen, whose
documents are separated by EOS alone), and `stop_ids` are generation_config's
eos_token_id plus the tokenizer's eos. Encoding adds no special tokens, as
`encode(text, add_special_tokens=False)` in transformers; `encode` matches special
tokens written in the text as transformers does, `encode_literal` keeps them as text
(for untrusted message content, see jaxlm.data.jinja_chat).

A run keeps its tokenizer as one file, `hf_tokenizer.json` (a *bundle*): the original
files' exact text under their names, so a workdir, an export or a checkpoint copies,
compares and hashes it like a SentencePiece `.model`, and `jaxlm convert --to-hf`
writes the same files back byte for byte.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as FastTokenizer

from jaxlm.data.jinja_chat import JinjaChatTemplate
from jaxlm.errors import InputError

BUNDLE_FILE = "hf_tokenizer.json"
BUNDLE_FORMAT = "jaxlm-hf-tokenizer"
BUNDLE_VERSION = 1
# The files of a model directory that make up its tokenizer, copied verbatim. vocab.json
# and merges.txt repeat tokenizer.json for transformers' slow classes; they are kept so
# an export has every file the import had.
TEXT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)
BINARY_FILES = ("tokenizer.model",)
_SPACE = "\u2581"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


_UNICODE_TO_BYTE = {char: byte for byte, char in bytes_to_unicode().items()}


# ----------------------------------------------------------------------------- bundles


def read_bundle_files(directory: Path) -> dict[str, bytes]:
    """The tokenizer files of a model directory (their bytes), tokenizer.json required."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise InputError(
            f"{directory}: no tokenizer.json (jaxlm reads Hugging Face tokenizers from "
            "tokenizer.json; a directory with only tokenizer.model or vocab.json/merges.txt "
            "can be converted to it with transformers' AutoTokenizer(...).save_pretrained)"
        )
    return {
        name: (directory / name).read_bytes()
        for name in (*TEXT_FILES, *BINARY_FILES)
        if (directory / name).is_file()
    }


def bundle_bytes(files: Mapping[str, bytes]) -> bytes:
    """One JSON file holding `files` exactly; the same files give the same bytes."""
    text, binary = {}, {}
    for name in sorted(files):
        if name in BINARY_FILES:
            binary[name] = base64.b64encode(files[name]).decode("ascii")
            continue
        try:
            text[name] = files[name].decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{name}: not UTF-8 text") from None
    data = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "files": text}
    if binary:
        data["binary_files"] = binary
    return json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8")


def bundle_files(content: bytes, path: Path) -> dict[str, bytes]:
    """The files a bundle holds; a file that is not a bundle is an error naming it."""
    try:
        data = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a jaxlm Hugging Face tokenizer bundle ({error})") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{path}: not a jaxlm Hugging Face tokenizer bundle (no format key)")
    if data.get("format_version") != BUNDLE_VERSION:
        raise InputError(f"{path}: bundle format_version {data.get('format_version')!r} unknown")
    files = {name: text.encode("utf-8") for name, text in data["files"].items()}
    for name, text in data.get("binary_files", {}).items():
        files[name] = base64.b64decode(text)
    unknown = set(files) - set(TEXT_FILES) - set(BINARY_FILES)
    if unknown or "tokenizer.json" not in files:
        raise InputError(f"{path}: bundle holds {sorted(files)}, which is not a tokenizer")
    return files


def write_bundle_files(files: Mapping[str, bytes], directory: Path, *, skip=()) -> list[Path]:
    """Writes the bundled files into `directory` unchanged (an HF export)."""
    written = []
    for name, content in files.items():
        if name in skip:
            continue
        target = Path(directory) / name
        target.write_bytes(content)
        written.append(target)
    return written


def is_hf_tokenizer_path(path: Path) -> bool:
    """A bundle, a tokenizer.json, or a directory holding one."""
    path = Path(path)
    if path.is_dir():
        return (path / "tokenizer.json").is_file() or (path / BUNDLE_FILE).is_file()
    return path.name.endswith(".json") and path.is_file()


def files_at(path: Path) -> dict[str, bytes]:
    """The tokenizer files `path` names: a bundle, a model directory, or a tokenizer.json
    (with the config files next to it)."""
    path = Path(path)
    if path.is_dir():
        if (path / BUNDLE_FILE).is_file() and not (path / "tokenizer.json").is_file():
            return bundle_files((path / BUNDLE_FILE).read_bytes(), path / BUNDLE_FILE)
        return read_bundle_files(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    content = path.read_bytes()
    if content.lstrip()[:1] == b"{" and b'"format"' in content[:200]:
        return bundle_files(content, path)
    if path.name == "tokenizer.json" or b'"model"' in content:
        files = read_bundle_files(path.parent) if path.name == "tokenizer.json" else {}
        files["tokenizer.json"] = content
        return files
    return bundle_files(content, path)


# ----------------------------------------------------------------------------- tokenizer


class HFTokenizer:
    """A Hugging Face `tokenizer.json` with its config files, as jaxlm uses a tokenizer."""

    kind = "huggingface"

    def __init__(self, files: Mapping[str, bytes], path: Path | str):
        self.path = Path(path)
        self.files = dict(files)
        self._bundle = bundle_bytes(self.files)
        self.sha256 = hashlib.sha256(self._bundle).hexdigest()
        where = self.path if self.path.name == "tokenizer.json" else self.path / "tokenizer.json"
        raw = self.files["tokenizer.json"]
        try:
            spec = json.loads(raw)
            self._fast = FastTokenizer.from_str(raw.decode("utf-8"))
        except Exception as error:  # tokenizers raises plain Exception subclasses
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            reason = f"not a usable Hugging Face tokenizer.json ({first})"
            raise InputError(f"{where}: {reason}") from None
        self._where = where
        self._byte_kind = _byte_kind(spec, where)
        self._token_sources: dict[str, str] = {}  # special token key -> file naming it
        self.config = self._json("tokenizer_config.json")
        self.special_tokens_map = self._json("special_tokens_map.json")
        self.generation_config = self._json("generation_config.json")
        # Plain copies: one that keeps special tokens as text (encode_literal).
        self._literal = FastTokenizer.from_str(raw.decode("utf-8"))
        self._literal.encode_special_tokens = True
        self.added_tokens = {
            int(i): token for i, token in self._fast.get_added_tokens_decoder().items()
        }
        vocab = self._fast.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1
        self.eos_token = self._token_name("eos_token")
        self.bos_token = self._token_name("bos_token")
        self.pad_token = self._token_name("pad_token")
        self.unk_token = self._token_name("unk_token")
        self.eos_id = self._required_id(self.eos_token, "eos_token")
        self.bos_id = self._prepended_bos()
        pad = self._optional_id(self.pad_token, "pad_token")
        self.pad_id = self.eos_id if pad is None else pad
        self.unk_id = self._optional_id(self.unk_token, "unk_token")
        self.stop_ids = self._stop_ids()

    # -- loading

    @classmethod
    def load(cls, path: Path | str) -> HFTokenizer:
        """From a bundle file, a model directory or a tokenizer.json."""
        return cls(files_at(Path(path)), Path(path))

    def bundle(self) -> bytes:
        """The bundle file's bytes (what a workdir stores as hf_tokenizer.json)."""
        return self._bundle

    def __reduce__(self):
        return (HFTokenizer, (self.files, self.path))

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"

    def _json(self, name: str) -> dict[str, Any]:
        if name not in self.files:
            return {}
        try:
            data = json.loads(self.files[name])
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{self.path}: {name} is not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise InputError(f"{self.path}: {name} must hold a JSON object")
        return data

    def _token_name(self, key: str) -> str | None:
        """A special token's text from tokenizer_config.json, else special_tokens_map.json."""
        for name, source in (
            ("tokenizer_config.json", self.config),
            ("special_tokens_map.json", self.special_tokens_map),
        ):
            value = source.get(key)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if value is not None:
                if not isinstance(value, str):
                    raise InputError(f"{self.path}: {name} {key} must be a string, got {value!r}")
                self._token_sources[key] = name
                return value
        return None

    def _optional_id(self, token: str | None, key: str) -> int | None:
        if token is None:
            return None
        token_id = self._fast.token_to_id(token)
        if token_id is None:
            source = self._token_sources.get(key, "tokenizer_config.json")
            raise InputError(
                f"{self.path}: {source} names {key} {token!r}, which is not in "
                f"{self._where.name}'s vocabulary"
            )
        return token_id

    def _required_id(self, token: str | None, key: str) -> int:
        if token is None:
            raise InputError(
                f"{self.path}: no {key} in tokenizer_config.json or special_tokens_map.json; "
                "jaxlm needs it to end documents and stop generation"
            )
        return self._optional_id(token, key)

    def _prepended_bos(self) -> int | None:
        """The token transformers puts before every text (its post-processor's), if any."""
        plain = self._fast.encode("a", add_special_tokens=False).ids
        full = self._fast.encode("a", add_special_tokens=True).ids
        if len(full) > len(plain) and full[-len(plain) :] == plain:
            return full[0]
        return None

    def _stop_ids(self) -> tuple[int, ...]:
        ids = [self.eos_id]
        configured = self.generation_config.get("eos_token_id")
        for token_id in configured if isinstance(configured, list) else [configured]:
            if token_id is None:
                continue
            if not isinstance(token_id, int) or isinstance(token_id, bool):
                raise InputError(
                    f"{self.path}: generation_config.json eos_token_id must be an id or a list "
                    f"of ids, got {configured!r}"
                )
            if token_id not in ids:
                if not 0 <= token_id < self.vocab_size:
                    raise InputError(
                        f"{self.path}: generation_config.json eos_token_id {token_id} is outside "
                        f"the vocabulary of {self.vocab_size}"
                    )
                ids.append(token_id)
        return tuple(ids)

    # -- the interface every tokenizer has

    @property
    def byte_kind(self) -> str:
        """'byte_level' (Qwen, Llama-3) or 'metaspace' (SentencePiece-style with byte fallback)."""
        return self._byte_kind

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def chat_template(self):
        """The model's Jinja chat template (jaxlm.data.jinja_chat), or None without one."""
        source = self.chat_template_source()
        return None if source is None else JinjaChatTemplate(source, self)

    def chat_template_source(self) -> str | None:
        if "chat_template.jinja" in self.files:
            return self.files["chat_template.jinja"].decode("utf-8")
        template = self.config.get("chat_template")
        if template is None and "chat_template.json" in self.files:
            template = self._json("chat_template.json").get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is not None and not isinstance(template, str):
            raise InputError(f"{self.path}: tokenizer_config.json chat_template is not a string")
        return template

    @property
    def user_symbols(self) -> tuple[str, ...]:
        return tuple(t.content for _, t in sorted(self.added_tokens.items()))

    def special_token_names(self) -> dict[str, str]:
        """bos_token, eos_token, ... as a chat template sees them (transformers' map)."""
        names = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        for key in ("sep_token", "cls_token", "mask_token"):
            names[key] = self._token_name(key)
        return {key: value for key, value in names.items() if value is not None}

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as transformers encodes it with add_special_tokens=False."""
        return self._fast.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str, *, literal: bool = False):
        """(ids, character offsets) of `text`; `literal` keeps special tokens as text."""
        encoding = (self._literal if literal else self._fast).encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_literal(self, text: str) -> list[int]:
        """Like `encode`, but text spelling a special token stays text (untrusted content)."""
        return self._literal.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._fast.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, as transformers' decode (special tokens included)."""
        return self._fast.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        return self._fast.id_to_token(int(token_id))

    piece = id_to_piece

    def piece_to_id(self, piece: str) -> int | None:
        return self._fast.token_to_id(piece)

    def is_byte(self, token_id: int) -> bool:
        """A byte-fallback piece (<0xAB>); byte-level BPE has none."""
        piece = self._fast.id_to_token(int(token_id)) or ""
        return self._byte_kind == "metaspace" and _byte_piece(piece) is not None

    def piece_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes the token stands for (an added token: its text)."""
        return self._piece_bytes[int(token_id)]

    def token_bytes(self) -> np.ndarray:
        """Bytes each id adds to the text (int32 [vocab_size]); bos, eos and pad count 0
        (jaxlm inserts them; they are not text), for exact bits per byte.

        Exact for the text as the tokenizer sees it: after its normaliser (NFC for
        Qwen and Llama-3, which composes "e" + U+0301 into one character) and with the
        space a SentencePiece-style tokenizer prepends to each text (Llama-2/Mistral:
        one byte more per document).
        """
        counts = np.array([len(b) for b in self._piece_bytes], dtype=np.int32)
        for token_id in {self.bos_id, self.eos_id, self.pad_id} - {None}:
            counts[token_id] = 0
        return counts

    @functools.cached_property
    def _piece_bytes(self) -> list[bytes]:
        pieces: list[bytes] = [b""] * self.vocab_size
        for token, token_id in self._fast.get_vocab(with_added_tokens=False).items():
            pieces[token_id] = _token_to_bytes(token, self._byte_kind)
        for token_id, token in self.added_tokens.items():
            # An added <0xAB> in a byte-fallback tokenizer is still that byte.
            byte = _byte_piece(token.content) if self._byte_kind == "metaspace" else None
            pieces[token_id] = token.content.encode("utf-8") if byte is None else bytes([byte])
        return pieces


def _byte_kind(spec: Any, where: Path) -> str:
    """'byte_level' or 'metaspace' from tokenizer.json's decoder; others are refused."""
    decoder = spec.get("decoder") if isinstance(spec, dict) else None
    parts = []
    if isinstance(decoder, dict):
        parts = (
            decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
        )
    types = {part.get("type") for part in parts if isinstance(part, dict)}
    model = spec.get("model", {}).get("type") if isinstance(spec, dict) else None
    if "ByteLevel" in types:
        return "byte_level"
    if "ByteFallback" in types and (
        "Metaspace" in types
        or any(p.get("type") == "Replace" and p.get("content") == " " for p in parts)
    ):
        return "metaspace"
    raise InputError(
        f"{where}: a {model or 'unknown'} tokenizer with decoder {sorted(types) or None} is not "
        "supported; jaxlm reads byte-level BPE (Qwen, Llama-3, SmolLM, GPT-2) and "
        "SentencePiece-style BPE with byte fallback (Llama-2, Mistral)"
    )


def _byte_piece(piece: str) -> int | None:
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def _token_to_bytes(token: str, kind: str) -> bytes:
    if kind == "byte_level":
        try:
            return bytes(_UNICODE_TO_BYTE[c] for c in token)
        except KeyError:  # not written in the byte alphabet (should not happen)
            return token.encode("utf-8")
    byte = _byte_piece(token)
    if byte is not None:
        return bytes([byte])
    return token.replace(_SPACE, " ").encode("utf-8")


def write_bundle(tokenizer: HFTokenizer, target: Path) -> Path:
    """Writes `tokenizer`'s bundle to `target` atomically."""
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    partial.write_bytes(tokenizer.bundle())
    os.replace(partial, target)
    return target
