"""Text normalisation: one Unicode form, `\\n` line endings, no stray control characters.

Applied to every document before filtering and deduplication, so two documents that
differ only in how "é" is encoded, or in CRLF vs LF, count as the same text.

    NFC   (default) composes characters; changes no visible text
    NFKC  also folds compatibility forms (full-width Ａ -> A, ﬁ -> fi, ² -> 2); lossy
    none  keeps the code points as they are

Line endings (CRLF, CR, NEL, U+2028, U+2029) all become `\\n`. C0/C1 control
characters other than `\\n` and `\\t` are removed (form feeds included), as is a
leading byte-order mark. Lone surrogates (possible in JSON: "\\ud800") cannot be
written as UTF-8, so they become U+FFFD; every such change is counted.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Literal

from jaxlm.errors import InputError

Form = Literal["NFC", "NFKC", "none"]
FORMS: tuple[str, ...] = ("NFC", "NFKC", "none")

_LINE_BREAKS = re.compile("\r\n|[\r\x85\u2028\u2029]")
# After line breaks are unified: every C0/C1 control except \t (0x09) and \n (0x0a).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass
class NormalizeStats:
    """What normalisation changed, summed over documents."""

    documents_changed: int = 0
    line_breaks_converted: int = 0
    control_chars_removed: int = 0
    surrogates_replaced: int = 0


def check_form(form: str) -> Form:
    """The canonical spelling of a normalisation form name (case-insensitive)."""
    for known in FORMS:
        if form.lower() == known.lower():
            return known
    raise InputError(f"--normalize: unknown form {form!r}; choose one of {list(FORMS)}")


def normalize_text(text: str, form: Form = "NFC", stats: NormalizeStats | None = None) -> str:
    """`text` in Unicode form `form` with `\\n` line endings and no control characters."""
    original = text
    # Surrogates first: unicodedata.normalize would pass them through untouched, and
    # a later UTF-8 encode would fail on them.
    text, surrogates = _SURROGATES.subn("\ufffd", text)
    if form != "none":
        text = unicodedata.normalize(form, text)
    text, line_breaks = _LINE_BREAKS.subn("\n", text)
    text, controls = _CONTROLS.subn("", text)
    if text.startswith("\ufeff"):
        text = text[1:]
        controls += 1
    if stats is not None:
        stats.surrogates_replaced += surrogates
        stats.line_breaks_converted += line_breaks
        stats.control_chars_removed += controls
        stats.documents_changed += text != original
    return text
