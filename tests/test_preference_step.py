"""The preference train and eval steps on the `tiny` model.

Full fine-tuning: `state.params` is the policy, `state.frozen` a copy of the starting
params (the reference). Batches are random token pairs sharing a prompt, shifted and
masked by the pipeline's own `add_targets_and_mask`. Most tests jit the step on one
device; the last runs it through `jit_train_step` on sharded meshes. Compiled steps
are cached per objective, so each is compiled once for the whole module.
"""

import math

import jax
import numpy as np
import pytest

from jaxlm.config import OptimConfig, PreferenceConfig
from jaxlm.data.packing import add_targets_and_mask
from jaxlm.models.params import abstract_model, init_params
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.preference_steps import (
    make_preference_eval_step,
    make_preference_step,
    make_reference_logps,
)
from jaxlm.training.state import TrainState, train_state_shardings
from jaxlm.training.steps import jit_train_step

CFG = get_preset("tiny")
OPTIM = OptimConfig(lr=3e-3, schedule="constant", warmup_steps=1)
TOTAL_STEPS = 30
T = 16
DPO = PreferenceConfig(loss="sigmoid", beta=0.1)


def encoded_pair(rng: np.random.Generator, *, untrained_side: int | None = None) -> dict:
    """One pair as the data pipeline encodes it: a shared prompt, two responses."""
    prompt = rng.integers(3, CFG.vocab_size, int(rng.integers(2, 6)))
    out = {k: np.zeros((2, T), np.int32) for k in ("tokens", "train_token", "segment_ids")}
    for side in (0, 1):
        response = rng.integers(3, CFG.vocab_size, int(rng.integers(3, 8)))
        seq = np.concatenate([prompt, response])
        out["tokens"][side, : len(seq)] = seq
        out["segment_ids"][side, : len(seq)] = 1
        if side != untrained_side:
            out["train_token"][side, len(prompt) : len(seq)] = 1
    return out


def pair_batch(
    num_pairs: int, batch_size: int, seed: int = 0, half_empty: int = 0
) -> dict[str, np.ndarray]:
    """[batch_size, 2, T]: `num_pairs` real pairs, then `half_empty` pairs with real
    tokens but one side unsupervised (invalid), then all-padding filler pairs."""
    rng = np.random.default_rng(seed)
    pairs = [encoded_pair(rng) for _ in range(num_pairs)]
    pairs += [encoded_pair(rng, untrained_side=i % 2) for i in range(half_empty)]
    rows = {k: np.zeros((batch_size * 2, T), np.int32) for k in pairs[0]}
    for b, pair in enumerate(pairs):
        for k, v in pair.items():
            rows[k][2 * b : 2 * b + 2] = v
    rows["positions"] = np.where(rows["segment_ids"] != 0, np.arange(T, dtype=np.int32), 0)
    # The pipeline's own shift and mask: loss only where the next token is trained.
    rows = add_targets_and_mask(rows)
    return {k: v.reshape(batch_size, 2, T) for k, v in rows.items()}


def initial_state(optimizer) -> TrainState:
    params = jax.device_get(init_params(CFG, jax.random.key(0)))
    return TrainState(
        step=np.zeros((), np.int32),
        params=params,
        opt_state=jax.device_get(optimizer.init(params)),
        loss_ema=np.zeros((), np.float32),
        frozen=jax.tree.map(np.copy, params),  # own buffers: the sharded step donates
    )


@pytest.fixture(scope="module")
def env():
    graphdef, _ = abstract_model(CFG)
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    schedule = learning_rate_schedule(OPTIM, TOTAL_STEPS)
    cache = {}

    def step(cfg: PreferenceConfig = DPO):
        if cfg not in cache:
            cache[cfg] = jax.jit(make_preference_step(graphdef, optimizer, schedule, cfg))
        return cache[cfg]

    return dict(
        graphdef=graphdef,
        optimizer=optimizer,
        schedule=schedule,
        state=initial_state(optimizer),
        step=step,
        ref_logps=jax.jit(make_reference_logps(graphdef)),
    )


