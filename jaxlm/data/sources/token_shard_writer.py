"""Writes a shard directory (layout in token_shards.py) atomically.

Everything goes into a hidden temporary directory beside the output; the manifest is
written last and the directory is renamed into place only when complete, so a
crashed or interrupted run never leaves something that looks like finished shards.
An existing output is refused unless `force`, and then replaced only at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.sources.token_shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    file_sha256,
    shard_file_names,
    token_dtype,
)
from jaxlm.errors import InputError


def refuse_existing_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise InputError(f"{out}: output already exists; pass --force to replace it")


class TokenShardWriter:
    """`add(document, split_key)` documents in order, then `commit()` (or `abort()`)."""

    def __init__(
        self,
        out: Path | str,
        *,
        vocab_size: int,
        shard_tokens: int,
        force: bool = False,
    ):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.out = Path(out)
        refuse_existing_output(self.out, force)
        self.force = force
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        self.shard_tokens = shard_tokens
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.tmp.exists():  # left by a killed run of this same pid; never ours to keep
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def add(self, document: np.ndarray, split_key: int) -> None:
        """One document's tokens ([BOS, ..., EOS]); ids must be < vocab_size."""
        if self._file is None:
            self._start_shard()
        ids = np.asarray(document)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..")
        data = ids.astype(self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._offsets.append(self._offsets[-1] + ids.size)
        self._keys.append(split_key)
        if self._offsets[-1] >= self.shard_tokens:
            self._finish_shard()

    def commit(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Writes the manifest (`metadata` + layout) and moves the directory into place."""
        if self._file is not None:
            self._finish_shard()
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            **metadata,
            "token_dtype": self.dtype.name,
            "documents": sum(s["documents"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            "shards": self.shards,
        }
        text = json.dumps(manifest, indent=2) + "\n"
        (self.tmp / MANIFEST).write_text(text, encoding="utf-8")
        self._move_into_place()
        return manifest

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():  # failed, or never committed
            self.abort()

    def _start_shard(self) -> None:
        self._names = shard_file_names(len(self.shards))
        self._file = open(self.tmp / self._names["tokens"], "wb")  # noqa: SIM115 (spans calls)
        self._hash = hashlib.sha256()
        self._offsets = [0]
        self._keys: list[int] = []

    def _finish_shard(self) -> None:
        self._file.close()
        self._file = None
        np.save(self.tmp / self._names["offsets"], np.asarray(self._offsets, np.int64))
        np.save(self.tmp / self._names["split_keys"], np.asarray(self._keys, np.uint64))
        files = {}
        for role, name in self._names.items():
            path = self.tmp / name
            digest = self._hash.hexdigest() if role == "tokens" else file_sha256(path)
            files[role] = {"name": name, "bytes": path.stat().st_size, "sha256": digest}
        self.shards.append(
            {"documents": len(self._keys), "tokens": self._offsets[-1], "files": files}
        )

    def _move_into_place(self) -> None:
        refuse_existing_output(self.out, self.force)  # it may have appeared meanwhile
        old = self.out.parent / f".{self.out.name}.replaced-{os.getpid()}"
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
