"""A mixture-of-experts model end to end: forward, training step, sharding, generation.

The routed layer's math against a naive reference is tests/test_moe_layer.py; here the
model around it: scanned layers equal unrolled ones, expert-parallel sharding on the
fake 8 devices equals one device, gradient accumulation equals the large batch
(the routing losses are sums divided by whole-batch counts), the router bias moves
by the auxiliary-loss-free rule and never by the optimizer, the KV-cached forward
equals the full one, FLOPs count active parameters, and a CLI run logs expert load.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import cli
from jaxlm.analysis.expert_load import load_series, plot_expert_load
from jaxlm.config import OptimConfig
from jaxlm.inference.kv_cache import forward_cached, init_cache
from jaxlm.models.flops import matmul_params
from jaxlm.models.params import abstract_model, count_active_params, count_params, init_params
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state
from jaxlm.training.steps import jit_train_step, make_lm_step
from tests.helpers.batches import packed_batch
from tests.helpers.runs import TINY, make_tokenizer

MOE = dataclasses.replace(
    get_preset("tiny"),
    vocab_size=128,
    moe_experts=4,
    moe_top_k=2,
    moe_d_ff=48,
    moe_shared_experts=1,
    moe_bias_rate=0.01,
    moe_z_weight=0.01,
)
OPTIM = OptimConfig(lr=3e-3, warmup_steps=0)
B, T = 8, 16


def batch(seed=0):
    return packed_batch(MOE.vocab_size, B, T, seed)


def logits_and_stats(cfg, params, tokens, segment_ids=None):
    model = nnx.merge(abstract_model(cfg)[0], params)
    return model.forward_with_stats(tokens, segment_ids=segment_ids)


def test_scanned_and_unrolled_layers_agree():
    params = init_params(MOE, jax.random.key(0))
    tokens = jnp.asarray(batch()["tokens"])
    scanned = logits_and_stats(MOE, params, tokens)
    unrolled = logits_and_stats(dataclasses.replace(MOE, scan_layers=False), params, tokens)
    np.testing.assert_allclose(scanned[0], unrolled[0], rtol=1e-5, atol=1e-5)
    for key in scanned[1]:
        np.testing.assert_allclose(scanned[1][key], unrolled[1][key], rtol=1e-5, err_msg=key)
    assert scanned[1]["load"].shape == (MOE.n_layers, MOE.moe_experts)
    # Every valid token makes top_k assignments in every layer.
    np.testing.assert_array_equal(scanned[1]["load"].sum(-1), B * T * MOE.moe_top_k)


def train(mesh_shape, grad_accum, steps=3, cfg=MOE, hlo=None):
    """`steps` train steps on a mesh; `hlo`, a list, gets the compiled step's text."""
    devices = int(np.prod(mesh_shape))
    mesh = make_mesh(mesh_shape, jax.devices()[:devices])
    graphdef, _ = abstract_model(cfg)
    optimizer = make_optimizer(OPTIM, 10)
    state, shardings = create_train_state(cfg, optimizer, mesh, jax.random.key(1))
    fn = make_lm_step(graphdef, optimizer, learning_rate_schedule(OPTIM, 10), grad_accum=grad_accum)
    step = jit_train_step(fn, shardings, mesh)
    metrics = []
    with jax.set_mesh(mesh):
        for i in range(steps):
            global_batch = host_batch_to_global(batch(i), mesh)
            if hlo is not None and i == 0:
                hlo.append(step.lower(state, global_batch).compile().as_text())
            state, m = step(state, global_batch)
            metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def one_device():
    return train((1, 1, 1), 1)


def flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def assert_states_close(a, b, tol):
    fa, fb = flat(a.params), flat(b.params)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_allclose(fa[key], fb[key], rtol=tol, atol=tol, err_msg=key)


def test_expert_parallel_sharding_equals_one_device(one_device):
    # Experts over the fsdp axis (4), batch over data x fsdp (8).
    sharded = train((2, 4, 1), 1)
    assert_states_close(one_device[0], sharded[0], 2e-5)
    for m1, m8 in zip(one_device[1], sharded[1], strict=True):
        assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-5)
        np.testing.assert_allclose(m1["moe_load"], m8["moe_load"], atol=1e-6)


# Capacity buckets with room for every token (C = all tokens at factor E/K): nothing
# overflows on one device or per shard, so the sharded run must match exactly.
BUCKETS = dataclasses.replace(MOE, moe_impl="buckets", moe_capacity_factor=2.0)


@pytest.fixture(scope="module")
def one_device_buckets():
    return train((1, 1, 1), 1, cfg=BUCKETS)


