"""The embedded default corpus: the Python standard library of the running interpreter.

Every machine that runs jaxlm has it, nothing is downloaded, and it is tens of MB of
real source code. The train/validation split is decided per file by a hash of its
path relative to the stdlib root, so it is the same on every machine and does not
move when files are added, removed or listed in another order.
"""

import functools
import hashlib
import sysconfig
from pathlib import Path
from typing import Literal

Split = Literal["train", "validation"]

# Third-party packages installed into the interpreter are not the stdlib.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_root() -> Path:
    """The running interpreter's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_text(path: Path) -> str:
    """Reads a UTF-8 text file; errors name the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise OSError(f"cannot read text file {path}: {error}") from error
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not valid UTF-8: {error}") from error


def is_validation(relative_path: str, val_fraction: float) -> bool:
    """Whether a file belongs to the validation split, from its relative posix path alone."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    # The first 8 bytes of sha256 are uniform on [0, 2**64): compare as a fraction.
    return int.from_bytes(digest[:8], "big") < val_fraction * 2**64


def stdlib_files(
    split: Split,
    *,
    val_fraction: float = 0.02,
    root: Path | None = None,
) -> list[Path]:
    """All usable `*.py` files of one split, sorted by path relative to the stdlib root.

    Usable means non-empty valid UTF-8 outside site-packages (a few stdlib test files
    are deliberately in other encodings).
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    root = Path(root).absolute() if root is not None else stdlib_root()
    usable = _usable_python_files(root)
    if not usable:
        raise FileNotFoundError(f"no usable UTF-8 *.py files found under {root}")
    want_validation = split == "validation"
    chosen = [
        path
        for path in usable
        if is_validation(path.relative_to(root).as_posix(), val_fraction) == want_validation
    ]
    if not chosen:
        raise FileNotFoundError(
            f"the {split!r} split of {root} is empty ({len(usable)} files, "
            f"val_fraction={val_fraction})"
        )
    return chosen


@functools.cache
def _usable_python_files(root: Path) -> tuple[Path, ...]:
    # Cached: reading ~30 MB to check UTF-8 takes about a second, and callers ask
    # for both splits. A tuple, so no caller can mutate the cached value.
    candidates = [
        path
        for path in root.rglob("*.py")
        if path.is_file() and not _EXCLUDED_DIRS.intersection(path.relative_to(root).parts)
    ]
    candidates.sort(key=lambda path: path.relative_to(root).as_posix())
    return tuple(path for path in candidates if _is_nonempty_utf8(path))


def _is_nonempty_utf8(path: Path) -> bool:
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(data)
