"""Does a checkpoint fit the model? Checked from its metadata, before reading any array.

Orbax, given a restore target of another shape, fails deep inside TensorStore with a
message about chunk indices (or, non-strict, pads and truncates silently). Comparing
the saved array metadata with the abstract target first gives jaxlm's own error, which
names every parameter that differs and both shapes:

    runs/a/checkpoints/6 does not fit this model: params/layers/wq: checkpoint
    (4, 64, 4, 16) vs model (4, 64, 8, 16); ...

A mismatch is the run's configuration, not damage: the trainer does not fall back to
an older step for it (every step would mismatch the same way). Missing metadata is
damage, not a mismatch: Orbax reports a deleted `_METADATA` as a tree with no arrays,
so callers check `saved_shapes` is non-empty before calling `check_fits`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxlm.checkpointing.integrity import display_name, leaf_names
from jaxlm.errors import InputError

_SHOWN = 8  # differences listed in the message; the rest are counted


class CheckpointMismatchError(InputError):
    """A checkpoint's arrays have other names or shapes than the model it is restored into."""


def _is_array_metadata(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "name") and hasattr(x, "dtype")


def saved_shapes(metadata_tree: Any) -> dict[str, tuple[int, ...]]:
    """{leaf name: shape} from Orbax's metadata tree of a saved PyTree."""
    leaves = jax.tree.leaves(metadata_tree, is_leaf=_is_array_metadata)
    return {leaf.name: tuple(leaf.shape) for leaf in leaves if _is_array_metadata(leaf)}


def saved_dtypes(metadata_tree: Any) -> dict[str, np.dtype]:
    """{leaf name: dtype} from Orbax's metadata tree of a saved PyTree."""
    leaves = jax.tree.leaves(metadata_tree, is_leaf=_is_array_metadata)
    return {leaf.name: np.dtype(leaf.dtype) for leaf in leaves if _is_array_metadata(leaf)}


def check_fits(metadata_tree: Any, target: Any, where: str, *, partial: bool = False) -> None:
    """Raise CheckpointMismatchError unless every leaf of `target` is saved with its shape.

    With `partial`, the checkpoint may hold more than the target (e.g. the optimizer
    state when only params are read); otherwise extra saved arrays are a mismatch too.
    """
    saved = saved_shapes(metadata_tree)
    wanted = {
        name: tuple(leaf.shape)
        for name, leaf in zip(leaf_names(target), jax.tree.leaves(target), strict=True)
    }
    problems = []
    for name, shape in wanted.items():
        if name not in saved:
            problems.append(f"{display_name(name)}: not in the checkpoint (model {shape})")
        elif saved[name] != shape:
            problems.append(f"{display_name(name)}: checkpoint {saved[name]} vs model {shape}")
    if not partial:
        for name in sorted(set(saved) - set(wanted)):
            problems.append(f"{display_name(name)}: in the checkpoint but not in the model")
    if problems:
        more = len(problems) - _SHOWN
        shown = "; ".join(problems[:_SHOWN]) + (f"; and {more} more" if more > 0 else "")
        raise CheckpointMismatchError(f"{where} does not fit this model: {shown}")