def run(step, state, batch, num_steps: int):
    history = []
    for _ in range(num_steps):
        state, metrics = step(state, batch)
        history.append({k: np.asarray(v) for k, v in metrics.items()})
    return jax.device_get(state), history


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_bitwise_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb) and jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def count_dots(jaxpr) -> int:
    """dot_general equations in a jaxpr and every jaxpr nested in it (scan, remat...)."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "dot_general"
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    n += count_dots(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    n += count_dots(sub)
    return n


def test_only_the_policy_trains(env):
    """The reference (state.frozen) comes back bit for bit, and no gradient of it is
    traced: the step with the reference model in it has exactly the reference's
    forward-pass matmuls more than the step reading precomputed log-probs."""
    batch = pair_batch(4, 4)
    state, history = run(env["step"](), env["state"], batch, 3)
    assert_bitwise_equal(state.frozen, env["state"].frozen)
    assert int(state.step) == 3 and all(m["finite"] == 1 for m in history)
    for new, old in zip(leaves(state.params), leaves(env["state"].params), strict=True):
        assert np.abs(new - old).max() > 0  # every policy tensor trains

    step_fn = make_preference_step(env["graphdef"], env["optimizer"], env["schedule"], DPO)
    ref_fn = make_reference_logps(env["graphdef"])
    s0 = env["state"]
    with_ref = {**batch, "ref_logps": np.zeros((4, 2), np.float32)}
    model_ref_dots = count_dots(jax.make_jaxpr(step_fn)(s0, batch).jaxpr)
    precomputed_dots = count_dots(jax.make_jaxpr(step_fn)(s0, with_ref).jaxpr)
    reference_forward_dots = count_dots(jax.make_jaxpr(ref_fn)(s0.params, s0.frozen, batch).jaxpr)
    assert reference_forward_dots > 0
    assert model_ref_dots - precomputed_dots == reference_forward_dots


@pytest.mark.parametrize(
    "cfg",
    [
        DPO,
        # The other objectives' losses are checked against their formulas on hand-worked
        # numbers (test_preference_losses.py); learning a batch in 25 steps costs ~10 s each.
        pytest.param(PreferenceConfig(loss="ipo", beta=0.5), marks=pytest.mark.slow),
        pytest.param(
            PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.5), marks=pytest.mark.slow
        ),
        pytest.param(
            PreferenceConfig(loss="sigmoid", beta=0.1, nll_weight=1.0), marks=pytest.mark.slow
        ),
    ],
    ids=["sigmoid", "ipo", "simpo", "sigmoid+nll"],
)
def test_each_objective_learns_a_fixed_batch(env, cfg):
    _, history = run(env["step"](cfg), env["state"], pair_batch(4, 4, seed=1), 25)
    losses = np.array([float(m["loss"]) for m in history])
    assert np.isfinite(losses).all() and all(int(m["finite"]) == 1 for m in history)
    if cfg.loss != "simpo":  # policy == reference at the start: h = 0
        start = math.log(2) if cfg.loss == "sigmoid" else (1 / (2 * cfg.beta)) ** 2
        start += cfg.nll_weight * float(history[0]["nll"])
        np.testing.assert_allclose(losses[0], start, rtol=1e-5)
    assert losses[-1] < 0.5 * losses[0], losses
    assert float(history[-1]["accuracy"]) == 1.0
    assert float(history[-1]["margin"]) > 0
    assert float(history[-1]["chosen_reward"]) > float(history[-1]["rejected_reward"])
    assert all(float(m["pairs"]) == 4 for m in history)


def test_precomputed_reference_gives_the_same_steps(env):
    batch = pair_batch(3, 4, seed=2)
    s0 = env["state"]
    ref_logps = np.asarray(env["ref_logps"](s0.params, s0.frozen, batch))
    assert ref_logps.shape == (4, 2) and ref_logps.dtype == np.float32
    assert (ref_logps[:3] < 0).all() and (ref_logps[3] == 0).all()  # the filler pair
    in_step, m_in = run(env["step"](), s0, batch, 3)
    # The reference run without frozen params: precomputed log-probs need no model.
    precomputed, m_pre = run(
        env["step"](), s0.replace(frozen=None), {**batch, "ref_logps": ref_logps}, 3
    )
    assert_bitwise_equal(precomputed.params, in_step.params)
    assert_bitwise_equal(precomputed.opt_state, in_step.opt_state)
    for a, b in zip(m_pre, m_in, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), k


def test_invalid_pairs_do_not_change_the_step(env):
    """2 real pairs + 2 filler vs the same 2 + 2 pairs with one side unsupervised."""
    filler = pair_batch(2, 4, seed=3)
    half_empty = pair_batch(2, 4, seed=3, half_empty=2)
    assert (half_empty["loss_mask"][2:].sum(-1) > 0).any()  # real tokens, one side trained
    a, ma = run(env["step"](), env["state"], filler, 2)
    b, mb = run(env["step"](), env["state"], half_empty, 2)
    # Policy == reference on the first step: log 2 per *valid* pair, whatever the rest.
    np.testing.assert_allclose(float(ma[0]["loss"]), math.log(2), rtol=1e-6)
    assert float(ma[0]["pairs"]) == float(mb[0]["pairs"]) == 2
    assert_bitwise_equal(a.params, b.params)
    for x, y in zip(ma, mb, strict=True):
        assert float(x["loss"]) == float(y["loss"])


def test_empty_batch_is_skipped(env):
    batch = pair_batch(2, 4, seed=4)
    batch["loss_mask"][:] = 0
    s0, _ = run(env["step"](), env["state"], pair_batch(2, 4, seed=4), 1)  # a nonzero ema
    state, (m,) = run(env["step"](), s0, batch, 1)
    assert int(m["skipped_empty"]) == 1 and int(m["finite"]) == 1
    assert float(m["loss"]) == 0.0 and float(m["pairs"]) == 0.0
    assert_bitwise_equal(state, s0)  # step counter, params, opt state, loss_ema, frozen


def test_non_finite_step_is_not_applied(env):
    batch = pair_batch(2, 4, seed=5)
    ref_logps = np.zeros((4, 2), np.float32)
    ref_logps[0, 0] = np.nan  # a valid pair: its loss is NaN
    s0 = env["state"].replace(frozen=None)  # as in the precomputed test: same compile
    state, (m,) = run(env["step"](), s0, {**batch, "ref_logps": ref_logps}, 1)
    assert int(m["finite"]) == 0 and int(m["skipped_empty"]) == 0
    assert_bitwise_equal(state, s0)


def test_eval_sums_match_the_train_step(env):
    """Eval's loss_sum / pairs is the loss the train step reports for the same params;
    SimPO accuracy ranks by length-normalised policy log-prob."""
    batch = pair_batch(3, 4, seed=6)
    trained, _ = run(env["step"](), env["state"], batch, 4)
    _, (m,) = run(env["step"](), trained, batch, 1)
    eval_step = jax.jit(make_preference_eval_step(env["graphdef"], DPO))
    sums = {k: float(v) for k, v in eval_step(trained.params, trained.frozen, batch).items()}
    assert sums["pairs"] == 3.0
    np.testing.assert_allclose(sums["loss_sum"] / 3, float(m["loss"]), rtol=1e-5)
    accuracy = (sums["correct"] + sums["ties"] / 2) / 3
    np.testing.assert_allclose(accuracy, float(m["accuracy"]), rtol=1e-6)
    np.testing.assert_allclose(sums["margin_sum"] / 3, float(m["margin"]), rtol=1e-4)

    simpo = PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.5)
    sums = jax.jit(make_preference_eval_step(env["graphdef"], simpo))(trained.params, None, batch)
    # The trained params as a "reference" give the policy's own log-probs.
    logp = np.asarray(env["ref_logps"](None, trained.params, batch))[:3]
    per_token = logp / batch["loss_mask"][:3].sum(-1)
    assert float(sums["correct"]) == float((per_token[:, 0] > per_token[:, 1]).sum())
    np.testing.assert_allclose(
        float(sums["margin_sum"]), 2.0 * (per_token[:, 0] - per_token[:, 1]).sum(), rtol=1e-4
    )


# Slow: ~37 s; the same loss across meshes is checked for the LM step (test_sharding.py), which
# shares jit_train_step
@pytest.mark.slow
def test_sharded_step_matches_across_meshes(env):
    """jit_train_step on (2, 2, 2) (with and without 2 micro-batches) equals (8, 1, 1)."""
    batch = pair_batch(7, 8, seed=7, half_empty=0)
    results = {}
    for shape, accum in (((8, 1, 1), 1), ((2, 2, 2), 1), ((2, 2, 2), 2)):
        mesh = make_mesh(shape)
        shardings = train_state_shardings(CFG, env["optimizer"], mesh)
        shardings = shardings.replace(frozen=shardings.params)
        fn = make_preference_step(
            env["graphdef"], env["optimizer"], env["schedule"], DPO, grad_accum=accum
        )
        step = jit_train_step(fn, shardings, mesh)
        with jax.set_mesh(mesh):
            state = jax.device_put(env["state"], shardings)
            global_batch = host_batch_to_global(batch, mesh)
            results[shape, accum] = run(step, state, global_batch, 3)
    ref_state, ref_m = results[(8, 1, 1), 1]
    ref_losses = np.array([float(m["loss"]) for m in ref_m])
    assert ref_losses[-1] < ref_losses[0]
    assert all(float(m["pairs"]) == 7 for m in ref_m)
    init = leaves(env["state"].params)
    for key in (((2, 2, 2), 1), ((2, 2, 2), 2)):
        state, history = results[key]
        losses = np.array([float(m["loss"]) for m in history])
        np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
        assert_bitwise_equal(state.frozen, env["state"].frozen)
        # Sharded reductions add in another order; Adam amplifies that on coordinates
        # whose gradient nearly cancels, so compare with how far training moved them.
        for x, y, x0 in zip(leaves(state.params), leaves(ref_state.params), init, strict=True):
            assert np.linalg.norm(x - y) <= 1e-3 * np.linalg.norm(y - x0)
            assert np.abs(x - y).max() <= 0.1 * OPTIM.lr