# The tensor-split meshes are slow-marked: tests/test_moe_layer.py checks the layer on
# them by default, and (2, 4, 1) here checks the whole train step.
@pytest.mark.parametrize(
    "mesh_shape",
    [
        (2, 4, 1),
        pytest.param((1, 2, 4), marks=pytest.mark.slow),
        pytest.param((2, 2, 2), marks=pytest.mark.slow),
    ],
)
def test_expert_parallel_all_to_all_equals_one_device(mesh_shape, one_device_buckets):
    # buckets exchange tokens all-to-all over fsdp (experts split 4, 2 or 2 ways),
    # expert widths split over tensor; the model's other weights shard as usual.
    single = one_device_buckets
    hlo = []
    sharded = train(mesh_shape, 1, cfg=BUCKETS, hlo=hlo)
    assert "all-to-all" in hlo[0]
    assert_states_close(single[0], sharded[0], 2e-5)
    for m1, m8 in zip(single[1], sharded[1], strict=True):
        assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-5)
        np.testing.assert_allclose(m1["moe_load"], m8["moe_load"], atol=1e-6)
        assert float(m8["moe_dropped"]) == 0


def test_gradient_accumulation_equals_the_large_batch(one_device):
    accumulated = train((1, 1, 1), 4)
    assert_states_close(one_device[0], accumulated[0], 2e-5)
    for m1, m4 in zip(one_device[1], accumulated[1], strict=True):
        assert float(m1["loss"]) == pytest.approx(float(m4["loss"]), rel=1e-5)
        assert float(m1["moe_balance"]) == pytest.approx(float(m4["moe_balance"]), rel=1e-5)


