"""Writing records as jsonl, and the per-file numbers that go into manifest.json."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from jaxlm.data.atomic import atomic_text_writer
from jaxlm.data.posttrain.corruptions import KINDS
from jaxlm.data.posttrain.prompts import Record


def write_jsonl(path: Path, records: Iterable[Record]) -> dict[str, Any]:
    """Writes one record a line, atomically; returns its record count, bytes and sha256."""
    digest, count, size = hashlib.sha256(), 0, 0
    with atomic_text_writer(path) as f:
        for record in records:
            # Keys keep the order the records were built in; non-ASCII stays readable.
            line = json.dumps(record, ensure_ascii=False) + "\n"
            data = line.encode("utf-8")
            digest.update(data)
            size += len(data)
            count += 1
            f.write(line)
    return {"records": count, "bytes": size, "sha256": digest.hexdigest()}


def record_stats(kind: Literal["sft", "dpo"], records: Sequence[Record]) -> dict[str, Any]:
    """Mean characters of prompts and answers; for pairs also rejected ones and the kinds."""
    if kind == "sft":
        return {
            "mean_prompt_chars": _mean(r["conversations"][0]["content"] for r in records),
            "mean_answer_chars": _mean(r["conversations"][-1]["content"] for r in records),
        }
    corruptions = dict.fromkeys(KINDS, 0)
    for record in records:
        corruptions[record["corruption"]] += 1
    return {
        "mean_prompt_chars": _mean(r["chosen"][0]["content"] for r in records),
        "mean_chosen_chars": _mean(r["chosen"][-1]["content"] for r in records),
        "mean_rejected_chars": _mean(r["rejected"][-1]["content"] for r in records),
        "corruptions": corruptions,
    }


def _mean(texts: Iterable[str]) -> float:
    lengths = [len(t) for t in texts]
    return round(sum(lengths) / len(lengths), 1) if lengths else 0.0
