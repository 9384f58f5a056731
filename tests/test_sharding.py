"""Golden parameter shardings and mesh-shape invariance of training.

The `tiny` preset on a (data=2, fsdp=2, tensor=2) mesh must give exactly the
PartitionSpecs written out below, the created state must really be laid out that way
on the devices (shard shapes), and Adam's moments must follow their parameters. Then
three train steps on one fixed packed batch must give the same losses and parameters
whether the 8-row batch runs on one device, 8-way data parallel, 8-way FSDP or a
2x2x2 mix: DP, FSDP and TP are mesh shapes, never different math.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.batches import packed_batch as synthetic_packed_batch
from jax.sharding import PartitionSpec as P

from jaxlm.config import OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, logical_to_spec, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state, sharding_summary, train_state_shardings
from jaxlm.training.steps import jit_train_step, make_lm_step

CFG = get_preset("tiny")
OPTIM = OptimConfig(lr=1e-2, warmup_steps=1)
TOTAL_STEPS = 10
MESHES = [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2)]
# Meshes whose state is initialised in place by create_train_state; (2, 2, 2) splits
# every weight axis, so its init being bit-identical to one device's covers the rest.
INIT_ON_MESH = [(1, 1, 1), (2, 2, 2)]
NUM_STEPS = 3

# tiny: V=320, D=48, L=3, N=4, K=2, H=12, F=88, untied. On (2, 2, 2) every weight
# dimension named vocab/heads/kv_heads/mlp goes to "tensor", embed to "fsdp".
GOLDEN_SPECS_222 = {
    "embed": "P('tensor', 'fsdp')",
    "unembed": "P('fsdp', 'tensor')",
    "final_norm": "P(None,)",
    "layers/attn_norm": "P(None, None)",
    "layers/mlp_norm": "P(None, None)",
    "layers/wq": "P(None, 'fsdp', 'tensor', None)",
    "layers/wk": "P(None, 'fsdp', 'tensor', None)",
    "layers/wv": "P(None, 'fsdp', 'tensor', None)",
    "layers/wo": "P(None, 'tensor', None, 'fsdp')",
    "layers/w_gate": "P(None, 'fsdp', 'tensor')",
    "layers/w_up": "P(None, 'fsdp', 'tensor')",
    "layers/w_down": "P(None, 'tensor', 'fsdp')",
}
# What each device holds under those specs.
GOLDEN_SHARD_SHAPES_222 = {
    "embed": (160, 24),
    "unembed": (24, 160),
    "final_norm": (48,),
    "layers/attn_norm": (3, 48),
    "layers/mlp_norm": (3, 48),
    "layers/wq": (3, 24, 2, 12),
    "layers/wk": (3, 24, 1, 12),
    "layers/wv": (3, 24, 1, 12),
    "layers/wo": (3, 2, 12, 24),
    "layers/w_gate": (3, 24, 44),
    "layers/w_up": (3, 24, 44),
    "layers/w_down": (3, 44, 24),
}


def packed_batch(batch_size: int = 8, seq_len: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed global batch in the batch schema (see helpers.batches)."""
    return synthetic_packed_batch(CFG.vocab_size, batch_size, seq_len, seed)


def flat(state: nnx.State) -> dict[str, object]:
    return {"/".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(state)}


def adam_moments(opt_state) -> optax.ScaleByAdamState:
    found = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(x, optax.ScaleByAdamState)
    ]
    assert len(found) == 1
    return found[0]


def placement(arrays: dict[str, jax.Array]) -> dict[str, tuple]:
    """name -> (spec string, shape of every addressable shard)."""
    return {
        k: (str(a.sharding.spec), {tuple(s.data.shape) for s in a.addressable_shards})
        for k, a in arrays.items()
    }


@pytest.fixture(scope="module")
def runs():
    """Create the state on each mesh, record its layout, then train 3 steps."""
    graphdef, _ = abstract_model(CFG)
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    schedule = learning_rate_schedule(OPTIM, TOTAL_STEPS)
    batch = packed_batch()
    out = {}
    for shape in MESHES:
        mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
        if shape in INIT_ON_MESH:
            state, shardings = create_train_state(CFG, optimizer, mesh, jax.random.key(0))
        else:  # the single-device initial state, resharded (saves an init compile)
            shardings = train_state_shardings(CFG, optimizer, mesh)
            state = jax.device_put(out[(1, 1, 1)]["init_state"], shardings)
        adam = adam_moments(state.opt_state)
        record = {
            "summary": sharding_summary(shardings.params),
            "params": placement(flat(state.params)),
            "mu": placement(flat(adam.mu)),
            "nu": placement(flat(adam.nu)),
            "devices": {d for a in jax.tree.leaves(state) for d in a.sharding.device_set},
            "init_np": {k: np.asarray(v) for k, v in flat(state.params).items()},
            "init_state": jax.device_get(state),
        }
        step = jit_train_step(make_lm_step(graphdef, optimizer, schedule), shardings, mesh)
        losses = []
        with jax.set_mesh(mesh):
            for _ in range(NUM_STEPS):
                state, metrics = step(state, host_batch_to_global(batch, mesh))
                losses.append(float(metrics["loss"]))
        record["final_params"] = placement(flat(state.params))
        record["losses"] = np.array(losses)
        record["params_np"] = {k: np.asarray(v) for k, v in flat(state.params).items()}
        out[shape] = record
    return out


