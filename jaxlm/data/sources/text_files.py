"""`text:` and `stdlib` sources: one document per file, read (strict UTF-8) when asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlm.data.corpus import stdlib_files, stdlib_root
from jaxlm.data.sources.paths import matching_files, relative_names
from jaxlm.data.sources.record_checks import RecordChecks
from jaxlm.data.sources.split import file_keys


class TextFiles:
    """Document i is the text of `paths[i]`; `names` are the paths the split hashes."""

    def __init__(self, paths: list[Path], names: list[str], checks: RecordChecks):
        self.paths = [str(path) for path in paths]
        self.names = list(names)
        self.checks = checks

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        path = self.paths[index]
        with open(path, "rb") as f:  # a vanished file raises FileNotFoundError naming it
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            self.checks.bad(path, f"not valid UTF-8 (byte {error.start}: {error.reason})")
            return None
        self.checks.good(empty=not text)
        return text

    def split_keys(self) -> np.ndarray:
        return file_keys(self.names)


def open_text_files(pattern: str, checks: RecordChecks) -> TextFiles:
    files = matching_files(pattern)
    return TextFiles(files, relative_names(files, pattern), checks)


def open_stdlib(split: str, val_fraction: float, checks: RecordChecks) -> TextFiles:
    """The stdlib corpus; its split is `jaxlm.data.corpus.stdlib_files`'s ("all" = both)."""
    splits = ("train", "validation") if split == "all" else (split,)
    root = stdlib_root()
    files = [path for name in splits for path in stdlib_files(name, val_fraction=val_fraction)]
    names = [path.relative_to(root).as_posix() for path in files]
    order = sorted(range(len(files)), key=names.__getitem__)  # "all": one sorted list
    return TextFiles([files[i] for i in order], [names[i] for i in order], checks)
