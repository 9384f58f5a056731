"""Repetition statistics of one document, after the Gopher quality rules (Rae et al. 2021).

Boilerplate, spam and broken scrapes repeat themselves. Each statistic is a fraction
in [0, 1]; the thresholds that turn them into filters live in jaxlm.prep.filters.

    duplicate lines        non-blank lines equal to an earlier line (by count, by characters)
    top n-gram             characters in all occurrences of the most frequent word n-gram,
                           counted only if it occurs at least twice
    duplicate n-grams      characters of words covered by an n-gram that repeats an
                           earlier one (the first occurrence is not counted)

Words are whitespace-separated, as in Gopher; text without spaces (Chinese,
Japanese) has few "words", so the n-gram rules rarely fire on it rather than firing
wrongly. Characters are those of the words, without the whitespace between them.
N-grams are compared by a 64-bit polynomial hash of mixed, exact per-document word
ids, so counting them is numpy sorting rather than Python tuples; a collision
between two distinct n-grams is astronomically unlikely at document sizes.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxlm.prep.hashing import splitmix64

# An odd 64-bit multiplier for the polynomial that combines word ids into n-gram keys.
_POLY = np.uint64(0x9E3779B97F4A7C15)


class TextView:
    """A document split into lines and words once, shared by every repetition rule."""

    def __init__(self, text: str):
        self.text = text

    @functools.cached_property
    def lines(self) -> list[str]:
        """Non-blank lines without trailing whitespace (so 'x ' repeats 'x')."""
        return [line.rstrip() for line in self.text.split("\n") if line.strip()]

    @functools.cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @functools.cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), np.int64, len(self.words))

    @functools.cached_property
    def word_keys(self) -> np.ndarray:
        """Mixed exact word ids: equal words, equal keys; no two distinct words share one."""
        vocabulary: dict[str, int] = {}
        ids = [vocabulary.setdefault(word, len(vocabulary)) for word in self.words]
        # +1 so that id 0 does not map to key 0 (splitmix64(0) == 0).
        return splitmix64(np.asarray(ids, np.uint64) + np.uint64(1))

    @functools.cached_property
    def line_repetition(self) -> tuple[float, float]:
        """`duplicate_line_fractions(self)`, computed once for the two line rules."""
        return duplicate_line_fractions(self)

    def ngram_keys(self, n: int) -> np.ndarray:
        """One uint64 key per word n-gram (position i covers words i .. i+n-1)."""
        keys = self.word_keys
        count = len(keys) - n + 1
        if count <= 0:
            return np.empty(0, np.uint64)
        combined = keys[:count].copy()
        for offset in range(1, n):
            combined = combined * _POLY + keys[offset : offset + count]
        return combined

    def ngram_chars(self, n: int) -> np.ndarray:
        """Characters (word characters only) of each word n-gram."""
        cumulative = np.concatenate([[0], np.cumsum(self.word_lengths)])
        return cumulative[n:] - cumulative[:-n]


def duplicate_line_fractions(view: TextView) -> tuple[float, float]:
    """(fraction of non-blank lines, fraction of their characters) repeating an earlier line."""
    lines = view.lines
    if not lines:
        return 0.0, 0.0
    seen: set[str] = set()
    duplicate_lines = duplicate_chars = total_chars = 0
    for line in lines:
        total_chars += len(line)
        if line in seen:
            duplicate_lines += 1
            duplicate_chars += len(line)
        else:
            seen.add(line)
    return duplicate_lines / len(lines), duplicate_chars / max(total_chars, 1)


def top_ngram_fraction(view: TextView, n: int) -> float:
    """Fraction of word characters in all occurrences of the most frequent word n-gram."""
    keys = view.ngram_keys(n)
    if len(keys) < 2:
        return 0.0
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = counts.max()
    if top < 2:  # nothing repeats
        return 0.0
    # Among the n-grams with the top count, the longest one (ties between equally
    # frequent n-grams should not depend on sort order).
    chars = view.ngram_chars(n)[first[counts == top]].max()
    total = int(view.word_lengths.sum())
    return min(1.0, float(top * chars) / max(total, 1))


def duplicate_ngram_fraction(view: TextView, n: int) -> float:
    """Fraction of word characters covered by word n-grams that repeat an earlier n-gram."""
    keys = view.ngram_keys(n)
    if len(keys) < 2:
        return 0.0
    _, first = np.unique(keys, return_index=True)
    repeats = np.ones(len(keys), bool)
    repeats[first] = False
    starts = np.flatnonzero(repeats)
    if not len(starts):
        return 0.0
    # Words covered by at least one repeated n-gram: +1 where one starts, -1 past its
    # end, and a running sum (starts are distinct, so plain fancy indexing is exact).
    delta = np.zeros(len(view.words) + 1, np.int64)
    delta[starts] += 1
    delta[starts + n] -= 1
    covered = np.cumsum(delta[:-1]) > 0
    total = int(view.word_lengths.sum())
    return float(view.word_lengths[covered].sum()) / max(total, 1)
