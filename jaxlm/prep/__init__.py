"""Corpus preparation before any tokenizer sees the data (`jaxlm data clean`).

    sources.py     paths/globs -> documents (text files, jsonl records) with their origin
    normalize.py   Unicode form, line endings, control characters
    pii.py         optional e-mail / phone-number scrubbing
    repetition.py  Gopher-style repetition statistics of one document
    filters.py     the quality filters (length, repetition) with thresholds and names
    hashing.py     64-bit hashes that are the same in every process (unlike hash())
    minhash.py     MinHash signatures of word shingles (vectorised numpy)
    dedup.py       exact and near-duplicate removal, keeping the first occurrence
    report.py      what each stage removed: counts, characters, examples
    clean.py       the streaming pipeline that ties them together

May import: the root modules and data (the JSON-lines reader and its bad-line
accounting, and atomic file writes). The modules use numpy and the standard library;
importing them loads neither Grain nor JAX.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
