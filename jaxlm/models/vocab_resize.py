"""Grow a model's vocabulary from V to V' tokens, for continued pretraining.

After `jaxlm tokenizer extend`, ids 0..V-1 mean what they meant and V..V'-1 are
new. The embedding table [V, D] gains V' - V rows and, when untied, the output head
[D, V] gains as many columns; everything else is untouched.

Old rows and columns are copied bit for bit, so on text of old ids the network
computes exactly what it did, and its logits over the old ids are unchanged. New
rows start at the mean of the old rows ("mean" method; Hewitt 2021): the embedding
of a new token is then a point the network has seen the average of, not an outlier,
and a new output column scores every position with the average of the old logits,
so the new tokens start with a modest probability instead of a random one that could
dominate the softmax. Optional Gaussian noise (`noise_std`) breaks the symmetry
between new rows when many are added at once.

The optimizer state is not grown: continued pretraining starts a fresh optimizer.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxlm.sharding import named_sharding

# Parameter name -> the axis that is the vocabulary (see models/transformer.py).
VOCAB_AXES = {"embed": 0, "unembed": 1}


def grow_vocab(
    params: nnx.State,
    new_vocab_size: int,
    *,
    rng: jax.Array | None = None,
    method: Literal["mean"] = "mean",
    noise_std: float = 0.0,
    fresh_from: int | None = None,
) -> nnx.State:
    """`params` with the embedding (and untied output head) grown to `new_vocab_size`.

    Works on the params of a TrainState (an nnx.State of Params). Each grown Param
    keeps its metadata (logical axes), so shardings derived from them fit the new
    shape. A numpy value stays numpy (host memory, e.g. restored for conversion);
    a jax.Array with a NamedSharding is placed on the same mesh, sharded by its
    logical axes for the new shape.

    `fresh_from` (default: the old size): rows from there on are new tokens. Below the
    old size they are rows that held no token (a Hugging Face model's padding rows):
    replaced like appended rows, and left out of the mean.
    """
    if method != "mean":
        raise ValueError(f"method must be 'mean', got {method!r}")
    if noise_std < 0 or (noise_std > 0 and rng is None):
        raise ValueError("noise_std must be >= 0, and needs an rng when positive")
    if "embed" not in params:
        raise ValueError(f"params have no 'embed' table (have {sorted(params)})")
    old_vocab_size = params["embed"].shape[0]
    if new_vocab_size < old_vocab_size:
        raise ValueError(f"cannot shrink the vocabulary from {old_vocab_size} to {new_vocab_size}")
    fresh_from = old_vocab_size if fresh_from is None else fresh_from
    if not 0 < fresh_from <= old_vocab_size:
        raise ValueError(f"fresh_from must be in (0, {old_vocab_size}], got {fresh_from}")
    grown = jax.tree.map(lambda x: x, params)  # new Variables; the caller's stay as they are
    keys = jax.random.split(rng, len(VOCAB_AXES)) if rng is not None else [None] * len(VOCAB_AXES)
    for (name, axis), key in zip(VOCAB_AXES.items(), keys, strict=True):
        if name not in params:
            continue  # tied embeddings: no separate output head
        var = params[name]
        if var.shape[axis] != old_vocab_size:
            raise ValueError(
                f"'{name}' has {var.shape[axis]} vocabulary entries on axis {axis}, but "
                f"'embed' has {old_vocab_size}"
            )
        value = _grown(var.get_value(), axis, new_vocab_size, key, noise_std, fresh_from)
        grown[name] = var.replace(_placed(value, var.get_value(), var.get_metadata()))
    return grown


def _grown(value, axis: int, new_size: int, key, noise_std: float, fresh_from: int):
    """`value` kept up to `fresh_from` rows (axis 0) or columns (axis 1), then new ones
    up to `new_size`."""
    xp = np if isinstance(value, np.ndarray) else jnp
    value = value[:fresh_from] if axis == 0 else value[:, :fresh_from]
    extra = new_size - value.shape[axis]
    # The mean in float32 whatever the storage dtype: a bfloat16 sum of thousands of
    # rows would lose most of its digits.
    mean = xp.mean(value.astype(np.float32), axis=axis, keepdims=True)
    shape = list(value.shape)
    shape[axis] = extra
    new = xp.broadcast_to(mean, shape)
    if noise_std > 0:
        noise = noise_std * jax.random.normal(key, tuple(shape), jnp.float32)
        new = new + (np.asarray(noise) if xp is np else noise)
    return xp.concatenate([value, new.astype(value.dtype)], axis=axis)


def _placed(new_value, old_value, metadata: dict):
    sharding = getattr(old_value, "sharding", None)
    axes = metadata.get("logical_axes")
    if isinstance(old_value, jax.Array) and isinstance(sharding, NamedSharding) and axes:
        return jax.device_put(new_value, named_sharding(sharding.mesh, axes, new_value.shape))
    return new_value
