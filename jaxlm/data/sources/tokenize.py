"""Text sources to a shard directory: the engine of `jaxlm data tokenize`.

Documents are cut into chunks of consecutive indices; each chunk is read and encoded
by a worker process (`workers` of them; 0 encodes in this process) and the chunks are
written strictly in order (`Pool.imap`), so the output is byte-identical whatever the
number of workers. Workers open the sources themselves from a pickled copy, so reading
and JSON/parquet decoding run in parallel too. Blank documents are dropped and
counted; in skip mode malformed records are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxlm.data.long_text import ENCODE_CHARS, encode_ids
from jaxlm.data.packing import document_prefix
from jaxlm.data.sources.documents import DocumentSource, is_blank_text
from jaxlm.data.sources.open_source import open_documents
from jaxlm.data.sources.record_checks import OnError
from jaxlm.data.sources.token_shard_writer import TokenShardWriter, refuse_existing_output
from jaxlm.data.sources.token_shards import token_dtype
from jaxlm.errors import InputError
from jaxlm.source_spec import SourceSpec

# Documents per task sent to a worker: enough to amortise the round trip, few enough
# that the writer and the workers overlap.
CHUNK_DOCUMENTS = 64


@dataclasses.dataclass
class TokenizeSummary:
    documents: int = 0
    tokens: int = 0
    text_bytes: int = 0
    empty_documents: int = 0
    skipped_records: int = 0
    seconds: float = 0.0
    manifest: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Chunk:
    """What a worker sends back for documents [start, stop) of one source."""

    tokens: np.ndarray  # every kept document's [BOS, ..., EOS], concatenated
    lengths: np.ndarray  # tokens per kept document
    kept: np.ndarray  # source indices of the kept documents
    empty: int
    skipped: int
    text_bytes: int


class _ChunkEncoder:
    """Reads and encodes one chunk of documents; lives in each worker process."""

    def __init__(self, sources: list[DocumentSource], tokenizer, dtype: np.dtype):
        self.sources, self.tokenizer, self.dtype = sources, tokenizer, dtype

    def __call__(self, task: tuple[int, int, int]) -> _Chunk:
        source_index, start, stop = task
        source = self.sources[source_index]
        texts, kept, empty, skipped = [], [], 0, 0
        for index in range(start, stop):
            text = source[index]
            if text is None:
                skipped += 1
            elif is_blank_text(text):
                empty += 1
            else:
                texts.append(text)
                kept.append(index)
        ids = self._encode(texts)
        prefix = document_prefix(self.tokenizer)  # [BOS], or [] (a tokenizer without one)
        lengths = np.asarray([len(prefix) + len(doc) + 1 for doc in ids], np.int64)
        tokens = np.empty(int(lengths.sum()), self.dtype)
        position = 0
        for doc in ids:
            start = position + len(prefix)
            tokens[position:start] = prefix
            tokens[start : start + len(doc)] = doc
            tokens[start + len(doc)] = self.tokenizer.eos_id
            position = start + len(doc) + 1
        text_bytes = sum(len(text.encode("utf-8")) for text in texts)
        return _Chunk(tokens, lengths, np.asarray(kept, np.int64), empty, skipped, text_bytes)

    def _encode(self, texts: list[str]) -> list:
        """Ids of each text: short ones in one batch, long ones a piece at a time."""
        short = [text for text in texts if len(text) <= ENCODE_CHARS]
        encoded = iter(self.tokenizer.encode_batch(short) if short else [])
        return [
            next(encoded) if len(text) <= ENCODE_CHARS else encode_ids(text, self.tokenizer)
            for text in texts
        ]


_worker_encoder: _ChunkEncoder | None = None


def _start_worker(sources, tokenizer, dtype) -> None:
    global _worker_encoder
    _worker_encoder = _ChunkEncoder(sources, tokenizer, dtype)


def _encode_in_worker(task: tuple[int, int, int]) -> _Chunk:
    return _worker_encoder(task)


def tokenize_sources(
    specs: Sequence[SourceSpec],
    tokenizer,
    out: Path | str,
    *,
    text_field: str = "text",
    split: str = "all",
    val_fraction: float = 0.02,
    shard_tokens: int = 100_000_000,
    workers: int = 0,
    on_error: OnError = "raise",
    force: bool = False,
) -> TokenizeSummary:
    """Tokenizes every document of `specs` (in order) into a new shard directory `out`."""
    out = Path(out)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    refuse_existing_output(out, force)  # before the work, not only after it
    for spec in specs:
        if spec.kind == "tokens":
            raise InputError(f"{spec}: already tokenized; tokenize text sources only")
    sources = [
        open_documents(spec, text_field=text_field, on_error=on_error, split=split,
                       val_fraction=val_fraction)
        for spec in specs
    ]  # fmt: skip
    dtype = token_dtype(tokenizer.vocab_size)
    tasks = [
        (source_index, start, min(start + CHUNK_DOCUMENTS, len(source)))
        for source_index, source in enumerate(sources)
        for start in range(0, len(source), CHUNK_DOCUMENTS)
    ]
    summary, started = TokenizeSummary(), time.perf_counter()
    with TokenShardWriter(
        out, vocab_size=tokenizer.vocab_size, shard_tokens=shard_tokens, force=force
    ) as writer:
        split_keys = [source.split_keys() for source in sources]
        for task, chunk in zip(tasks, _encoded_chunks(sources, tokenizer, dtype, tasks, workers),
                               strict=True):  # fmt: skip
            keys = split_keys[task[0]][chunk.kept]
            ends = np.cumsum(chunk.lengths)
            for key, end, length in zip(keys.tolist(), ends, chunk.lengths, strict=True):
                writer.add(chunk.tokens[end - length : end], key)
            summary.documents += len(chunk.kept)
            summary.empty_documents += chunk.empty
            summary.skipped_records += chunk.skipped
            summary.text_bytes += chunk.text_bytes
        if not summary.documents:  # raised inside the writer: nothing is left behind
            raise InputError(f"{', '.join(map(str, specs))}: no non-empty document to tokenize")
        summary.manifest = writer.commit(
            {
                "tokenizer": {
                    "sha256": tokenizer.sha256,
                    "vocab_size": tokenizer.vocab_size,
                    "bos_id": tokenizer.bos_id,
                    "eos_id": tokenizer.eos_id,
                    "model": Path(tokenizer.path).name,
                },
                "sources": [str(spec) for spec in specs],
                "text_field": text_field,
                "split": split,
                "val_fraction": val_fraction,
                "empty_documents": summary.empty_documents,
                "skipped_records": summary.skipped_records,
                "text_bytes": summary.text_bytes,
            }
        )
    summary.tokens = summary.manifest["tokens"]
    summary.seconds = time.perf_counter() - started
    return summary


def _encoded_chunks(sources, tokenizer, dtype, tasks, workers: int):
    """The encoded chunks in task order, from `workers` processes (0: this one)."""
    if workers == 0:
        encoder = _ChunkEncoder(sources, tokenizer, dtype)
        yield from map(encoder, tasks)
        return
    # forkserver: workers fork from a fresh process, never from this one, which may run
    # threads (JAX, Grain readers) that fork would copy mid-lock.
    context = multiprocessing.get_context("forkserver")
    with context.Pool(
        workers, initializer=_start_worker, initargs=(sources, tokenizer, dtype)
    ) as pool:
        yield from pool.imap(_encode_in_worker, tasks)
