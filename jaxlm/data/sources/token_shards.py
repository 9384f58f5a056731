"""Pre-tokenized shards (`tokens:` sources): the on-disk layout and its reader.

A shard directory, as written by `jaxlm data tokenize` (token_shard_writer.py):

    manifest.json              what is here and how it was made (below); written last
    shard-00000.tokens         every document's tokens [BOS, ..., EOS], back to back,
                               flat little-endian uint16 (vocab <= 65535) or uint32
    shard-00000.offsets.npy    int64, documents + 1 entries: document d is
                               tokens[offsets[d]:offsets[d + 1]]
    shard-00000.keys.npy       uint64 split key of each document (see split.py), so the
                               shards split into train/validation exactly as their text
    shard-00001.tokens ...

manifest.json: format name and version; the tokenizer (sha256, vocab size, BOS/EOS
ids, model file name); token dtype; document and token totals (tokens include BOS and
EOS); the sources, text field, split and val_fraction used; how many empty documents
were dropped and malformed records skipped; and per shard its counts and, per file,
name, size in bytes and sha256. A name is a plain file name in the shard directory:
a path, `..` or a symlink that leads out of the directory is refused.

`TokenShards` opens a directory cheaply (manifest + file sizes, no hashing; `verify()`
hashes), memory-maps the files lazily in each process, and returns document i as an
int32 array.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.file_names import contained_file
from jaxlm.data.sources.documents import ConcatDocuments
from jaxlm.data.sources.paths import matching_paths
from jaxlm.data.sources.record_checks import RecordChecks
from jaxlm.errors import InputError

FORMAT = "jaxlm-token-shards"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_FILES = ("tokens", "offsets", "split_keys")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest little-endian unsigned dtype that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def shard_file_names(index: int) -> dict[str, str]:
    stem = f"shard-{index:05d}"
    return {
        "tokens": f"{stem}.tokens",
        "offsets": f"{stem}.offsets.npy",
        "split_keys": f"{stem}.keys.npy",
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class TokenShardsError(InputError):
    """A shard directory that is not what its manifest says; the message names the file."""


class TokenShards:
    """Document i of a shard directory, as an int32 array [BOS, ..., EOS]."""

    def __init__(
        self,
        path: Path | str,
        *,
        tokenizer_sha256: str | None = None,
        checks: RecordChecks | None = None,
    ):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.checks = checks if checks is not None else RecordChecks()
        expected = self.manifest["tokenizer"]["sha256"]
        if tokenizer_sha256 is not None and tokenizer_sha256 != expected:
            raise TokenShardsError(
                f"{self.path / MANIFEST}: shards were tokenized with tokenizer sha256 "
                f"{expected}, but the tokenizer in use has sha256 {tokenizer_sha256}"
            )
        self.dtype = np.dtype(self.manifest["token_dtype"]).newbyteorder("<")
        self._check_sizes()
        self._doc_ends = np.cumsum([s["documents"] for s in self.manifest["shards"]]).tolist()
        self._maps: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return self._doc_ends[-1] if self._doc_ends else 0

    def __getitem__(self, index: int) -> np.ndarray:
        shard = bisect.bisect_right(self._doc_ends, index)
        local = index - (self._doc_ends[shard - 1] if shard else 0)
        tokens, offsets = self._mapped()[shard]
        document = tokens[offsets[local] : offsets[local + 1]].astype(np.int32)
        self.checks.good()
        return document

    def _mapped(self) -> list[tuple[np.ndarray, np.ndarray]]:
        # Mapped on first use in each process: a pickled copy carries no open file. Two
        # threads racing here both build equal maps; the assignment is atomic.
        if self._maps is None:
            self._maps = [
                (
                    np.memmap(self._file(shard, "tokens"), dtype=self.dtype, mode="r"),
                    np.load(self._file(shard, "offsets"), mmap_mode="r", allow_pickle=False),
                )
                for shard in self.manifest["shards"]
            ]
        return self._maps

    def split_keys(self) -> np.ndarray:
        keys = [
            np.load(self._file(shard, "split_keys"), allow_pickle=False)
            for shard in self.manifest["shards"]
        ]
        return np.concatenate(keys).astype(np.uint64) if keys else np.zeros(0, np.uint64)

    def verify(self) -> None:
        """Hashes every file and compares with the manifest (reads all the data)."""
        for shard in self.manifest["shards"]:
            for role in SHARD_FILES:
                path = self._file(shard, role)
                actual, expected = file_sha256(path), shard["files"][role]["sha256"]
                if actual != expected:
                    raise TokenShardsError(
                        f"{path}: sha256 {actual} differs from {expected} in {MANIFEST}; "
                        "the file is corrupt or was changed after tokenizing"
                    )

    def _file(self, shard: dict, role: str) -> Path:
        return self.path / shard["files"][role]["name"]

    def _check_sizes(self) -> None:
        """Cheap consistency checks: file sizes and the offsets' shape and ends."""
        for shard in self.manifest["shards"]:
            for role in SHARD_FILES:
                path, size = self._file(shard, role), shard["files"][role]["bytes"]
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: shard file listed in {MANIFEST} is missing")
                if path.stat().st_size != size:
                    raise TokenShardsError(
                        f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {size} "
                        "(truncated or changed after tokenizing)"
                    )
            tokens_path = self._file(shard, "tokens")
            if shard["files"]["tokens"]["bytes"] != shard["tokens"] * self.dtype.itemsize:
                raise TokenShardsError(f"{tokens_path}: size does not match its token count")
            offsets = np.load(self._file(shard, "offsets"), mmap_mode="r", allow_pickle=False)
            if (
                offsets.dtype != np.int64
                or offsets.shape != (shard["documents"] + 1,)
                or offsets[0] != 0
                or offsets[-1] != shard["tokens"]
            ):
                raise TokenShardsError(
                    f"{self._file(shard, 'offsets')}: expected int64 offsets 0..{shard['tokens']} "
                    f"for {shard['documents']} documents"
                )

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a shard directory, checked for the fields the reader relies on."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {MANIFEST}; is {directory} a directory written by `jaxlm data tokenize`?"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenShardsError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TokenShardsError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise TokenShardsError(
            f"{path}: format version {manifest.get('version')!r}, this jaxlm reads {VERSION}"
        )
    if manifest.get("token_dtype") not in ("uint16", "uint32"):
        raise TokenShardsError(f"{path}: token_dtype must be uint16 or uint32")
    try:
        str(manifest["tokenizer"]["sha256"])
        for shard in manifest["shards"]:
            for key in ("documents", "tokens"):
                int(shard[key])
            for role in SHARD_FILES:
                entry = shard["files"][role]
                str(entry["name"]), int(entry["bytes"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError) as error:
        raise TokenShardsError(f"{path}: missing or malformed field ({error!r})") from None
    for index, shard in enumerate(manifest["shards"]):
        for role in SHARD_FILES:
            # The reader opens these names: they must stay inside the shard directory.
            where = f"{path}: shards[{index}].files.{role}.name"
            contained_file(directory, shard["files"][role]["name"], where=where)
    return manifest


def open_token_shards(
    pattern: str, *, tokenizer_sha256: str | None, checks: RecordChecks
) -> ConcatDocuments:
    """Every shard directory the pattern matches; all must share one tokenizer."""
    matches = matching_paths(pattern)
    # A directory, or its manifest.json named directly.
    directories = sorted(
        {p for p in matches if p.is_dir()}
        | {p.parent for p in matches if p.name == MANIFEST and p.is_file()}
    )
    if not directories:
        raise FileNotFoundError(f"{pattern!r} matches no directory of token shards")
    shards = [TokenShards(d, tokenizer_sha256=tokenizer_sha256, checks=checks) for d in directories]
    tokenizers = {s.manifest["tokenizer"]["sha256"]: s.path for s in shards}
    if len(tokenizers) > 1:
        raise TokenShardsError(
            f"{pattern!r}: shard directories were tokenized with different tokenizers: "
            + ", ".join(f"{path} ({sha[:12]})" for sha, path in tokenizers.items())
        )
    return ConcatDocuments(shards)
