"""metrics.jsonl read back: the one parser of a run's metrics log.

jaxlm.training.metrics.MetricsWriter writes one JSON object per line,
`{"step": n, "split": "train"|"eval"|"summary"|..., <name>: <value>, ...}`, appending
across resumes. Everything that reads the file goes through `numbered_metrics`: the
comparison tables and plots (jaxlm.analysis.compare), the training loop when a resumed
run continues its wall clock (`elapsed_before`), tests and notebooks (`read_metrics`).

Two ways to meet a damaged line. By default a line that is not JSON is an error naming
the file and line. With a `notes` list the reader tolerates what a live or killed run
leaves behind: a line that is not a JSON object with `step` and `split` is skipped and
a note says so, distinguishing a last line still being written (no newline after it)
from an unreadable line in the middle (a kill mid-write, then a resume appending).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def numbered_metrics(
    path: Path, *, notes: list[str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every record of a metrics.jsonl file, in file order.

    Without `notes`, a line that is not valid JSON raises ValueError naming the file and
    line, and records are returned as parsed. With `notes`, bad lines are skipped with a
    note appended, every record returned is a dict with `step` and `split`, and its
    `step` is an int.
    """
    tolerant = notes is not None
    text = Path(path).read_text(encoding="utf-8", errors="replace" if tolerant else "strict")
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not tolerant:
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record or "split" not in record:
                raise ValueError("not a record")
            record["step"] = int(record["step"])
        except (ValueError, TypeError):
            if lineno == len(lines):  # no newline after it: still being written
                notes.append(
                    f"{path}:{lineno}: last line incomplete (still being written), ignored"
                )
            else:
                notes.append(f"{path}:{lineno}: unreadable line skipped")
            continue
        records.append((lineno, record))
    return records


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file; a line that is not JSON is an error naming
    the file and line."""
    return [record for _, record in numbered_metrics(path)]


def elapsed_before(path: Path, step: int) -> float:
    """The largest `elapsed_s` logged at or before `step` (0 if none, or no file yet): where
    a resumed run's wall clock continues. A line cut short by a kill is ignored."""
    if step == 0 or not Path(path).is_file():
        return 0.0
    records = numbered_metrics(path, notes=[])
    return max([0.0, *(float(r.get("elapsed_s", 0.0)) for _, r in records if r["step"] <= step)])
