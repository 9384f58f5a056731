"""The routed MoE MLP (jaxlm.models.moe): ragged against the dense reference, both against
a numpy loop over tokens, routing ties and bias, the loss sums, capacity, sharding.

Tolerances. Ragged and dense compute the same float32 products and differ only in the
order of their sums (on CPU ragged_dot is a masked dot over all experts, the dense
path sums the experts afterwards), so they agree to a few ulps of the largest value:
RTOL = 1e-5 of each array's scale. The numpy loop runs in float64, so there the
difference is float32 rounding itself, over chains of ~20 products: 1e-4.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm.models.moe import (
    MoeSettings,
    capacity_keep,
    moe_mlp,
    moe_mlp_sharded,
    route,
    router_logits,
    update_router_bias,
)
from jaxlm.sharding import make_mesh

RTOL = 1e-5  # ragged vs dense, float32: summation order only
NP_RTOL = 1e-4  # against the float64 numpy loop
D, F = 8, 12  # distinct from every other size, so a transposed axis cannot hide
STAT_KEYS = ("load", "dropped", "tokens", "balance_sum", "rows", "z_sum")

# Jitted once for all tests: the same settings and shapes then compile only once, and
# op-by-op dispatch would be slower than the compile.
_moe = jax.jit(moe_mlp, static_argnums=0)


def _settings(**kw) -> MoeSettings:
    base = {"experts": 4, "top_k": 2, "score": "softmax", "norm_topk": True}
    return MoeSettings(**{**base, **kw})


def _weights(E: int, seed: int = 0, dtype=jnp.float32, bias=None) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "router": jax.random.normal(k[0], (D, E)).astype(dtype),
        "router_bias": jnp.zeros(E, jnp.float32) if bias is None else jnp.asarray(bias),
        "moe_gate": (jax.random.normal(k[1], (E, D, F)) / math.sqrt(D)).astype(dtype),
        "moe_up": (jax.random.normal(k[2], (E, D, F)) / math.sqrt(D)).astype(dtype),
        "moe_down": (jax.random.normal(k[3], (E, F, D)) / math.sqrt(F)).astype(dtype),
    }


def _inputs(B: int, T: int, seed: int = 1, dtype=jnp.float32):
    """h [B, T, D], and valid [B, T] with padding: row 1 half padded, the last row all."""
    h = jax.random.normal(jax.random.key(seed), (B, T, D)).astype(dtype)
    valid = np.ones((B, T), bool)
    valid[1, T // 2 :] = False
    valid[-1] = False
    return h, jnp.asarray(valid)


def _close(actual, desired, rtol=RTOL):
    """Equal to `rtol` of `desired`'s largest magnitude (elementwise relative error is
    meaningless for entries that cancel to near zero)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    scale = max(float(np.max(np.abs(desired))), 1e-30)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale)


# ---- an independent reference: numpy, float64, one token and one expert at a time ----


def _np_route(s: MoeSettings, w, h_MD):
    logits = h_MD @ np.asarray(w["router"], np.float64)
    if s.score == "softmax":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        scores = e / e.sum(-1, keepdims=True)
    else:
        scores = 1 / (1 + np.exp(-logits))
    choice = scores + np.asarray(w["router_bias"], np.float64)
    experts = np.argsort(-choice, axis=-1, kind="stable")[:, : s.top_k]
    weights = np.take_along_axis(scores, experts, -1)
    if s.norm_topk:
        weights = weights / weights.sum(-1, keepdims=True)
    return logits, scores, experts, weights


def _np_fcfs_keep(experts, valid_M, E: int, capacity: int | None):
    """Each expert takes the first `capacity` valid assignments, in token order."""
    keep = np.repeat(valid_M[:, None], experts.shape[1], axis=1)
    if capacity is None:
        return keep
    taken = np.zeros(E, int)
    for m in range(experts.shape[0]):
        for k in range(experts.shape[1]):
            if not keep[m, k]:
                continue
            e = experts[m, k]
            keep[m, k] = taken[e] < capacity
            taken[e] += 1
    return keep


