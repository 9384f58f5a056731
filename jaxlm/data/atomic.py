"""Write a file so that readers see either nothing or the complete file.

The content goes to a hidden temporary file in the same directory (same file
system, so the final rename is atomic), is flushed to disk, and only then renamed
over the target. If anything fails on the way, the temporary file is removed and
the target is untouched: a crash mid-run never leaves half a corpus that looks whole.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from jaxlm.errors import InputError


def refuse_overwrite(*paths: Path) -> None:
    """InputError naming the first of `paths` that exists (the caller passes --force)."""
    for path in paths:
        if path.exists():
            raise InputError(f"{path}: already exists; pass --force to overwrite it")


@contextlib.contextmanager
def atomic_text_writer(path: Path | str) -> Iterator[TextIO]:
    """A UTF-8 text file that replaces `path` when the block exits without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