def test_router_bias_moves_by_the_load_rule_only(one_device):
    state, metrics = one_device
    bias = np.asarray(state.params["layers"]["router_bias"].get_value())
    assert bias.shape == (MOE.n_layers, MOE.moe_experts)
    # Three steps of +-rate (or 0 for an exactly average expert): multiples of the rate,
    # unchanged by Adam or weight decay.
    steps = bias / MOE.moe_bias_rate
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    assert np.abs(bias).max() > 0
    last = metrics[-1]
    assert 1.0 <= float(last["moe_max_load"]) <= MOE.moe_experts
    np.testing.assert_allclose(np.asarray(last["moe_load"]).sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("capacity", [0.0, 0.5])
def test_the_kv_cached_forward_equals_the_dropless_full_one(capacity):
    # Generation is dropless even for a model trained with a capacity (buckets).
    cfg = (
        MOE
        if not capacity
        else dataclasses.replace(MOE, moe_impl="buckets", moe_capacity_factor=capacity)
    )
    params = init_params(cfg, jax.random.key(2))
    graphdef, _ = abstract_model(cfg)
    tokens = jnp.asarray(batch()["tokens"][:2, :12])
    full, _ = logits_and_stats(MOE, params, tokens)  # dropless
    cache = init_cache(cfg, 2, 16)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    cached, _ = forward_cached(
        cfg, graphdef, params, cache, tokens, positions, jnp.ones((2, 12), bool), 0
    )
    np.testing.assert_allclose(cached, full, rtol=2e-5, atol=2e-5)
    if capacity:  # ... where the training forward would have dropped some
        assert float(logits_and_stats(cfg, params, tokens)[1]["dropped"].sum()) > 0


def test_flops_and_params_count_active_experts():
    dense_mlp = 3 * MOE.d_model * MOE.moe_d_ff
    assert count_params(MOE) - count_active_params(MOE) == MOE.n_layers * 2 * dense_mlp
    fewer = dataclasses.replace(MOE, moe_experts=8)  # more experts, same active work
    assert matmul_params(fewer) - matmul_params(MOE) == MOE.n_layers * MOE.d_model * 4
    assert count_active_params(get_preset("tiny")) == count_params(get_preset("tiny"))


@pytest.mark.timeout(300)
def test_a_moe_run_logs_expert_load_and_generates(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    workdir = tmp_path / "run"
    sets = [*TINY, "train.steps=4", f"data.tokenizer={tokenizer}", "model.moe_experts=4"]
    sets += ["model.moe_bias_rate=0.001", "model.moe_capacity_factor=1.0"]
    sets += ["model.n_layers=2", "model.moe_every=2"]  # layer 0 dense, layer 1 MoE
    argv = ["train", "quickstart", "--workdir", str(workdir)]
    for item in sets:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert len(train_records) == 4
    last = train_records[-1]
    shares = [last[f"moe_load_l1_e{e}"] for e in range(4)]
    assert "moe_load_l0_e0" not in last  # named by the layer's index in the model
    assert sum(shares) == pytest.approx(1.0, rel=1e-5)
    assert 0.0 <= last["moe_dropped"] < 0.5 and last["moe_balance"] > 0
    assert (workdir / "expert_load.png").stat().st_size > 0  # drawn at the end of the run
    steps, series = load_series(workdir / "metrics.jsonl")
    assert steps == [1, 2, 3, 4] and list(series) == [1] and sorted(series[1]) == [0, 1, 2, 3]
    assert cli.main(["generate", str(workdir), "def", "--max-new-tokens", "5"]) == 0


def test_expert_load_plot_reads_the_last_record_of_each_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    records = [
        {"step": 1, "split": "train", "moe_load_l0_e0": 0.9, "moe_load_l0_e1": 0.1},
        {"step": 2, "split": "train", "moe_load_l0_e0": 0.7, "moe_load_l0_e1": 0.3},
        {"step": 2, "split": "train", "moe_load_l0_e0": 0.6, "moe_load_l0_e1": 0.4},  # resumed
        {"step": 2, "split": "eval", "loss": 1.0},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    steps, series = load_series(metrics)
    assert steps == [1, 2] and series == {0: {0: [0.9, 0.6], 1: [0.1, 0.4]}}
    assert plot_expert_load(metrics, tmp_path / "load.png").stat().st_size > 0
    dense = tmp_path / "dense.jsonl"
    dense.write_text(json.dumps({"step": 1, "split": "train", "loss": 2.0}) + "\n")
    assert plot_expert_load(dense, tmp_path / "none.png") is None


def test_objectives_without_the_routing_losses_refuse_a_moe_model():
    from jaxlm.config import Config, ConfigError, DataConfig

    with pytest.raises(ConfigError, match=r"data\.format=text or chat"):
        Config(model=MOE, data=DataConfig(format="preference"))


# ---- mixed dense and MoE layers (moe_every) ----

MIXED = dataclasses.replace(MOE, n_layers=4, moe_every=2, moe_shared_experts=0)


def test_mixed_layers_alternate_dense_and_moe():
    """moe_every=2 on 4 layers: layers 1 and 3 route, 0 and 2 keep the dense MLP. The
    model's forward (scanned in groups, and unrolled) equals a loop over `block` with
    each layer's weights picked by hand from the per-kind stacks."""
    from jaxlm.models.transformer import block

    assert MIXED.moe_layers == [1, 3]
    params = init_params(MIXED, jax.random.key(3))
    layers = {k: v.get_value() for k, v in params["layers"].items()}
    assert layers["w_gate"].shape == (2, MIXED.d_model, MIXED.d_ff)
    assert layers["moe_gate"].shape == (2, 4, MIXED.d_model, MIXED.moe_d_ff)
    assert layers["wq"].shape[0] == layers["router_bias"].shape[0] * 2 == 4
    tokens = jnp.asarray(batch()["tokens"])
    logits, stats = logits_and_stats(MIXED, params, tokens)
    unrolled = logits_and_stats(dataclasses.replace(MIXED, scan_layers=False), params, tokens)
    np.testing.assert_allclose(unrolled[0], logits, rtol=1e-5, atol=1e-5)

    model = nnx.merge(abstract_model(MIXED)[0], params)
    x = model.embed_tokens(tokens)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    segments = jnp.ones((B, T), jnp.int32)
    routed, by_hand = ("router", "router_bias", "moe_gate", "moe_up", "moe_down"), []
    for i, (mlp, index) in enumerate([("dense", 0), ("moe", 0), ("dense", 1), ("moe", 1)]):
        p = {k: v[i] for k, v in layers.items() if k not in routed and not k.startswith("w_")}
        names = routed if mlp == "moe" else ("w_gate", "w_up", "w_down")
        p.update({k: layers[k][index] for k in names})
        x, layer_stats = block(MIXED, p, x, positions, segments)
        assert (layer_stats is None) == (mlp == "dense")
        if layer_stats is not None:
            by_hand.append(layer_stats)
    np.testing.assert_allclose(model.logits(x), logits, rtol=1e-5, atol=1e-5)
    for key in stats:
        want = np.stack([st[key] for st in by_hand])
        np.testing.assert_allclose(stats[key], want, rtol=1e-5, err_msg=key)


def test_mixed_layers_shard_and_generate():
    single = train((1, 1, 1), 1, cfg=MIXED)
    sharded = train((2, 4, 1), 1, cfg=MIXED)
    assert_states_close(single[0], sharded[0], 2e-5)
    for m1, m8 in zip(single[1], sharded[1], strict=True):
        assert float(m1["loss"]) == pytest.approx(float(m8["loss"]), rel=1e-5)
        assert m8["moe_load"].shape == (2, 4)
    params = init_params(MIXED, jax.random.key(4))
    tokens = jnp.asarray(batch()["tokens"][:2, :12])
    full, _ = logits_and_stats(MIXED, params, tokens)
    cache = init_cache(MIXED, 2, 16)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    cached, _ = forward_cached(
        MIXED,
        abstract_model(MIXED)[0],
        params,
        cache,
        tokens,
        positions,
        jnp.ones((2, 12), bool),
        0,
    )
    np.testing.assert_allclose(cached, full, rtol=2e-5, atol=2e-5)


def test_mixed_layers_count_their_own_mlps():
    D, L = MIXED.d_model, MIXED.n_layers
    H, N, K = MIXED.resolved_head_dim, MIXED.n_heads, MIXED.n_kv_heads
    attention = L * D * H * (2 * N + 2 * K)
    routed = D * 4 + 3 * D * MIXED.moe_d_ff * MIXED.moe_top_k  # router + top-k experts
    dense = 3 * D * MIXED.d_ff
    assert matmul_params(MIXED) == attention + 2 * routed + 2 * dense + D * MIXED.vocab_size
    idle = 3 * D * MIXED.moe_d_ff * (4 - 2)
    assert count_params(MIXED) - count_active_params(MIXED) == 2 * idle


def test_mixed_layer_settings_are_checked():
    from jaxlm.config import ConfigError

    with pytest.raises(ConfigError, match=r"moe_every=3 must be >= 1 and divide model\.n_layers=4"):
        dataclasses.replace(MIXED, moe_every=3)
    with pytest.raises(ConfigError, match=r"moe_shared_experts > 0 with model\.moe_every > 1"):
        dataclasses.replace(MIXED, moe_shared_experts=1)


@pytest.mark.parametrize("impl", ["ragged", "buckets"])
def test_remat_dots_keeps_the_expert_matmuls(impl, capsys):
    """remat="dots" saves the experts' matmul outputs (ragged_dot, batched einsums), as
    it saves the dense MLP's, and the gradient is the one without remat."""
    from jax.ad_checkpoint import print_saved_residuals

    from jaxlm.models.transformer import run_layers_with_stats

    # Unrolled: inside a scan the saved values show only as "output of scan".
    base = dataclasses.replace(MOE, moe_impl=impl, moe_capacity_factor=1.0, scan_layers=False)
    params = init_params(base, jax.random.key(5))
    layers = {k: v.get_value() for k, v in params["layers"].items()}
    x = jax.random.normal(jax.random.key(6), (2, 8, base.d_model))
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
    segments = jnp.ones((2, 8), jnp.int32)

    def loss(cfg):
        def f(layers, x):
            y, stats = run_layers_with_stats(cfg, layers, x, positions, segments)
            return jnp.sum(y**2) + jnp.sum(stats["balance_sum"])

        return f

    dots = dataclasses.replace(base, remat="dots")
    print_saved_residuals(loss(dots), layers, x)
    saved = capsys.readouterr().out
    assert "named 'moe_experts'" in saved, saved
    plain = jax.grad(loss(dataclasses.replace(base, remat="none")), argnums=(0, 1))(layers, x)
    remat = jax.grad(loss(dots), argnums=(0, 1))(layers, x)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_moe_run_equals_the_straight_one(tmp_path):
    """Checkpoint round trip: 2 steps, save, resume to 4 gives the straight 4-step run's
    params bitwise, the float32 router bias moved by the load rule included (mixed
    layers, buckets, auxiliary-loss-free bias)."""
    from jaxlm.checkpointing.params_io import restore_params

    tokenizer = make_tokenizer(tmp_path)
    sets = [*TINY, f"data.tokenizer={tokenizer}", "model.moe_experts=4", "model.n_layers=2"]
    sets += ["model.moe_every=2", "model.moe_impl=buckets", "model.moe_capacity_factor=1.0"]
    sets += ["model.moe_bias_rate=0.01", "optim.schedule=constant", "train.checkpoint_every=2"]

    def run(workdir, steps, *more):
        argv = ["train", "quickstart", "--workdir", str(workdir)]
        for item in [*sets, f"train.steps={steps}", *more]:
            argv += ["--set", item]
        assert cli.main(argv) == 0

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4, "train.allow_config_change=train.steps")
    straight, _, step = restore_params(tmp_path / "straight")
    resumed, _, resumed_step = restore_params(tmp_path / "resumed")
    assert step == resumed_step == 4
    bias = np.asarray(nnx.to_pure_dict(straight)["layers"]["router_bias"])
    assert bias.shape == (1, 4) and np.abs(bias).max() > 0
    # The second run started at step 3 (each step logged once), not from scratch.
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [1, 2, 3, 4]
    a, b = flat(straight), flat(resumed)
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
