"""Content checksums that tell a good checkpoint from a damaged one.

Orbax does not verify what it reads back. Measured on the pinned stack: truncating an
array chunk file fails the restore, but flipping one byte inside it restores without
error and gives different values. So every save records, beside the state, one 32-bit
fingerprint per array of its *logical* contents, and every restore recomputes them
on what it read and compares.

Fingerprint of an array with element bits b_i (its bytes reinterpreted as unsigned
integers, widened to uint32) at C-order flat index i, all arithmetic modulo 2**32:

    mix(b) = m ^ (m >> 15)  with  m = b * 0x85EBCA6B
    fingerprint = sum_i mix(b_i) * (2 * 0x9E3779B1 * i + 1)

mix is a bijection and every weight is odd, so changing any single element always
changes the fingerprint (and swapping elements almost always does). Integer addition
is associative and commutative, so the value does not depend on the mesh, the
sharding or the reduction order: a checkpoint saved on 8 devices verifies when
restored onto 4. It is computed where the arrays live (one jitted reduction, no host
copy of the state); `host_fingerprint` computes the same number from a numpy array,
for params restored into host memory.

JSON items (data-iterator state, config) are covered by a SHA-256 of their canonical
JSON text.

A missing checksum is damage unless the save provably predates checksums. Orbax
writes `_CHECKPOINT_METADATA` into every checkpoint it commits (the same atomic
rename as the arrays); jaxlm reads it as the record of what was saved:
`step_metadata` returns it, or None when it is missing or unreadable. A training step
lists its items there (`item_handlers`: jaxlm has saved a `checksum` item since it
recorded checksums, and never before), and a params directory carries jaxlm's marker
in its `custom_metadata`. Only a record that is readable and positively lacks the
checksum lets a checkpoint load unverified (with a warning): if the checksum and the
record are both gone, nothing shows the save is old, so it is treated as damaged.
The record is the checkpoint's own, so the rule holds for the only step of a workdir
too, and a workdir begun by an old jaxlm and resumed by a new one (old steps without
checksums beside new ones with) is judged step by step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_MIX = 0x85EBCA6B
_WEIGHT = (2 * 0x9E3779B1) % 2**32
_HOST_CHUNK = 1 << 24  # elements per numpy pass: bounds the temporaries' memory
_SHOWN = 5  # mismatched arrays named in a message; the rest are counted
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"  # Orbax's per-checkpoint record


def leaf_names(tree: Any) -> list[str]:
    """Dotted names of the leaves, as Orbax names them ('params.layers.wq.value')."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in flat]


def display_name(name: str) -> str:
    """'params.layers.wq.value' -> 'params/layers/wq', for messages."""
    parts = name.split(".")
    if parts[-1] == "value":  # nnx.Variable's own leaf: noise in a message
        parts = parts[:-1]
    return "/".join(parts)


def _unsigned_dtype(dtype: np.dtype) -> Any:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.uint8
    widths = {1: np.uint8, 2: np.uint16, 4: np.uint32}
    if dtype.itemsize not in widths:
        raise TypeError(f"no checkpoint fingerprint for {dtype} arrays")
    return widths[dtype.itemsize]


def _device_fingerprint(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        bits = jax.lax.bitcast_convert_type(x, _unsigned_dtype(x.dtype)).astype(jnp.uint32)
    # The flat index from per-axis iotas (not a reshape), so a sharded array is never
    # gathered: each device reduces its own shard and only scalars are combined.
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= bits.shape[axis]
    mixed = bits * jnp.uint32(_MIX)
    mixed = mixed ^ (mixed >> 15)
    weight = index * jnp.uint32(_WEIGHT) + jnp.uint32(1)
    return jnp.sum(mixed * weight, dtype=jnp.uint32)


@jax.jit
def _device_fingerprints(leaves: list[jax.Array]) -> jax.Array:
    return jnp.stack([_device_fingerprint(x) for x in leaves])


def device_fingerprints(tree: Any) -> dict[str, int]:
    """{leaf name: fingerprint} of a pytree of jax.Arrays, computed on their devices."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return {}
    out = _device_fingerprints(leaves)
    # Replicated: every process holds the whole (tiny) result.
    values = np.asarray(out.addressable_shards[0].data)
    return dict(zip(leaf_names(tree), (int(v) for v in values), strict=True))


def host_fingerprint(array: np.ndarray) -> int:
    """The same fingerprint as on device, for an array in host memory."""
    array = np.ascontiguousarray(array)
    bits = array.reshape(-1).view(_unsigned_dtype(array.dtype))
    total = np.uint32(0)
    for start in range(0, bits.size, _HOST_CHUNK):
        chunk = bits[start : start + _HOST_CHUNK].astype(np.uint32)
        index = np.arange(start, start + chunk.size, dtype=np.uint64).astype(np.uint32)
        mixed = chunk * np.uint32(_MIX)  # uint32 arrays wrap modulo 2**32
        mixed ^= mixed >> np.uint32(15)
        weight = index * np.uint32(_WEIGHT) + np.uint32(1)
        total = np.uint32((int(total) + int(np.sum(mixed * weight, dtype=np.uint32))) % 2**32)
    return int(total)


def host_fingerprints(tree: Any) -> dict[str, int]:
    """{leaf name: fingerprint} of a pytree of numpy arrays."""
    leaves = jax.tree.leaves(tree)
    return dict(
        zip(leaf_names(tree), (host_fingerprint(np.asarray(x)) for x in leaves), strict=True)
    )


def fingerprints(tree: Any) -> dict[str, int]:
    """{leaf name: fingerprint}: on the host for numpy trees, else where the arrays live."""
    if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree)):
        return host_fingerprints(tree)
    return device_fingerprints(tree)


def json_digest(value: Any) -> str:
    """SHA-256 of the canonical JSON text of `value`."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def mismatched(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Display names of the leaves of `actual` whose fingerprint differs from `expected`.

    Leaves `expected` does not mention count as mismatched: nothing vouches for them.
    """
    return [display_name(n) for n, v in actual.items() if expected.get(n) != v]


def describe_mismatch(bad: list[str]) -> str:
    """'checksum mismatch in a, b ... and N more (...)' for the names `mismatched` gave."""
    shown = ", ".join(bad[:_SHOWN])
    if len(bad) > _SHOWN:
        shown += f" and {len(bad) - _SHOWN} more"
    return f"checksum mismatch in {shown} (the files were changed after saving)"


def step_metadata(checkpoint_dir: Path) -> dict[str, Any] | None:
    """Orbax's `_CHECKPOINT_METADATA` of a checkpoint; None when missing or unreadable."""
    try:
        record = json.loads((checkpoint_dir / STEP_METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None
