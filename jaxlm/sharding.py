"""The device mesh and the logical-axis rules: the only file that knows mesh axis names.

Model code names every dimension logically ("embed", "mlp", "act_batch", ...). This
table maps those names to the mesh axes ("data", "fsdp", "tensor"), so data
parallelism, FSDP and tensor parallelism are mesh shapes, never code changes:

    (N, 1, 1)  pure data parallel        (1, N, 1)  FSDP (ZeRO-3 style)
    (1, 1, N)  tensor parallel            (a, b, c)  any mix

Weight names and activation names are disjoint ("embed" vs "act_embed") because a
weight sharded over "fsdp" on its embed dimension must not force activations to be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxlm.config import Config, ConfigError
from jaxlm.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

# logical name -> mesh axis (or tuple of axes, or None = replicated)
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # weights
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    # Mixture of experts: experts are split over the FSDP axis (expert parallelism
    # reusing it: an expert's weights live whole on one shard group).
    "experts": "fsdp",
    "router_bias": None,
    # activations
    "act_batch": BATCH_AXES,
    "act_seq": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_head_dim": None,
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """Fill a single -1 with the remaining devices and check the product."""
    shape = list(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} has more than one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {num_devices}"
        )
    return tuple(shape)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto axes over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(shape, len(devices))
    # Auto axes: XLA propagates shardings from the constraints below; jax.make_mesh
    # would default to Explicit axes, which need out_sharding= on every gather/einsum.
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def training_mesh(cfg: Config) -> Mesh:
    """The mesh of `cfg.mesh` over all devices, refusing (one line naming the keys and
    the device count) a shape that does not fit them or a data.batch_size it cannot
    split, before anything is placed on a device."""
    shape = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    count = jax.device_count()
    try:
        mesh = make_mesh(shape)
    except ValueError as error:
        keys = ", ".join(f"mesh.{axis}={size}" for axis, size in zip(MESH_AXES, shape, strict=True))
        raise ConfigError(
            f"{keys} does not fit the {count} devices of this run: {error}; the sizes must "
            f"multiply to {count} (-1 on one axis takes the remaining devices)"
        ) from None
    check_batch_fits_mesh(cfg.data.batch_size, mesh)
    return mesh


def check_batch_fits_mesh(batch_size: int, mesh: Mesh) -> None:
    """Every batch is split over the data and fsdp axes (batch_sharding), so their
    product must divide data.batch_size (else an IndivisibleError deep in placement)."""
    split = math.prod(mesh.shape[axis] for axis in BATCH_AXES)
    if batch_size % split:
        below = batch_size // split * split
        options = " or ".join(f"data.batch_size={n}" for n in (below, below + split) if n > 0)
        raise ConfigError(
            f"data.batch_size={batch_size} does not split over the mesh's batch axes: "
            f"mesh.data={mesh.shape['data']} x mesh.fsdp={mesh.shape['fsdp']} = {split} of "
            f"{mesh.size} devices; use a multiple of {split}, e.g. {options}"
        )


def mesh_from_flag(text: str) -> Mesh:
    """The mesh of a `--mesh data,fsdp,tensor` command-line flag (e.g. 1,-1,1)."""
    try:
        shape = [int(x) for x in text.split(",")]
    except ValueError:
        shape = []
    if len(shape) != 3:
        raise InputError(f"--mesh {text!r}: expected three integers data,fsdp,tensor like 1,1,8")
    try:
        return make_mesh(shape)
    except ValueError as error:
        raise InputError(f"--mesh {text}: {error}") from None


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None
) -> PartitionSpec:
    """PartitionSpec for a tensor whose dimensions carry these logical names.

    With `shape` and `mesh`, a dimension that the mesh axis does not divide is
    replicated instead (e.g. 2 KV heads on a tensor axis of 4), and a mesh axis is
    used at most once per tensor.
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is not None and name not in LOGICAL_RULES:
            raise KeyError(f"no sharding rule for logical axis '{name}'")
        target = LOGICAL_RULES.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            # Keep the longest prefix of mesh axes that divides the dimension, e.g. a
            # micro-batch of 2 rows on data=2, fsdp=2 is split over data only.
            while shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
                axes = axes[:-1]
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None], shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh))


def constrain(x: jax.Array, *logical_axes: str | None) -> jax.Array:
    """`with_sharding_constraint` by logical names, a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def moe_layout(rows: int, experts: int, width: int):
    """How the current mesh splits a MoE layer of `experts` experts of width `width` on a
    batch of `rows` rows: (mesh, batch_axes, expert_axis, tensor_axis), the arguments
    of jaxlm.models.moe.moe_mlp_sharded; None outside a mesh context or on one device.

    The rows split as activations do ("act_batch"); the experts over the axis their
    weights are sharded on ("experts", i.e. fsdp) when it also splits the rows and
    divides the experts (then tokens are exchanged all-to-all); their width over
    "mlp"'s axis when it divides it.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return None
    if math.prod(mesh.shape[a] for a in MESH_AXES) == 1:
        return None
    split = logical_to_spec(("act_batch",), (rows,), mesh)[0]
    batch_axes = () if split is None else ((split,) if isinstance(split, str) else tuple(split))
    expert = LOGICAL_RULES["experts"]
    expert_axis = expert if expert in batch_axes and experts % mesh.shape[expert] == 0 else None
    tensor = LOGICAL_RULES["mlp"]
    tensor_axis = tensor if mesh.shape[tensor] > 1 and width % mesh.shape[tensor] == 0 else None
    return mesh, batch_axes, expert_axis, tensor_axis


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of every [B, T] (or [B, 2, T]) batch array: batch over data and fsdp."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each process's local rows into one global, batch-sharded array."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }
