"""File names read from a file (a manifest, an index) that must stay in its directory.

A manifest that lists its companion files by name must not be able to point a reader
anywhere else: not with an absolute path, not with `..`, not through a symlink that
leads out of the directory. `contained_file` is the one check every such reader uses.
"""

from __future__ import annotations

from pathlib import Path

from jaxlm.errors import InputError


def is_plain_file_name(name: object) -> bool:
    """Whether `name` is a bare file name: a string with no directory part, not . or .."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and Path(name).name == name
    )


def contained_file(directory: Path, name: object, *, where: str, what: str = "file name") -> Path:
    """`directory / name`, refused unless it is a plain name that stays in `directory`.

    The error names `where` (e.g. "manifest.json: shards[0]...") and the bad name.
    Symlinks are resolved, so a link inside the directory that leads out of it is
    refused too; a name that does not exist yet passes (the caller reports it missing).
    """
    directory = Path(directory)
    if not is_plain_file_name(name):
        raise InputError(
            f"{where} = {name!r} is not a {what}: it must name a file in {directory}, not a path"
        )
    path = directory / name
    if not path.resolve().is_relative_to(directory.resolve()):
        raise InputError(
            f"{where} = {name!r} is not a {what}: {path} is a link that leads out of {directory}"
        )
    return path
