"""Data: text in, packed token batches out, with no JAX device anywhere.

    corpus.py          the embedded corpus (the running interpreter's standard library)
    sources/           every `kind:pattern` source as random-access documents
    jsonl.py           random-access JSON lines whose errors name file:line
    jsonl_records.py   JSON-lines files as shuffled, sharded record streams (SFT, preference)
    tokenizer*.py      train, load, evaluate and extend lossless SentencePiece tokenizers
    hf_tokenizer*.py   a Hugging Face tokenizer.json with its config files; its extension
    tokenizer_files.py either kind from a path (load_tokenizer)
    jinja_chat.py      a model's own Jinja chat template, sandboxed, with exact loss masks
    workdir_tokenizer.py  the tokenizer a workdir or params directory owns
    packing.py         documents -> packed [B, T] batches; the batch schema is defined there
    pipeline.py        sources -> shuffled, sharded, tokenized, packed, checkpointable batches
    chat.py, sft.py    conversations -> batches that train only the assistant's tokens
    preference.py      chosen/rejected pairs -> [B, 2, T] batches
    run_inputs.py, posttrain_inputs.py   a Config's streams, eval batches and fingerprint
    stdlib_tasks.py, posttrain/          post-training sets made from the standard library
    prompt_inputs.py   RL prompts (text or chat) -> checkpointable prompt batches
    arithmetic_task.py an embedded verifiable task (sums, differences) with a held-out split
    atomic.py, file_names.py             files written whole; names kept inside a directory

May import: the root modules (errors, source_spec, config, presets, sharding) only.
Every stage is numpy (and Grain); the step, the model and checkpoints are above it.

The import rule is enforced by tests/test_layering.py (ALLOWED there).
"""