def _np_moe(s: MoeSettings, w, h_BTD, valid_BT, capacity=None):
    h = np.asarray(h_BTD, np.float64)
    B, T, _ = h.shape
    h_MD = h.reshape(B * T, D)
    valid_M = np.asarray(valid_BT).reshape(-1)
    _, _, experts, weights = _np_route(s, w, h_MD)
    keep = _np_fcfs_keep(experts, valid_M, s.experts, capacity)
    gate, up, down = (np.asarray(w[n], np.float64) for n in ("moe_gate", "moe_up", "moe_down"))
    out = np.zeros_like(h_MD)
    for m in range(B * T):
        for k in range(s.top_k):
            if keep[m, k]:
                e, x = experts[m, k], h_MD[m]
                g = x @ gate[e]
                hidden = g / (1 + np.exp(-g)) * (x @ up[e])
                out[m] += weights[m, k] * (hidden @ down[e])
    return out.reshape(B, T, D), keep


def _np_balance(s: MoeSettings, scores, experts, valid_BT):
    """DeepSeek-V3 eq. 17-19 per row, summed over the rows with valid tokens."""
    B, T = valid_BT.shape
    E, K = s.experts, s.top_k
    norm = scores / scores.sum(-1, keepdims=True)
    total, rows = 0.0, 0
    for b in range(B):
        ts = [t for t in range(T) if valid_BT[b, t]]
        if not ts:
            continue
        rows += 1
        f = np.zeros(E)
        P_ = np.zeros(E)
        for t in ts:
            for e in experts[b * T + t]:
                f[e] += E / (K * len(ts))
            P_ += norm[b * T + t] / len(ts)
        total += float(f @ P_)
    return total, rows


# ---- ragged == dense, and dense == the numpy loop ----


def _loss_and_stats(s: MoeSettings, w, h, valid, cot):
    """A scalar touching the output and both losses, so gradients cover the router
    through the combine weights, the balance loss and the z-loss."""
    out, stats = moe_mlp(s, w, h, valid)
    loss = jnp.sum(out * cot) + 0.1 * stats["balance_sum"] + 0.01 * stats["z_sum"]
    return loss, (out, stats)


def _value_and_grads(s: MoeSettings, w, h, valid):
    cot = jax.random.normal(jax.random.key(7), h.shape, h.dtype)
    fn = jax.jit(
        jax.value_and_grad(_loss_and_stats, argnums=(1, 2), has_aux=True), static_argnums=0
    )
    return fn(s, w, h, valid, cot)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("norm_topk", [True, False])
@pytest.mark.parametrize("top_k", [1, 2])
def test_ragged_equals_dense_outputs_and_gradients(score, norm_topk, top_k):
    w = _weights(4)
    h, valid = _inputs(3, 6)
    results = {}
    for impl in ("ragged", "dense"):
        s = _settings(top_k=top_k, score=score, norm_topk=norm_topk, impl=impl)
        results[impl] = _value_and_grads(s, w, h, valid)
    (_, (out_r, stats_r)), (gw_r, gh_r) = results["ragged"]
    (_, (out_d, stats_d)), (gw_d, gh_d) = results["dense"]
    _close(out_r, out_d)
    for key in STAT_KEYS:
        _close(stats_r[key], stats_d[key])
    _close(gh_r, gh_d)
    assert np.any(np.asarray(gh_d) != 0)
    for name in ("router", "moe_gate", "moe_up", "moe_down"):
        _close(gw_r[name], gw_d[name])
        assert np.any(np.asarray(gw_d[name]) != 0), name
    # The bias only chooses: no gradient reaches it.
    assert not np.any(np.asarray(gw_r["router_bias"]))
    assert not np.any(np.asarray(gw_d["router_bias"]))
    # Padding gets nothing, and gives nothing: no gradient reaches its inputs.
    pad = ~np.asarray(valid)
    for out, gh in ((out_r, gh_r), (out_d, gh_d)):
        assert not np.any(np.asarray(out)[pad])
        assert not np.any(np.asarray(gh)[pad])


@pytest.mark.parametrize("impl", ["ragged", "dense"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_matches_numpy_token_loop(impl, score):
    s = _settings(score=score, impl=impl, norm_topk=score == "sigmoid")
    w = _weights(4, seed=3)
    h, valid = _inputs(3, 6, seed=4)
    out, _ = _moe(s, w, h, valid)
    want, _ = _np_moe(s, w, h, valid)
    _close(out, want, NP_RTOL)


def test_bfloat16_ragged_near_dense():
    """The compute dtype in training: output in h's dtype, ragged near dense (bf16 has
    8 bits of mantissa; the two differ only in where sums are rounded)."""
    w = _weights(4, dtype=jnp.bfloat16)
    h, valid = _inputs(3, 6, dtype=jnp.bfloat16)
    outs = [_moe(_settings(impl=impl), w, h, valid)[0] for impl in ("ragged", "dense")]
    assert outs[0].dtype == jnp.bfloat16
    _close(outs[0], outs[1], rtol=2e-2)


# ---- routing ----


def test_top_k_ties_go_to_the_lower_expert():
    s = _settings(experts=5, top_k=2)
    logits = jnp.array([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 3.0, 3.0, 0.0]])
    for score in ("softmax", "sigmoid"):
        r = route(_settings(experts=5, top_k=2, score=score), logits, jnp.zeros(5))
        np.testing.assert_array_equal(r.experts, [[0, 1], [1, 2]])
    # A bias that ties experts' selection keys (exactly: equal scores, equal biases):
    # the lower index wins there too.
    zeros = jnp.zeros((2, 5))
    r = route(s, zeros[:1], jnp.array([0.0, 1.0, 1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(r.experts, [[1, 2]])
    r = route(s, zeros[:1], jnp.array([0.0, 0.0, 0.0, 1.0, 1.0]))
    np.testing.assert_array_equal(r.experts, [[3, 4]])


@pytest.mark.parametrize("norm_topk", [True, False])
def test_bias_changes_the_choice_not_the_weights(norm_topk):
    s = _settings(top_k=2, norm_topk=norm_topk)
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 1.0, 1.5]])
    scores = np.asarray(jax.nn.softmax(logits, axis=-1))
    plain = route(s, logits, jnp.zeros(4))
    np.testing.assert_array_equal(plain.experts, [[0, 1], [3, 2]])
    biased = route(s, logits, jnp.array([-1.0, 0.0, 0.0, 1.0]))
    np.testing.assert_array_equal(biased.experts, [[3, 1], [3, 2]])
    # The weights are the chosen experts' scores without the bias.
    want = np.take_along_axis(scores, np.asarray(biased.experts), -1)
    if norm_topk:
        want = want / want.sum(-1, keepdims=True)
    np.testing.assert_allclose(biased.weights, want, rtol=1e-6)
    np.testing.assert_array_equal(biased.scores, plain.scores)
    # And through the whole layer: the bias moves the output only via the choice.
    w = _weights(4, bias=[0.0, 0.0, 0.0, 5.0])
    h, valid = _inputs(3, 6)
    out, stats = _moe(s, w, h, valid)
    want_out, _ = _np_moe(s, w, h, valid)
    _close(out, want_out, NP_RTOL)
    assert float(stats["load"][3]) == float(stats["tokens"])  # every valid token took 3


# ---- the loss sums and the bias update ----


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_balance_and_z_sums_against_formulas(score):
    s = _settings(score=score, top_k=2)
    w = _weights(4, seed=5)
    h, valid = _inputs(4, 5, seed=6)
    _, stats = _moe(s, w, h, valid)
    h_MD = np.asarray(h, np.float64).reshape(-1, D)
    logits, scores, experts, _ = _np_route(s, w, h_MD)
    balance, rows = _np_balance(s, scores, experts, np.asarray(valid))
    valid_M = np.asarray(valid).reshape(-1)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(stats["balance_sum"], balance, rtol=NP_RTOL)
    np.testing.assert_allclose(stats["rows"], rows)
    assert rows == 3  # the all-padding row does not count
    np.testing.assert_allclose(stats["z_sum"], np.sum(lse[valid_M] ** 2), rtol=NP_RTOL)
    np.testing.assert_allclose(stats["tokens"], valid_M.sum())
    load = np.bincount(experts[valid_M].reshape(-1), minlength=4)
    np.testing.assert_array_equal(stats["load"], load)
    assert float(stats["dropped"]) == 0


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_uniform_router_balance_is_one_per_row(score):
    """Zero logits: every normalised score is 1/E, so sum_i f_i P_i = (sum_i f_i) / E = 1,
    however unevenly the ties (all to experts 0..K-1) load the experts."""
    s = _settings(score=score, top_k=2)
    w = {**_weights(4), "router": jnp.zeros((D, 4))}
    h, valid = _inputs(4, 5)
    _, stats = _moe(s, w, h, valid)
    np.testing.assert_allclose(stats["balance_sum"], 3.0, rtol=1e-6)
    np.testing.assert_allclose(stats["rows"], 3.0)
    np.testing.assert_array_equal(stats["tokens"], 12)  # 5 + 2 + 5, the last row padding
    np.testing.assert_array_equal(stats["load"], [12, 12, 0, 0])
    # z-loss at zero logits: logsumexp = log E for every valid token.
    np.testing.assert_allclose(stats["z_sum"], 12 * math.log(4) ** 2, rtol=1e-6)


def test_update_router_bias():
    bias = jnp.array([0.5, 0.0, -0.25, 0.0], jnp.float32)
    load = jnp.array([10.0, 30.0, 20.0, 20.0])  # mean 20
    new = update_router_bias(bias, load, 0.01)
    assert new.dtype == jnp.float32
    np.testing.assert_allclose(new, [0.51, -0.01, -0.25, 0.0], rtol=1e-6)
    # Stacked over layers [L, E], each layer against its own mean.
    bias_LE = jnp.stack([bias, jnp.zeros(4)])
    load_LE = jnp.stack([load, jnp.array([0.0, 0.0, 0.0, 8.0])])  # mean 2
    new_LE = update_router_bias(bias_LE, load_LE, 0.01)
    np.testing.assert_allclose(new_LE[0], new, rtol=1e-6)
    np.testing.assert_allclose(new_LE[1], [0.01, 0.01, 0.01, -0.01], rtol=1e-6)


# ---- capacity ----


@pytest.mark.parametrize("impl", ["ragged", "dense"])
def test_capacity_large_enough_equals_dropless(impl):
    w = _weights(4)
    h, valid = _inputs(3, 6)
    dropless = _moe(_settings(impl=impl), w, h, valid)
    # C = ceil(2 * M * K / E) = M: no expert can overflow.
    capped = _moe(_settings(impl=impl, capacity_factor=2.0), w, h, valid)
    np.testing.assert_array_equal(capped[0], dropless[0])
    for key in STAT_KEYS:
        np.testing.assert_array_equal(capped[1][key], dropless[1][key])
    assert float(capped[1]["dropped"]) == 0


def test_buckets_with_room_for_everything_equal_dropless():
    w = _weights(4)
    h, valid = _inputs(3, 6)
    dropless = _moe(_settings(), w, h, valid)
    buckets = _moe(_settings(impl="buckets", capacity_factor=2.0), w, h, valid)
    _close(buckets[0], dropless[0])  # another summation order: close, not bitwise
    for key in STAT_KEYS:
        np.testing.assert_array_equal(buckets[1][key], dropless[1][key])
    assert float(buckets[1]["dropped"]) == 0


def test_buckets_equal_dense_gradients_when_dropping():
    w = _weights(4, seed=8)
    h, valid = _inputs(3, 6, seed=9)
    settings = _settings(capacity_factor=0.5, impl="buckets")
    (_, (out_b, stats)), grads_b = _value_and_grads(settings, w, h, valid)
    assert float(stats["dropped"]) > 0
    settings = _settings(capacity_factor=0.5, impl="dense")
    (_, (out_d, _)), grads_d = _value_and_grads(settings, w, h, valid)
    _close(out_b, out_d)
    for g_b, g_d in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads_d), strict=True):
        _close(g_b, g_d)


