# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of the model: parameters, logical axes, and how they land on a mesh
#
# jaxlm's model is a Llama-style decoder declared with Flax NNX. This notebook builds
# it from a named preset, lists every parameter with its shape and its **logical
# axes** (names such as `"embed"` or `"heads"` that each dimension carries), and then
# shows how one table of rules turns those names into shardings on a
# `("data", "fsdp", "tensor")` device mesh.
#
# There is no accelerator needed: JAX is asked for 8 fake CPU devices, which behave
# like 8 real ones for sharding purposes. That has to happen before JAX initialises
# its backend, so it is the very first cell.

# %%
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)
print(jax.device_count(), "devices:", jax.devices())

# %%
import math
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from jaxlm.models import count_params
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.presets import PRESETS, get_preset
from jaxlm.sharding import LOGICAL_RULES, make_mesh
from jaxlm.training.losses import token_nll
from jaxlm.training.state import sharding_summary

# %% [markdown]
# ## 1. Presets and exact parameter counts
#
# `count_params` traces the model constructor with `eval_shape`: it reads every
# parameter's shape without allocating a single weight, so even the 7B preset is
# counted in a fraction of a second on a laptop. The non-embedding count is what the
# MFU formula (`6·N`) and most scaling-law papers use.

# %%
print(
    f"{'preset':14s} {'layers':>6s} {'d_model':>7s} {'vocab':>7s} {'params':>15s} {'non-emb':>15s}"
)
for name, preset in PRESETS.items():
    total, non_emb = count_params(preset), count_params(preset, include_embedding=False)
    print(
        f"{name:14s} {preset.n_layers:6d} {preset.d_model:7d} {preset.vocab_size:7d} "
        f"{total:15,d} {non_emb:15,d}"
    )

# %% [markdown]
# ## 2. The `tiny` preset, parameter by parameter
#
# `abstract_model` returns the NNX graph definition and an abstract `State` (shapes
# and metadata, no values). The transformer blocks are **stacked**: every block's
# `wq` is one `[L, D, N, H]` array with a leading `"layers"` axis, and the forward
# pass runs them with `jax.lax.scan`, so compile time does not grow with depth.
#
# The `tiny` preset is the test model: its sizes (d_model 48, 4 query heads and 2
# KV heads of dim 12, feed-forward 88, vocabulary 320) all differ, so a transposed
# axis cannot hide behind two equal numbers.

# %%
cfg = get_preset("tiny")
graphdef, abstract = abstract_model(cfg)
print(cfg)
print()
print(f"{'parameter':18s} {'shape':18s} {'logical axes':44s} {'count':>7s}")
rows = []
for path, var in nnx.to_flat_state(abstract):
    name = "/".join(map(str, path))
    axes = var.get_metadata()["logical_axes"]
    rows.append((name, var.shape, axes))
    print(f"{name:18s} {var.shape!s:18s} {axes!s:44s} {math.prod(var.shape):7,d}")
total = sum(math.prod(shape) for _, shape, _ in rows)
print(f"{'total':82s}{total:7,d}  (count_params says {count_params(cfg):,d})")

# %% [markdown]
# Materialising it is `init_params(cfg, key)`; `nnx.merge(graphdef, params)` gives
# back a callable module. Logits come out in float32 whatever the compute dtype. The
# output-projection weights (`wo`, `w_down`) start with a standard deviation smaller
# by `1/sqrt(2L)` than the others, so the residual stream's variance stays of order
# one at initialisation (GPT-2's rule): the table below shows it. With weights this
# small the first predictions are close to uniform, so the loss at initialisation is
# close to ln(V).

# %%
params = init_params(cfg, jax.random.key(0))
for path, var in nnx.to_flat_state(params):
    value = np.asarray(var[...])
    print(f"{'/'.join(map(str, path)):18s} std {value.std():.4f}  mean {value.mean():+.4f}")

model = nnx.merge(graphdef, params)
tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
logits = model(tokens)
print("\nlogits", logits.shape, logits.dtype)
nll, _ = token_nll(logits[:, :-1], tokens[:, 1:])
print(
    f"loss at init {float(nll.mean()):.3f}; a uniform guess: ln(V) = {math.log(cfg.vocab_size):.3f}"
)

# %% [markdown]
# ## 3. Logical axes → mesh axes
#
# Model code never names a mesh axis. `jaxlm/sharding.py` holds one table that maps
# each logical name to a mesh axis (or to `None`, replicated). Weight names and
# activation names are disjoint (`"embed"` vs `"act_embed"`): FSDP splits a weight's
# embed dimension over `"fsdp"` without forcing the activations to be split too.

# %%
for logical, mesh_axis in LOGICAL_RULES.items():
    print(f"{logical:14s} -> {mesh_axis}")

# %% [markdown]
# On a `2 × 2 × 2` mesh (data, fsdp, tensor) every parameter gets a `NamedSharding`
# from its logical axes. `sharding_summary` prints the resulting `PartitionSpec`s.
# Data parallelism, FSDP and tensor parallelism are only mesh shapes: the model code
# is the same for all three.

