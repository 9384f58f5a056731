"""Source patterns to files: sorted recursive globs, and the names the split hashes.

A document's split key must not change when the data moves, so files are named by
their path relative to the pattern's root: the part of the pattern before its first
wildcard (`data/**/*.jsonl` -> `data`; a plain path -> its parent directory).
"""

from __future__ import annotations

import glob
from pathlib import Path

_WILDCARDS = frozenset("*?[")


def matching_paths(pattern: str) -> list[Path]:
    """Everything `pattern` matches (`**` recurses), sorted; FileNotFoundError if nothing."""
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise FileNotFoundError(f"no file or directory matches {pattern!r}")
    return [Path(match) for match in matches]


def matching_files(pattern: str) -> list[Path]:
    """The regular files `pattern` matches, sorted; FileNotFoundError if there are none."""
    files = [path for path in matching_paths(pattern) if path.is_file()]
    if not files:
        raise FileNotFoundError(
            f"{pattern!r} matches only directories, no files (e.g. '{pattern}/**/*' for "
            "every file under it)"
        )
    return files


def pattern_root(pattern: str) -> Path:
    """The directory that the pattern's matches are named relative to."""
    parts = Path(pattern).parts
    for index, part in enumerate(parts):
        if _WILDCARDS.intersection(part):
            return Path(*parts[:index]) if index else Path(".")
    return Path(pattern).parent


def relative_names(paths: list[Path], pattern: str) -> list[str]:
    """Each path relative to `pattern_root(pattern)`, as a posix string."""
    root = pattern_root(pattern).absolute()
    return [path.absolute().relative_to(root).as_posix() for path in paths]
