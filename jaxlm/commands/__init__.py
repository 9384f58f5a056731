"""Subcommands of `jaxlm` grouped by noun: `jaxlm GROUP NAME ...`.

A module here named `GROUP_NAME.py` (e.g. `data_clean.py` -> `jaxlm data clean`), or
`NAME.py` for a top-level command (`export.py` -> `jaxlm export`), is found
automatically. It defines

    HELP: str                       one line for `--help`
    add_arguments(parser) -> None   its flags
    run(args) -> int                the exit status

and keeps heavy imports (jax, grain) inside `run`, so `jaxlm --help` stays fast.
Bad input is reported by raising jaxlm.errors.InputError (or FileNotFoundError) with
a message naming the file, line, key or path; the CLI prints it and exits 2.

May import: every package of jaxlm (commands are the top layer, with jaxlm.cli, which
imports them); never jaxlm.cli itself. Imports of jaxlm modules may wait inside `run`
for the reason above. The import rule is enforced by tests/test_layering.py.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

GROUP_HELP = {
    "data": "prepare corpora: clean, tokenize into shards, inspect batches, post-training sets",
    "tokenizer": "train SentencePiece tokenizers; evaluate and extend either kind",
    "checkpoint": "operate on saved checkpoints",
    "reward": "use a reward model (data.format=reward): score responses and pairs",
}


def discover() -> tuple[dict[str, dict[str, ModuleType]], dict[str, ModuleType]]:
    """({group: {name: module}}, {top-level name: module}) for the modules here."""
    groups: dict[str, dict[str, ModuleType]] = {}
    top_level: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        group, sep, name = info.name.partition("_")
        module = importlib.import_module(f"{__name__}.{info.name}")
        if sep and group in GROUP_HELP:
            groups.setdefault(group, {})[name.replace("_", "-")] = module
        else:
            top_level[info.name.replace("_", "-")] = module
    return groups, top_level
