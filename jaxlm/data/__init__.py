"""Data: the stdlib corpus, the SentencePiece tokenizer, packing and Grain pipelines.

    corpus.py     where text comes from (the running interpreter's stdlib by default)
    tokenizer.py  train / load a lossless SentencePiece model with pinned special ids
    packing.py    documents -> packed [B, T] batches; the batch schema is defined there
    pipeline.py   files -> shuffled, sharded, tokenized, packed, checkpointable batches

Every stage is numpy-only: nothing here touches a JAX device.
"""