def test_buckets_need_a_capacity():
    with pytest.raises(ValueError, match="capacity_factor > 0"):
        _settings(impl="buckets")


@pytest.mark.parametrize("impl", ["ragged", "dense", "buckets"])
@pytest.mark.parametrize("capacity_factor", [0.3, 0.7])
def test_capacity_drops_first_come_first_served(impl, capacity_factor):
    s = _settings(impl=impl, capacity_factor=capacity_factor)
    w = _weights(4, seed=8)
    h, valid = _inputs(4, 6, seed=9)
    M = h.shape[0] * h.shape[1]
    capacity = s.capacity(M)
    assert capacity == math.ceil(capacity_factor * M * 2 / 4)
    out, stats = _moe(s, w, h, valid)
    want, keep = _np_moe(s, w, h, valid, capacity=capacity)
    valid_M = np.asarray(valid).reshape(-1)
    dropped = int(np.sum(~keep[valid_M]))
    assert dropped > 0  # the test must exercise the drop
    assert float(stats["dropped"]) == dropped
    _close(out, want, NP_RTOL)
    # The kept set itself, from the routing the layer used.
    experts = route(s, router_logits(w, h.reshape(M, D)), w["router_bias"]).experts
    np.testing.assert_array_equal(
        capacity_keep(experts, jnp.asarray(valid_M), 4, capacity),
        _np_fcfs_keep(np.asarray(experts), valid_M, 4, capacity),
    )
    # The load counts assignments before dropping.
    np.testing.assert_array_equal(stats["load"], _moe(_settings(), w, h, valid)[1]["load"])


