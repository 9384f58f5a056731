"""Subcommands of `jaxlm` grouped by noun: `jaxlm GROUP NAME ...`.

A module here named `GROUP_NAME.py` (e.g. `data_clean.py` -> `jaxlm data clean`) is
found automatically. It defines

    HELP: str                       one line for `--help`
    add_arguments(parser) -> None   its flags
    run(args) -> int                the exit status

and keeps heavy imports (jax, grain) inside `run`, so `jaxlm --help` stays fast.
Bad input is reported by raising jaxlm.errors.InputError (or FileNotFoundError) with
a message naming the file, line, key or path; the CLI prints it and exits 2.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

GROUP_HELP = {
    "data": "prepare corpora: clean, tokenize into shards, inspect packed batches",
    "tokenizer": "train, evaluate and extend SentencePiece tokenizers",
    "checkpoint": "operate on saved checkpoints",
}


def discover() -> dict[str, dict[str, ModuleType]]:
    """{group: {name: module}} for every `GROUP_NAME.py` in this package."""
    groups: dict[str, dict[str, ModuleType]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        group, sep, name = info.name.partition("_")
        if not sep or group not in GROUP_HELP:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        groups.setdefault(group, {})[name.replace("_", "-")] = module
    return groups
