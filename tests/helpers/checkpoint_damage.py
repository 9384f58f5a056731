"""Damage a saved checkpoint the way a bad disk or a stray write would, for tests.

Orbax stores array chunks zstd-compressed inside OCDBT data files, and where a chunk's
bytes land in those files depends on the order of the asynchronous writes. Flipping
"the middle byte of the largest file" therefore sometimes breaks the compressed
stream (zstd reports corruption: a read error) and sometimes decodes to changed values
without any error (only jaxlm's checksums notice). Each detection path is tested
on purpose instead:

- `swap_state_with`: the step's array files are replaced by another step's intact
  ones. Everything reads back without error, but the values are not what this step
  saved: the silent kind of damage, which only the checksums catch.
- `truncate_largest_chunk`: a file cut short; reading past its end fails.
"""

import shutil
from pathlib import Path


def swap_state_with(step_dir: Path, other_step_dir: Path) -> None:
    """Replace `step_dir`'s state item with `other_step_dir`'s (same shapes, other values)."""
    shutil.rmtree(step_dir / "state")
    shutil.copytree(other_step_dir / "state", step_dir / "state")


def truncate_largest_chunk(step_dir: Path, item: str = "state") -> Path:
    """Cut the largest array-data file of `item` in half: reads past its end fail."""
    files = [p for p in (step_dir / item).rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    return largest