def test_capacity_ragged_equals_dense_gradients():
    w = _weights(4, seed=8)
    h, valid = _inputs(3, 6, seed=9)
    (_, (out_r, _)), grads_r = _value_and_grads(_settings(capacity_factor=0.5), w, h, valid)
    settings = _settings(capacity_factor=0.5, impl="dense")
    (_, (out_d, _)), grads_d = _value_and_grads(settings, w, h, valid)
    _close(out_r, out_d)
    for g_r, g_d in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads_d), strict=True):
        _close(g_r, g_d)


# ---- sums over micro-batches, and sharding ----


@pytest.mark.parametrize("impl", ["ragged", "dense"])
def test_stats_add_over_batch_halves(impl):
    s = _settings(impl=impl, score="sigmoid")
    w = _weights(4)
    h, valid = _inputs(4, 6)
    out, whole = _moe(s, w, h, valid)
    halves = [_moe(s, w, h[rows], valid[rows]) for rows in (slice(0, 2), slice(2, 4))]
    for key in STAT_KEYS:
        _close(halves[0][1][key] + halves[1][1][key], whole[key], rtol=1e-6)
    _close(jnp.concatenate([halves[0][0], halves[1][0]]), out, rtol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        _settings(impl="ragged"),
        _settings(impl="dense", score="sigmoid", norm_topk=False),
        _settings(impl="ragged", capacity_factor=0.5),
    ],
    ids=["ragged", "dense", "ragged-capacity"],
)
def test_batch_sharded_over_eight_devices_equals_one(settings):
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    w = _weights(4)
    h, valid = _inputs(8, 6)
    cot = jax.random.normal(jax.random.key(7), h.shape)
    fn = jax.value_and_grad(_loss_and_stats, argnums=(1, 2), has_aux=True)
    fn = jax.jit(fn, static_argnums=0)
    single = fn(settings, w, h, valid, cot)
    by_rows = NamedSharding(mesh, P("batch"))
    sharded_in = [jax.device_put(x, by_rows) for x in (h, valid, cot)]
    assert len(sharded_in[0].sharding.device_set) == 8
    replicated = jax.device_put(w, NamedSharding(mesh, P()))
    sharded = fn(settings, replicated, *sharded_in)
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        _close(got, want)  # the sums over tokens may add per shard, then across


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list | tuple) else cost)["flops"]


