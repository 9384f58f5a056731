"""Regex scrubbing of e-mail addresses and phone numbers (`--scrub-pii`).

Matches become `<EMAIL>` / `<PHONE>` and are counted. The patterns favour precision
over recall: a model trained on a corpus where every version number, date or long
constant in code became `<PHONE>` learns something wrong, so only two phone shapes
count as phones:

    international   `+` country code, then digit groups: 8 to 15 digits in all (E.164),
                    e.g. +44 20 7946 0958, +1-202-555-0147, +8613800138000
    North American  3-3-4 digits with separators, optional (area code) and leading 1,
                    e.g. (202) 555-0147, 202-555-0147, 202.555.0147, 1 202 555 0147

A match may not touch other digits, letters, or a `.digit`/`-` continuation, so
`1.2.3`, `2024-01-15`, `192.168.0.1`, `4111111111111111` and `x-202-555-01478` stay.
Plain 10-digit runs are not scrubbed: in code they are far more often constants.
"""

from __future__ import annotations

import dataclasses
import re

EMAIL_PLACEHOLDER = "<EMAIL>"
PHONE_PLACEHOLDER = "<PHONE>"

_EMAIL = re.compile(
    r"(?<![\w.%+-])"  # not the tail of a longer token
    r"[A-Za-z0-9][A-Za-z0-9._%+-]*"  # local part
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"  # domain labels
    r"[A-Za-z]{2,24}"  # top-level domain
    r"(?![\w-])"
)
# The boundaries shared by both phone shapes: no word character, '+', '.', '-' or
# '/' glued on before; no word character or '-', and no '.' or '/' followed by a
# digit, glued on after (a sentence may still end right after a number).
_BEFORE = r"(?<![\w+.\-/])"
_AFTER = r"(?![\w\-]|[./]\d)"
_SEP = r"[ .\-]"
# `\d{1,5}+` is possessive: a long digit run after '+' is cut into groups one way
# only, instead of backtracking through every way of splitting it.
_INTERNATIONAL = re.compile(_BEFORE + r"\+\d{1,3}(?:" + _SEP + r"?\(?\d{1,5}+\)?){1,6}" + _AFTER)
_NORTH_AMERICAN = re.compile(
    _BEFORE
    + r"(?:1"
    + _SEP
    + r")?(?:\(\d{3}\) ?|\d{3}"
    + _SEP
    + r")\d{3}"
    + _SEP
    + r"\d{4}"
    + _AFTER
)


@dataclasses.dataclass
class PiiStats:
    """Replacements made, summed over documents."""

    emails: int = 0
    phones: int = 0
    documents_changed: int = 0


def _international_phone(match: re.Match) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return PHONE_PLACEHOLDER if 8 <= digits <= 15 else match.group()


def scrub_pii(text: str, stats: PiiStats | None = None) -> str:
    """`text` with e-mail addresses and phone numbers replaced by placeholders."""
    text, emails = _EMAIL.subn(EMAIL_PLACEHOLDER, text)
    # Counted as placeholders added: subn would also count a "+12 34" match that
    # _international_phone hands back unchanged (too few digits).
    before = text.count(PHONE_PLACEHOLDER)
    text = _INTERNATIONAL.sub(_international_phone, text)
    text = _NORTH_AMERICAN.sub(PHONE_PLACEHOLDER, text)
    phones = text.count(PHONE_PLACEHOLDER) - before
    if stats is not None:
        stats.emails += emails
        stats.phones += phones
        stats.documents_changed += (emails + phones) > 0
    return text
