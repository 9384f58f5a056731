"""The cleaning report: what came in, what went out, and what each stage removed.

Every removed document is attributed to exactly one stage (the first that rejects
it), so `documents_in == documents_out + sum(stage removals)` and the same holds for
characters. Characters are counted after normalisation and PII scrubbing, i.e. as
the filters saw them. Each stage keeps its first few removals as examples:
`source: reason` (for duplicates, the reason names the kept document).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class StageReport:
    name: str
    rule: str
    documents: int = 0
    characters: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)

    def record(self, source: str, characters: int, reason: str, max_examples: int) -> None:
        self.documents += 1
        self.characters += characters
        if len(self.examples) < max_examples:
            self.examples.append(f"{source}: {reason}")


@dataclasses.dataclass
class CleanReport:
    inputs: list[str]
    output: str
    settings: dict[str, Any]
    documents_in: int = 0
    characters_in: int = 0
    documents_out: int = 0
    characters_out: int = 0
    bad_lines_skipped: int = 0
    bad_line_examples: list[str] = dataclasses.field(default_factory=list)
    normalization: dict[str, int] = dataclasses.field(default_factory=dict)
    pii: dict[str, int] | None = None
    stages: list[StageReport] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        report = dataclasses.asdict(self)
        report["documents_per_second"] = round(self.documents_in / max(self.seconds, 1e-9), 1)
        return report

    def summary(self) -> str:
        """The report as a few human-readable lines."""
        read = (
            f"read {self.documents_in:,} documents ({self.characters_in:,} chars) from "
            f"{len(self.inputs)} file(s)"
        )
        if self.bad_lines_skipped:
            read += f"; skipped {self.bad_lines_skipped:,} bad line(s)/file(s)"
        lines = [read]
        changed = self.normalization.get("documents_changed", 0)
        if changed:
            details = ", ".join(
                f"{k.replace('_', ' ')} {v:,}"
                for k, v in self.normalization.items()
                if k != "documents_changed" and v
            )
            lines.append(f"normalised {changed:,} document(s): {details or 'Unicode form'}")
        if self.pii is not None:
            lines.append(
                f"scrubbed PII: {self.pii['emails']:,} e-mail(s), {self.pii['phones']:,} "
                f"phone number(s) in {self.pii['documents_changed']:,} document(s)"
            )
        lines.append(f"{'stage':16s} {'removed':>9s} {'chars':>13s}  rule / first examples")
        for stage in self.stages:
            lines.append(
                f"{stage.name:16s} {stage.documents:>9,d} {stage.characters:>13,d}  {stage.rule}"
            )
            lines.extend(f"{'':42s}{example}" for example in stage.examples[:3])
        rate = self.documents_in / max(self.seconds, 1e-9)
        lines.append(
            f"kept {self.documents_out:,} documents ({self.characters_out:,} chars) -> "
            f"{self.output}  [{self.seconds:.1f}s, {rate:,.0f} docs/s]"
        )
        return "\n".join(lines)