@pytest.mark.parametrize("impl", ["ragged", "dense"])
def test_local_per_shard_equals_one_device_and_splits_the_work(impl):
    """moe_mlp_sharded on a (data 2, fsdp 4) mesh, the batch split over both and the experts
    over fsdp (jaxlm.sharding's rules): the whole batch's result, gradients included,
    and each device computes only its shard's rows."""
    settings = _settings(impl=impl, experts=8)
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    batch_axes = ("data", "fsdp")
    w = _weights(8)
    h, valid = _inputs(8, 16)
    cot = jax.random.normal(jax.random.key(7), h.shape)

    def loss(w, h, valid, local):
        if local:
            out, stats = moe_mlp_sharded(settings, w, h, valid, mesh, batch_axes)
        else:
            out, stats = moe_mlp(settings, w, h, valid)
        return jnp.sum(out * cot) + 0.1 * stats["balance_sum"] + 0.01 * stats["z_sum"], (out, stats)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=3)
    single = fn(w, h, valid, False)
    by_rows = NamedSharding(mesh, P(batch_axes))
    experts = NamedSharding(mesh, P("fsdp"))
    w_sharded = {
        k: jax.device_put(v, experts if k.startswith("moe_") else None) for k, v in w.items()
    }
    args = (w_sharded, jax.device_put(h, by_rows), jax.device_put(valid, by_rows))
    local = fn(*args, True)
    for got, want in zip(jax.tree.leaves(local), jax.tree.leaves(single), strict=True):
        _close(got, want)  # the sums over tokens now add per shard, then across
    # The forward's work per device: an eighth of the whole (the router, sorts and
    # stats are small next to the expert matmuls).
    forward = jax.jit(lambda w, h, v, local: loss(w, h, v, local)[0], static_argnums=3)
    whole = _flops(forward.lower(w, h, valid, False).compile())
    per_device = _flops(forward.lower(*args, True).compile())
    assert per_device < whole / 6, (per_device, whole)


def test_local_capacity_is_per_shard():
    settings = _settings(capacity_factor=0.5)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    w = _weights(4)
    h, valid = _inputs(8, 12)
    out, stats = jax.jit(moe_mlp_sharded, static_argnums=(0, 4, 5))(
        settings, w, h, valid, mesh, ("batch",)
    )
    shards = [_moe(settings, w, h[b : b + 1], valid[b : b + 1]) for b in range(8)]
    np.testing.assert_array_equal(out, jnp.concatenate([o for o, _ in shards]))
    assert float(stats["dropped"]) > 0
    for key in STAT_KEYS:
        _close(stats[key], sum(st[key] for _, st in shards), rtol=1e-6)


def _expert_parallel(settings, mesh_shape, layout, w, h, valid, cot):
    """Loss, gradients (w, h), output and stats of moe_mlp_sharded on a (data, fsdp,
    tensor) mesh with the weights placed as jaxlm.sharding places them, and the
    compiled program's text."""
    mesh = make_mesh(mesh_shape)
    rows = NamedSharding(mesh, P(layout[0]))
    placed = {
        "router": jax.device_put(w["router"], NamedSharding(mesh, P("fsdp"))),
        "router_bias": jax.device_put(w["router_bias"], NamedSharding(mesh, P())),
        "moe_gate": jax.device_put(w["moe_gate"], NamedSharding(mesh, P("fsdp", None, "tensor"))),
        "moe_up": jax.device_put(w["moe_up"], NamedSharding(mesh, P("fsdp", None, "tensor"))),
        "moe_down": jax.device_put(w["moe_down"], NamedSharding(mesh, P("fsdp", "tensor"))),
    }

    def loss(w, h):
        out, stats = moe_mlp_sharded(settings, w, h, valid, mesh, *layout)
        return jnp.sum(out * cot) + 0.1 * stats["balance_sum"] + 0.01 * stats["z_sum"], (out, stats)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    with jax.set_mesh(mesh):
        args = (placed, jax.device_put(h, rows))
        return fn(*args), fn.lower(*args).compile().as_text()


def _single_loss(settings, w, h, valid, cot):
    def loss(w, h):
        out, stats = moe_mlp(settings, w, h, valid)
        return jnp.sum(out * cot) + 0.1 * stats["balance_sum"] + 0.01 * stats["z_sum"], (out, stats)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(w, h)