def test_golden_param_specs_on_2x2x2(runs):
    assert runs[(2, 2, 2)]["summary"] == GOLDEN_SPECS_222


def test_created_state_is_laid_out_as_declared(runs):
    run = runs[(2, 2, 2)]
    assert len(run["devices"]) == 8
    expected = {k: (GOLDEN_SPECS_222[k], {GOLDEN_SHARD_SHAPES_222[k]}) for k in GOLDEN_SPECS_222}
    assert run["params"] == expected
    # Adam's moments take their parameter's sharding (and a train step keeps it).
    assert run["mu"] == expected
    assert run["nu"] == expected
    assert run["final_params"] == expected


# How wq [L, D, N, H] is laid out on each mesh: the meshes really are DP, FSDP, mixed.
WQ_SPEC = {
    (1, 1, 1): "P(None, None, None, None)",
    (8, 1, 1): "P(None, None, None, None)",
    (1, 8, 1): "P(None, 'fsdp', None, None)",
    (2, 2, 2): "P(None, 'fsdp', 'tensor', None)",
}


@pytest.mark.parametrize("shape", MESHES)
def test_each_mesh_shards_as_its_shape_says(runs, shape):
    run = runs[shape]
    assert run["params"]["layers/wq"][0] == WQ_SPEC[shape]
    if shape[1] == shape[2] == 1:  # no fsdp, no tensor axis: every weight whole everywhere
        assert all("'" not in spec for spec, _ in run["params"].values())


def test_indivisible_dimensions_fall_back_to_replication():
    """tiny's 2 KV heads on a 4-way tensor axis are replicated; 4 query heads are split."""
    mesh = make_mesh((1, 2, 4))
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    summary = sharding_summary(train_state_shardings(CFG, optimizer, mesh).params)
    assert summary["layers/wq"] == "P(None, 'fsdp', 'tensor', None)"
    assert summary["layers/wk"] == "P(None, 'fsdp', None, None)"
    assert summary["layers/wv"] == "P(None, 'fsdp', None, None)"
    assert summary["layers/w_gate"] == "P(None, 'fsdp', 'tensor')"  # 88 = 4 * 22
    # A mesh axis is used at most once per tensor.
    assert logical_to_spec(("embed", "embed"), (8, 8), mesh) == P("fsdp", None)
    assert logical_to_spec(("act_batch", "act_seq"), (8, 5), mesh) == P("fsdp", None)


@pytest.mark.parametrize("shape", MESHES[1:])
def test_same_training_on_every_mesh(runs, shape):
    """Same initial parameters bit for bit, losses to 1e-5, parameters after 3 steps.

    Parameters cannot agree to an ulp: sharded reductions add in a different order,
    and Adam divides each gradient by its own RMS, so a coordinate whose gradient nearly
    cancels turns an ulp of reduction noise into a visible part of its lr-sized step
    (up to ~5e-5 seen here, with lr = 1e-2). So each tensor's difference must be below
    1e-3 of how far training moved it (L2; ~4e-5 seen), and no coordinate may be off by
    more than a tenth of one lr step. A sharding error moves many coordinates by O(lr):
    a relative difference of order 1.
    """
    ref, run = runs[(1, 1, 1)], runs[shape]
    assert run["init_np"].keys() == ref["init_np"].keys()
    for name, value in run["init_np"].items():
        np.testing.assert_array_equal(value, ref["init_np"][name], err_msg=name)
    assert np.all(np.isfinite(run["losses"]))
    assert ref["losses"][-1] < ref["losses"][0] - 0.1  # it trains: the steps are not no-ops
    np.testing.assert_allclose(run["losses"], ref["losses"], atol=1e-5, rtol=0)
    assert run["params_np"].keys() == ref["params_np"].keys()
    for name, value in run["params_np"].items():
        expected = ref["params_np"][name]
        moved = np.linalg.norm(expected - ref["init_np"][name])
        assert moved > 0, name
        assert np.linalg.norm(value - expected) <= 1e-3 * moved, name
        assert np.abs(value - expected).max() <= 0.1 * OPTIM.lr, name


def test_mesh_flag_parses_three_axes_and_names_bad_input():
    from jaxlm.errors import InputError
    from jaxlm.sharding import mesh_from_flag

    assert dict(mesh_from_flag("1,-1,1").shape) == {
        "data": 1,
        "fsdp": jax.device_count(),
        "tensor": 1,
    }
    for bad in ("2,2", "a,b,c"):
        with pytest.raises(InputError, match=f"--mesh '{bad}': expected three integers"):
            mesh_from_flag(bad)
    with pytest.raises(InputError, match="--mesh 3,1,1"):
        mesh_from_flag("3,1,1")  # 3 does not divide the 8 test devices
