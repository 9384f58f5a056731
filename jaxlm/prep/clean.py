"""The cleaning pipeline: one streaming pass from input files to a clean jsonl corpus.

    read (text files, jsonl records) -> normalise -> [scrub PII]
    -> quality filters (min_bytes ... dup_ngram) -> exact_dup -> near_dup -> write

Each document is processed and written (or dropped) before the next is read; what
stays in memory is one digest per kept document and, for near-duplicate removal, one
signature (4 * num_perm bytes) and LSH bucket entries per kept document.

Deduplication runs after the quality filters so that a duplicate is always a
duplicate of a document in the output (a low-quality first copy cannot take its
duplicates down with it), and the first occurrence in input order is the one kept.

The output is `{"text": ..., "source": "file:line" or "file"}` per line, written
atomically; the report goes to `<output>.report.json`, also atomically. A clean that
keeps no document, or skips more bad lines than the cap allows
(jaxlm.data.jsonl.bad_line_allowance, judged over the whole input at the end), fails
and writes neither.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from jaxlm.data.atomic import atomic_text_writer, refuse_overwrite
from jaxlm.data.jsonl import BadLineCounter
from jaxlm.errors import InputError
from jaxlm.prep.dedup import ExactDuplicates, NearDuplicateIndex, lsh_midpoint
from jaxlm.prep.filters import QUALITY_FILTER_NAMES, FilterSettings, quality_filters
from jaxlm.prep.minhash import MinHasher
from jaxlm.prep.normalize import Form, NormalizeStats, normalize_text
from jaxlm.prep.pii import PiiStats, scrub_pii
from jaxlm.prep.repetition import TextView
from jaxlm.prep.report import CleanReport, StageReport
from jaxlm.prep.sources import Format, read_documents

STAGE_NAMES = (*QUALITY_FILTER_NAMES, "exact_dup", "near_dup")


@dataclasses.dataclass(frozen=True)
class CleanSettings:
    text_field: str = "text"
    input_format: Format = "auto"
    skip_bad_lines: bool = False
    max_bad_fraction: float = 0.01
    normalization: Form = "NFC"
    scrub_pii: bool = False
    filters: FilterSettings = dataclasses.field(default_factory=FilterSettings)
    disabled: tuple[str, ...] = ()  # names from STAGE_NAMES
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 16
    jaccard_threshold: float = 0.8
    seed: int = 0
    max_examples: int = 5


def report_path(output: Path) -> Path:
    return output.with_name(output.name + ".report.json")


def clean_corpus(
    files: Sequence[Path], output: Path | str, settings: CleanSettings, *, force: bool = False
) -> CleanReport:
    """Cleans `files` into `output` (jsonl) and writes the report next to it."""
    output = Path(output)
    unknown = set(settings.disabled) - set(STAGE_NAMES)
    if unknown:
        raise InputError(f"--disable: unknown stage(s) {sorted(unknown)}; stages: {STAGE_NAMES}")
    if not force:
        refuse_overwrite(output, report_path(output))
    started = time.perf_counter()
    stages = _Stages(settings)
    bad_lines = BadLineCounter(settings.max_bad_fraction) if settings.skip_bad_lines else None
    normalize_stats = NormalizeStats()
    pii_stats = PiiStats() if settings.scrub_pii else None
    report = CleanReport(
        inputs=[str(f) for f in files], output=str(output), settings=_settings_dict(settings)
    )
    documents = read_documents(
        files, text_field=settings.text_field, fmt=settings.input_format, bad_lines=bad_lines
    )
    with atomic_text_writer(output) as out:
        for document in documents:
            text = normalize_text(document.text, settings.normalization, normalize_stats)
            if pii_stats is not None:
                text = scrub_pii(text, pii_stats)
            report.documents_in += 1
            report.characters_in += len(text)
            if stages.admit(text, document.source):
                out.write(json.dumps({"text": text, "source": document.source}, ensure_ascii=False))
                out.write("\n")
                report.documents_out += 1
                report.characters_out += len(text)
        # Inside the writer: a failed clean publishes no output.
        if bad_lines is not None:
            bad_lines.finish()
        if not report.documents_out:
            raise InputError(_kept_nothing(files, report, bad_lines))

    report.stages = stages.reports
    report.normalization = dataclasses.asdict(normalize_stats)
    report.pii = dataclasses.asdict(pii_stats) if pii_stats is not None else None
    if bad_lines is not None:
        report.bad_lines_skipped = bad_lines.bad
        report.bad_line_examples = list(bad_lines.examples)
    report.seconds = time.perf_counter() - started
    with atomic_text_writer(report_path(output)) as f:
        json.dump(report.as_dict(), f, ensure_ascii=False, indent=2)
        f.write("\n")
    return report


class _Stages:
    """The enabled filters and deduplicators in order, and what each removed."""

    def __init__(self, settings: CleanSettings):
        disabled = set(settings.disabled)
        self.max_examples = settings.max_examples
        self.filters = quality_filters(settings.filters, disabled & set(QUALITY_FILTER_NAMES))
        self.reports = [StageReport(f.name, f.rule) for f in self.filters]
        self.exact = self.near = self.hasher = None
        if "exact_dup" not in disabled:
            self.exact = ExactDuplicates()
            self.reports.append(StageReport("exact_dup", "identical to an earlier kept document"))
        if "near_dup" not in disabled:
            self.hasher = MinHasher(
                num_perm=settings.num_perm, shingle_size=settings.shingle_size, seed=settings.seed
            )
            self.near = NearDuplicateIndex(
                num_perm=settings.num_perm,
                bands=settings.bands,
                threshold=settings.jaccard_threshold,
            )
            rule = (
                f"estimated Jaccard >= {self.near.threshold:g} with an earlier kept document "
                f"({settings.shingle_size}-token shingles, {self.near.bands}x{self.near.rows} "
                f"LSH bands, 50% candidate rate at "
                f"J~{lsh_midpoint(self.near.bands, self.near.rows):.2f})"
            )
            self.reports.append(StageReport("near_dup", rule))
        self._by_name = {report.name: report for report in self.reports}

    def admit(self, text: str, source: str) -> bool:
        """Whether `text` is kept; if it is, later duplicates of it will not be."""
        view = TextView(text)
        rejection = next(((f.name, why) for f in self.filters if (why := f.check(view))), None)
        if rejection is None and self.exact is not None:
            first = self.exact.check(text)
            rejection = ("exact_dup", f"identical to {first}") if first else None
        signature = None
        if rejection is None and self.near is not None:
            signature = self.hasher.signature(text)  # None: no tokens, nothing to compare
            match = self.near.check(signature) if signature is not None else None
            rejection = ("near_dup", f"J~{match[1]:.2f} with {match[0]}") if match else None
        if rejection is not None:
            stage, why = rejection
            self._by_name[stage].record(source, len(text), why, self.max_examples)
            return False
        if self.exact is not None:
            self.exact.add(text, source)
        if signature is not None:
            self.near.add(signature, source)
        return True


def _kept_nothing(files: Sequence[Path], report: CleanReport, bad_lines) -> str:
    """The error for a clean whose output would be empty, with what became of the input."""
    skipped = f", {bad_lines.bad} bad line(s)/file(s) skipped" if bad_lines else ""
    return (
        f"{', '.join(map(str, files))}: kept no document ({report.documents_in} read"
        f"{skipped}); nothing to write to {report.output}"
    )


def _settings_dict(settings: CleanSettings) -> dict:
    """The settings as JSON values, for the report."""
    values = dataclasses.asdict(settings)
    values["disabled"] = sorted(settings.disabled)
    return values