# %%
mesh = make_mesh((2, 2, 2))
print(mesh)
shardings = param_shardings(abstract, mesh)
for name, spec in sharding_summary(shardings).items():
    print(f"{name:18s} {spec}")

# %% [markdown]
# A mesh axis is only used when it divides the dimension. On a `(1, 2, 4)` mesh the
# 4 query heads split over `tensor=4`, but the 2 KV heads of `wk` and `wv` cannot, so
# those stay replicated on that axis instead of failing:

# %%
mesh_tp4 = make_mesh((1, 2, 4))
tp4 = sharding_summary(param_shardings(abstract, mesh_tp4))
for name in ("layers/wq", "layers/wk", "layers/wv", "layers/w_gate"):
    print(f"{name:14s} {tp4[name]}")

# %% [markdown]
# ## 4. Where each block of a weight lives
#
# The parameters are initialised **directly in their sharded layout**: `jax.jit` of
# the init function with `out_shardings` materialises each shard on its own device,
# so no device ever holds the whole model (this is what `create_train_state` does
# for the full training state).
#
# `jax.debug.visualize_array_sharding` draws a 2-D array's layout. The embedding
# table `[V, D]` is split over `tensor` on its vocab rows and over `fsdp` on its
# embed columns; the `data` axis replicates every block twice (devices `i` and
# `i + 4` hold the same block).

# %%
with jax.set_mesh(mesh):
    sharded = jax.jit(partial(init_params, cfg), out_shardings=shardings)(jax.random.key(0))

embed = sharded["embed"][...]
print(embed.sharding)
jax.debug.visualize_array_sharding(embed)

# %% [markdown]
# For arrays with more than two dimensions the same information is in each array's
# `addressable_shards`: every shard knows its device and which slice of the global
# array it holds. Below, four weights are drawn on the plane of two of their
# dimensions (the other dimensions are not split on this mesh). Each rectangle is
# one block, labelled with the devices holding a copy of it.


# %%
def draw_layout(ax, array, dims, labels, title):
    """Blocks of `array` on the plane of `dims`, each labelled with its devices."""
    blocks = {}
    for shard in array.addressable_shards:
        key = tuple(shard.index[d].indices(array.shape[d])[:2] for d in dims)
        blocks.setdefault(key, []).append(shard.device.id)
    colours = plt.cm.Pastel1(np.arange(len(blocks)) % 9)
    for colour, ((rows, cols), devices) in zip(colours, sorted(blocks.items()), strict=True):
        height, width = rows[1] - rows[0], cols[1] - cols[0]
        box = plt.Rectangle((cols[0], rows[0]), width, height, fc=colour, ec="black")
        ax.add_patch(box)
        label = "dev " + ",".join(map(str, sorted(devices)))
        ax.text(cols[0] + width / 2, rows[0] + height / 2, label, ha="center", va="center")
    ax.set_xlim(0, array.shape[dims[1]])
    ax.set_ylim(array.shape[dims[0]], 0)
    ax.set_ylabel(f"{labels[0]} ({array.shape[dims[0]]})")
    ax.set_xlabel(f"{labels[1]} ({array.shape[dims[1]]})")
    ax.set_title(f"{title}\n{array.sharding.spec}", fontsize=10)


fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
draw_layout(axes[0], sharded["embed"][...], (0, 1), ("vocab", "embed"), "embed [V, D]")
wq = sharded["layers"]["wq"][...]
draw_layout(axes[1], wq, (1, 2), ("embed", "heads"), "layers/wq [L, D, N, H]")
w_up = sharded["layers"]["w_up"][...]
draw_layout(axes[2], w_up, (1, 2), ("embed", "mlp"), "layers/w_up [L, D, F]")
wo = sharded["layers"]["wo"][...]
draw_layout(axes[3], wo, (1, 3), ("heads", "embed"), "layers/wo [L, N, H, D]")
fig.tight_layout()
plt.show()

# %% [markdown]
# Each device holds a quarter of every weight (`fsdp × tensor = 4` blocks) and the
# `data` axis keeps two copies. Per-device memory for the parameters is the total
# divided by how many blocks a weight is split into; the norms (logical axis
# `"norm"`) are tiny and replicated everywhere:

# %%
per_device = {}
for leaf in jax.tree.leaves(sharded):
    for shard in leaf.addressable_shards:
        per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.size
print("parameters per device:", per_device)
print(f"whole model: {count_params(cfg):,d}; a quarter: {count_params(cfg) / 4:,.0f}")

# %% [markdown]
# Changing the mesh changes nothing else: a sharded forward pass gives the same
# logits as the unsharded model above (up to float rounding, as the reduction order
# differs).

# %%
with jax.set_mesh(mesh):
    sharded_logits = nnx.merge(graphdef, sharded)(tokens)
print("max |difference|:", float(np.abs(np.asarray(sharded_logits) - np.asarray(logits)).max()))