@pytest.mark.parametrize(
    "mesh_shape, layout",
    [
        ((2, 4, 1), (("data", "fsdp"), "fsdp", None)),
        ((1, 4, 2), (("fsdp",), "fsdp", "tensor")),
        ((2, 2, 2), (("data", "fsdp"), "fsdp", "tensor")),
    ],
    ids=["data2-expert4", "expert4-tensor2", "data2-expert2-tensor2"],
)
def test_expert_parallel_buckets_equal_one_device(mesh_shape, layout):
    """Experts split over fsdp, tokens exchanged all-to-all, expert width over tensor:
    with room for every token (capacity_factor E/K gives C = all tokens, so nothing
    overflows on one device or per shard) the loss, output, stats and the gradients of
    weights and inputs equal the single-device layer's."""
    E = 8
    settings = _settings(impl="buckets", experts=E, capacity_factor=E / 2)
    w = _weights(E)
    h, valid = _inputs(8, 16)
    cot = jax.random.normal(jax.random.key(7), h.shape)
    single = _single_loss(settings, w, h, valid, cot)
    sharded, hlo = _expert_parallel(settings, mesh_shape, layout, w, h, valid, cot)
    assert "all-to-all" in hlo  # the token exchange is in the compiled program
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        _close(got, want)


def test_expert_parallel_capacity_is_per_shard():
    """With overflow, expert parallelism keeps GShard's per-group capacity: the result
    is the single-device layer run on each batch shard alone (its C from its own
    tokens), and drops are counted."""
    E = 8
    settings = _settings(impl="buckets", experts=E, capacity_factor=0.5)
    w = _weights(E)
    h, valid = _inputs(8, 12)
    cot = jnp.ones(h.shape)
    ((_, (out, stats)), _), _ = _expert_parallel(
        settings, (1, 8, 1), (("fsdp",), "fsdp", None), w, h, valid, cot
    )
    shards = [_moe(settings, w, h[b : b + 1], valid[b : b + 1]) for b in range(8)]
    _close(out, jnp.concatenate([o for o, _ in shards]), rtol=1e-6)
    assert float(stats["dropped"]) > 0
    for key in STAT_KEYS:
        _close(stats[key], sum(st[key] for _, st in shards), rtol=1e-6)


def test_expert_parallel_splits_experts_not_just_rows():
    """Per device, the exchanged buckets layer does an eighth of the expert FLOPs, and
    holds an eighth of the expert weights (the program's parameters are its shards)."""
    E = 8
    settings = _settings(impl="buckets", experts=E, capacity_factor=1.0)
    w = _weights(E)
    h, valid = _inputs(8, 16)
    mesh = make_mesh((1, 8, 1))
    rows = NamedSharding(mesh, P("fsdp"))
    experts = NamedSharding(mesh, P("fsdp"))
    placed = {k: jax.device_put(v, experts if k.startswith("moe_") else None) for k, v in w.items()}

    def forward(w, h, layout):
        if layout is None:
            return moe_mlp(settings, w, h, valid)[0]
        return moe_mlp_sharded(settings, w, h, valid, mesh, *layout)[0]

    fn = jax.jit(forward, static_argnums=2)
    whole = _flops(fn.lower(w, h, None).compile())
    with jax.set_mesh(mesh):
        compiled = fn.lower(placed, jax.device_put(h, rows), (("fsdp",), "fsdp", None)).compile()
    assert _flops(compiled) < whole / 6, (_flops(compiled), whole)
    # No all-gather of the expert weights: the only collectives move tokens and stats.
    assert "all-gather" not in compiled.as_text()


# ---- settings ----


def test_settings_from_config_and_checks():
    cfg = SimpleNamespace(
        moe_experts=8,
        moe_top_k=2,
        moe_score="sigmoid",
        moe_norm_topk=False,
        moe_capacity_factor=1.25,
        moe_impl="dense",
    )
    s = MoeSettings.from_config(cfg)
    assert s == MoeSettings(
        experts=8, top_k=2, score="sigmoid", norm_topk=False, capacity_factor=1.25, impl="dense"
    )
    assert s.capacity(100) == 32  # ceil(1.25 * 100 * 2 / 8) = ceil(31.25)
    with pytest.raises(ValueError, match="top_k"):
        MoeSettings(experts=2, top_k=3)
    with pytest.raises(ValueError, match="score"):
        MoeSettings(experts=2, top_k=1, score="relu")
    with pytest.raises(ValueError, match="impl"):
        MoeSettings(experts=2, top_k=1, impl="megablox")
