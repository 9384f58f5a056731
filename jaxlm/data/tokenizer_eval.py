"""How well a tokenizer compresses held-out text, and how fast it encodes it.

Compression: bytes per token and characters per token over all documents (more is
better: shorter sequences for the same text), and tokens per document. Coverage: the
share of tokens that are byte-fallback pieces (characters the vocabulary lacks,
spelled byte by byte) or <unk> (only in models without byte fallback; that text is
lost). Speed: documents encoded one call at a time on this thread, and all at once
through SentencePiece's batch encoder (which uses every core); each timing is the
best of `repeats` runs, so a busy machine understates speed less.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenizerReport:
    model: str
    sha256: str
    vocab_size: int
    documents: int
    chars: int
    bytes: int
    tokens: int
    bytes_per_token: float
    chars_per_token: float
    tokens_per_document: float
    byte_fallback_token_fraction: float
    unk_token_fraction: float
    encode_mb_per_s: float  # one document per call, this thread
    encode_tokens_per_s: float
    batch_mb_per_s: float  # encode_batch over all documents
    batch_tokens_per_s: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def evaluate_tokenizer(tokenizer, documents: Sequence[str], *, repeats: int = 3) -> TokenizerReport:
    """Compression, coverage and encode speed of `tokenizer` on `documents`."""
    if not documents:
        raise ValueError("no documents to evaluate on")
    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}")
    encoded, single_seconds = _best_time(
        lambda: [tokenizer.encode(doc) for doc in documents], repeats
    )
    batch_encoded, batch_seconds = _best_time(lambda: tokenizer.encode_batch(documents), repeats)
    if batch_encoded != encoded:  # the two paths must agree, or the speeds are not comparable
        raise AssertionError(f"{tokenizer.path}: encode_batch differs from encode")
    ids = np.fromiter((i for doc in encoded for i in doc), np.int64)
    chars = sum(len(doc) for doc in documents)
    num_bytes = sum(len(doc.encode("utf-8")) for doc in documents)
    tokens = max(len(ids), 1)  # an all-empty input reports ratios over one token, not NaN
    is_byte = np.array([tokenizer.is_byte(i) for i in range(tokenizer.vocab_size)])
    megabytes = num_bytes / 1e6
    return TokenizerReport(
        model=str(tokenizer.path),
        sha256=tokenizer.sha256,
        vocab_size=tokenizer.vocab_size,
        documents=len(documents),
        chars=chars,
        bytes=num_bytes,
        tokens=len(ids),
        bytes_per_token=num_bytes / tokens,
        chars_per_token=chars / tokens,
        tokens_per_document=len(ids) / len(documents),
        byte_fallback_token_fraction=float(is_byte[ids].sum()) / tokens,
        unk_token_fraction=(
            0.0 if tokenizer.unk_id is None else float((ids == tokenizer.unk_id).sum()) / tokens
        ),
        encode_mb_per_s=megabytes / single_seconds,
        encode_tokens_per_s=len(ids) / single_seconds,
        batch_mb_per_s=megabytes / batch_seconds,
        batch_tokens_per_s=len(ids) / batch_seconds,
    )


def _best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, max(best, 1e-9)


# (label, field, format) of each table row.
_ROWS = (
    ("vocab size", "vocab_size", "{:,d}"),
    ("tokens", "tokens", "{:,d}"),
    ("bytes / token", "bytes_per_token", "{:.3f}"),
    ("chars / token", "chars_per_token", "{:.3f}"),
    ("tokens / document", "tokens_per_document", "{:.1f}"),
    ("byte-fallback tokens %", "byte_fallback_token_fraction", "{:.2%}"),
    ("<unk> tokens %", "unk_token_fraction", "{:.2%}"),
    ("encode MB/s (1 thread)", "encode_mb_per_s", "{:.2f}"),
    ("encode tokens/s (1 thread)", "encode_tokens_per_s", "{:,.0f}"),
    ("encode_batch MB/s", "batch_mb_per_s", "{:.2f}"),
    ("encode_batch tokens/s", "batch_tokens_per_s", "{:,.0f}"),
)


def format_reports(reports: Sequence[TokenizerReport]) -> str:
    """A table with one column per tokenizer; with two, a third column of B / A."""
    names = [report.model.rsplit("/", 1)[-1] for report in reports]
    header = ["", *names] + (["B / A"] if len(reports) == 2 else [])
    rows = [header]
    for label, field, fmt in _ROWS:
        values = [getattr(report, field) for report in reports]
        row = [label, *(fmt.format(v) for v in values)]
        if len(reports) == 2:
            row.append(f"{values[1] / values[0]:.3f}" if values[0] else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )
