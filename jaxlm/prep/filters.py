"""Quality filters: named rules that drop a whole document, each with its threshold.

In the order they run (cheapest first):

    min_bytes       shorter than `min_bytes` bytes of UTF-8 (default 50)
    min_chars       fewer than `min_chars` characters (default 0: off)
    max_chars       more than `max_chars` characters (pathological dumps)
    dup_lines       more than this fraction of non-blank lines repeat an earlier line
    dup_line_chars  more than this fraction of line characters are in repeated lines
    top_ngram       the most frequent word n-gram holds more than frac[n] of the characters
    dup_ngram       repeated word n-grams cover more than frac[n] of the characters

Defaults are the Gopher rules (Rae et al. 2021, tuned on English web text), with
lengths in characters rather than words so that text without spaces is measured
fairly. The minimum length is in UTF-8 bytes, not characters: a character's byte
count follows its script's information density far better than a count of characters
does. A Latin letter is 1 byte, a Chinese, Japanese or Korean character 3 (each
carries about a short English word), an emoji 4; so 50 bytes is about ten English
words or seventeen Chinese characters, where a 50-character minimum asked a Chinese
document for about three times the content of an English one (on a mixed corpus it
dropped short Chinese documents that were as long as kept English ones).

Source code repeats lines by nature (`else:`, `return None`), so on a code
corpus check the report before trusting them; each can be disabled by name. A rule
returns a reason ("dup line fraction 0.42 > 0.30") that the report shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

from jaxlm.errors import InputError
from jaxlm.prep.repetition import (
    TextView,
    duplicate_ngram_fraction,
    top_ngram_fraction,
)

QUALITY_FILTER_NAMES = (
    "min_bytes",
    "min_chars",
    "max_chars",
    "dup_lines",
    "dup_line_chars",
    "top_ngram",
    "dup_ngram",
)
DEFAULT_TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
DEFAULT_DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    min_bytes: int = 50
    min_chars: int = 0
    max_chars: int = 1_000_000
    max_dup_line_frac: float = 0.30
    max_dup_line_char_frac: float = 0.20
    top_ngram: dict[int, float] = dataclasses.field(default_factory=lambda: DEFAULT_TOP_NGRAM)
    dup_ngram: dict[int, float] = dataclasses.field(default_factory=lambda: DEFAULT_DUP_NGRAM)


@dataclasses.dataclass(frozen=True)
class QualityFilter:
    name: str
    rule: str  # the threshold in words, for the report
    check: Callable[[TextView], str | None]  # a reason to drop the document, or None


def format_ngrams(thresholds: dict[int, float]) -> str:
    """{2: 0.2, 3: 0.18} -> '2:0.2,3:0.18' (the flag syntax)."""
    return ",".join(f"{n}:{frac:g}" for n, frac in sorted(thresholds.items()))


def parse_ngram_thresholds(text: str, flag: str) -> dict[int, float]:
    """'2:0.2,3:0.18' -> {2: 0.2, 3: 0.18}; errors name `flag` and the bad part."""
    thresholds: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        n_text, colon, frac_text = part.partition(":")
        try:
            n, frac = int(n_text), float(frac_text)
        except ValueError:
            n = frac = None
        if not colon or n is None or n < 1 or not 0.0 <= frac <= 1.0:
            raise InputError(
                f"{flag}: {part!r} is not N:FRACTION with N >= 1 and FRACTION in [0, 1] "
                f"(e.g. '2:0.2,3:0.18')"
            )
        thresholds[n] = frac
    if not thresholds:
        raise InputError(f"{flag}: no N:FRACTION pairs in {text!r}")
    return thresholds


def quality_filters(
    settings: FilterSettings, disabled: Collection[str] = ()
) -> list[QualityFilter]:
    """The enabled filters, in the order they run."""
    unknown = set(disabled) - set(QUALITY_FILTER_NAMES)
    if unknown:
        raise InputError(f"unknown quality filter(s) {sorted(unknown)}; {QUALITY_FILTER_NAMES}")
    s = settings

    def min_bytes(view: TextView) -> str | None:
        n = len(view.text.encode("utf-8", "surrogatepass"))
        return f"{n} bytes < {s.min_bytes}" if n < s.min_bytes else None

    def min_chars(view: TextView) -> str | None:
        n = len(view.text)
        return f"{n} chars < {s.min_chars}" if n < s.min_chars else None

    def max_chars(view: TextView) -> str | None:
        n = len(view.text)
        return f"{n} chars > {s.max_chars}" if n > s.max_chars else None

    def dup_lines(view: TextView) -> str | None:
        return _above("dup line fraction", view.line_repetition[0], s.max_dup_line_frac)

    def dup_line_chars(view: TextView) -> str | None:
        frac = view.line_repetition[1]
        return _above("dup line char fraction", frac, s.max_dup_line_char_frac)

    def top_ngram(view: TextView) -> str | None:
        for n, limit in sorted(s.top_ngram.items()):
            if why := _above(f"top {n}-gram char fraction", top_ngram_fraction(view, n), limit):
                return why
        return None

    def dup_ngram(view: TextView) -> str | None:
        for n, limit in sorted(s.dup_ngram.items()):
            frac = duplicate_ngram_fraction(view, n)
            if why := _above(f"duplicate {n}-gram char fraction", frac, limit):
                return why
        return None

    rules = {
        "min_bytes": (f"< {s.min_bytes} UTF-8 bytes", min_bytes),
        "min_chars": (f"< {s.min_chars} chars", min_chars),
        "max_chars": (f"> {s.max_chars} chars", max_chars),
        "dup_lines": (f"dup line fraction > {s.max_dup_line_frac:g}", dup_lines),
        "dup_line_chars": (f"dup line chars > {s.max_dup_line_char_frac:g}", dup_line_chars),
        "top_ngram": (f"top n-gram char fraction > {format_ngrams(s.top_ngram)}", top_ngram),
        "dup_ngram": (f"duplicate n-gram char fraction > {format_ngrams(s.dup_ngram)}", dup_ngram),
    }
    return [
        QualityFilter(name, *rules[name]) for name in QUALITY_FILTER_NAMES if name not in disabled
    ]


def _above(what: str, value: float, limit: float) -> str | None:
    return f"{what} {value:.2f} > {limit:g}" if value > limit else None
