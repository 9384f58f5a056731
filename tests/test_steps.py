"""The jitted, sharded train step: gradient accumulation, learning, non-finite guard.

All on the `tiny` preset over a (data=2, fsdp=1, tensor=2) mesh of 4 fake devices,
with the step exactly as the training setup builds it (`make_lm_step` + `jit_train_step`, state
donated). Two compiled steps (grad_accum 1 and 4) serve every test.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.batches import packed_batch as synthetic_packed_batch

from jaxlm.config import OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state
from jaxlm.training.steps import forward, jit_train_step, make_lm_step

CFG = get_preset("tiny")
OPTIM = OptimConfig(lr=1e-2, warmup_steps=1, z_loss=1e-4)
TOTAL_STEPS = 30
B, T = 8, 16
ACCUM = 4


def packed_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """[B, T] rows packing documents of uneven length, padding (segment 0) at the end."""
    return synthetic_packed_batch(CFG.vocab_size, B, T, seed)


def unequal_batch() -> dict[str, np.ndarray]:
    """Micro-batch j of 4 holds rows j and j + 4: give them very different token counts.

    Micro-batch 0 supervises 2 tokens, micro-batch 3 none at all, the others ~25 each,
    so a mean of per-micro-batch means would give micro-batch 0's two tokens the weight
    of another micro-batch's twenty-five (and divide micro-batch 3 by zero).
    """
    batch = packed_batch(seed=3)
    mask = batch["loss_mask"]
    mask[[0, 4]] = 0
    mask[0, 5] = mask[4, 2] = 1
    mask[[3, 7]] = 0
    return batch


@pytest.fixture(scope="module")
def env():
    mesh = make_mesh((2, 1, 2), jax.devices()[:4])
    graphdef, _ = abstract_model(CFG)
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    schedule = learning_rate_schedule(OPTIM, TOTAL_STEPS)
    state, shardings = create_train_state(CFG, optimizer, mesh, jax.random.key(0))

    def step_fn(grad_accum):
        fn = make_lm_step(graphdef, optimizer, schedule, grad_accum=grad_accum, z_loss=OPTIM.z_loss)
        return jit_train_step(fn, shardings, mesh)

    return dict(
        mesh=mesh,
        graphdef=graphdef,
        shardings=shardings,
        host_state=jax.device_get(state),  # steps donate their state: keep a host copy
        steps={1: step_fn(1), ACCUM: step_fn(ACCUM)},
    )


def fresh_state(env):
    return jax.device_put(env["host_state"], env["shardings"])


def run(env, state, batches, grad_accum=1):
    step, mesh = env["steps"][grad_accum], env["mesh"]
    metrics = []
    with jax.set_mesh(mesh):
        for batch in batches:
            state, m = step(state, host_batch_to_global(batch, mesh))
            metrics.append({k: np.asarray(v) for k, v in m.items()})
    return state, metrics


def flat_np(tree) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def assert_bitwise_equal(a, b):
    fa, fb = flat_np(a), flat_np(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        assert fa[k].tobytes() == fb[k].tobytes(), k


def adam_moments(opt_state) -> optax.ScaleByAdamState:
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    (found,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
    return found


def reference_loss(env, batch) -> tuple[float, float]:
    """Supervised-token mean NLL in float64 from plain logits, and the naive
    mean over micro-batches of per-micro-batch means (empty ones left out)."""
    with jax.set_mesh(env["mesh"]):
        logits = jax.jit(forward, static_argnums=0)(
            env["graphdef"], env["host_state"].params, batch
        )
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1)
    log_z = top + np.log(np.exp(logits - top[..., None]).sum(-1))
    nll = log_z - np.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    mask = batch["loss_mask"].astype(np.float64)
    means = [
        (nll[j::ACCUM] * mask[j::ACCUM]).sum() / mask[j::ACCUM].sum()
        for j in range(ACCUM)
        if mask[j::ACCUM].sum() > 0
    ]
    return (nll * mask).sum() / mask.sum(), float(np.mean(means))


def test_grad_accumulation_equals_the_big_batch(env):
    """grad_accum=4 must be the grad_accum=1 step, even with unequal micro-batches.

    Both sum unnormalised per-token gradients and divide once by the global token
    count, so they differ only in float32 summation order: loss to 1e-6, gradients to
    2e-6 relative per tensor (~16 float32 ulps; up to 5e-7 seen). Parameters after two
    Adam steps agree to 1e-4 of how far they moved (~7e-6 seen), not to an ulp: Adam
    divides each coordinate by its own RMS, which magnifies summation noise on
    coordinates whose gradient nearly cancels.
    """
    batch = unequal_batch()
    true_loss, mean_of_means = reference_loss(env, batch)
    # The batch tells the two apart: at init every token costs ~ln(320), yet a mean of
    # means is off by ~1e-2, a thousand times the 1e-6 tolerance below.
    assert abs(mean_of_means - true_loss) > 1e-3

    def two_steps(grad_accum):
        state, first = run(env, fresh_state(env), [batch], grad_accum)
        after_one = jax.device_get(state)  # the next step donates `state`
        state, second = run(env, state, [batch], grad_accum)
        return after_one, jax.device_get(state), first + second

    one1, two1, m1 = two_steps(1)
    one4, two4, m4 = two_steps(ACCUM)
    np.testing.assert_allclose(m1[0]["loss"], true_loss, rtol=1e-5)
    for a, b in zip(m1, m4, strict=True):
        assert a["finite"] == b["finite"] == 1
        assert a["num_tokens"] == b["num_tokens"] == batch["loss_mask"].sum()
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6)
        np.testing.assert_allclose(b["z_loss"], a["z_loss"], rtol=1e-6)
        np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=2e-6)

    # After one step Adam's first moment is (1 - b1) * the clipped gradient: linear in
    # the gradient, so it compares the gradients themselves, element by element.
    g1, g4 = flat_np(adam_moments(one1.opt_state).mu), flat_np(adam_moments(one4.opt_state).mu)
    assert g1.keys() == g4.keys()
    for name in g1:
        a, b = g1[name], g4[name]
        assert np.linalg.norm(b - a) <= 2e-6 * np.linalg.norm(a), name
        assert np.abs(b - a).max() <= 2e-6 * np.abs(a).max(), name

    init = flat_np(env["host_state"].params)
    p1, p4 = flat_np(two1.params), flat_np(two4.params)
    for name in init:
        moved = np.linalg.norm(p1[name] - init[name])
        assert moved > 0, name
        assert np.linalg.norm(p4[name] - p1[name]) <= 1e-4 * moved, name
        assert np.abs(p4[name] - p1[name]).max() <= 0.01 * OPTIM.lr, name


def bigram_batch(rng, successor) -> dict[str, np.ndarray]:
    """Rows walking a fixed cycle through 40 tokens from random starting points."""
    seq = np.zeros((B, T + 1), np.int32)
    seq[:, 0] = rng.integers(1, len(successor), B)
    for t in range(T):
        seq[:, t + 1] = successor[seq[:, t]]
    return dict(
        tokens=seq[:, :-1],
        targets=seq[:, 1:],
        loss_mask=np.ones((B, T), np.int32),
        segment_ids=np.ones((B, T), np.int32),
        positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)),
    )


def test_loss_goes_down_on_a_learnable_sequence(env):
    """Each next token is a fixed function of the current one: from ~ln(320) = 5.8
    nats at init, 30 steps reach well under a nat (~0.4 seen). Every batch is fresh,
    so each step's loss is measured on rows the model has not been trained on."""
    rng = np.random.default_rng(0)
    cycle = rng.permutation(np.arange(1, 41))
    successor = np.zeros(41, np.int32)
    successor[cycle] = np.roll(cycle, -1)
    batches = [bigram_batch(rng, successor) for _ in range(TOTAL_STEPS)]
    state, metrics = run(env, fresh_state(env), batches)
    losses = np.array([m["loss"] for m in metrics])
    assert np.all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(CFG.vocab_size), abs=0.1)
    assert losses[-3:].mean() < 0.25 * losses[0]
    assert int(state.step) == TOTAL_STEPS


def poison(state, how: str, token: int):
    params = jax.tree.map(np.array, state.params)  # writable host copies
    if how == "nan":
        params["layers"]["wq"].get_value()[1, 3, 2, 5] = np.nan
    elif how == "inf":
        params["embed"].get_value()[token, 0] = np.inf
    else:  # what a step with a huge learning rate leaves behind
        params["unembed"].get_value()[:] *= 1e38
    return state.replace(params=params)


@pytest.mark.parametrize("how", ["nan", "inf", "huge"])
def test_non_finite_step_changes_nothing(env, how):
    batch = packed_batch(seed=5)
    # One good step first, so the optimizer state is not all zeros.
    state, _ = run(env, fresh_state(env), [batch])
    bad = poison(jax.device_get(state), how, token=batch["tokens"][0, 0])
    state, (metrics,) = run(env, jax.device_put(bad, env["shardings"]), [batch])
    assert metrics["finite"] == 0
    assert metrics["skipped_empty"] == 0
    after = jax.device_get(state)
    assert int(after.step) == int(bad.step) == 1
    assert_bitwise_equal(after.params, bad.params)
    assert_bitwise_equal(after.opt_state, bad.opt_state)


def test_all_padding_batch_is_skipped_with_zero_loss(env):
    batch = packed_batch(seed=6)
    batch["loss_mask"][:] = 0
    state, _ = run(env, fresh_state(env), [packed_batch(seed=5)])
    before = jax.device_get(state)
    state, (metrics,) = run(env, state, [batch])
    assert metrics["loss"] == 0.0  # not NaN
    assert metrics["num_tokens"] == 0
    assert metrics["skipped_empty"] == 1
    assert metrics["finite"] == 1
    assert np.isfinite(metrics["grad_norm"])
    after = jax.device_get(state)
    assert int(after.step) == 1
    assert_bitwise_equal(after.params, before.params)
    assert_bitwise_equal(after.opt_state, before.opt_state)


def test_params_structure_survives_the_step(env):
    """The step returns params as the same nnx.State the model was split into."""
    state, _ = run(env, fresh_state(env), [packed_batch(seed=7)])
    assert isinstance(state.params, nnx.State)
    assert jax.tree.structure(state.params) == jax.tree.structure(env["host_state"].params)


def test_non_finite_update_from_finite_gradients_is_not_applied(env):
    """Clean params and gradients, but the optimizer's update is infinite (an absurd lr)."""
    mesh = env["mesh"]
    optimizer = optax.chain(make_optimizer(OPTIM, TOTAL_STEPS), optax.scale(float("inf")))
    state, shardings = create_train_state(CFG, optimizer, mesh, jax.random.key(0))
    step = jit_train_step(
        make_lm_step(env["graphdef"], optimizer, learning_rate_schedule(OPTIM, TOTAL_STEPS)),
        shardings,
        mesh,
    )
    before = jax.device_get(state)
    with jax.set_mesh(mesh):
        state, metrics = step(state, host_batch_to_global(packed_batch(seed=8), mesh))
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert int(metrics["finite"]) == 0
    after = jax.device_get(state)
    assert int(after.step) == 0
    assert_bitwise_equal(after.params, before.params)
    assert_bitwise_equal(after.opt_state, before.opt_state)


def test_loss_spike_is_skipped_and_changes_nothing(env):
    """With spike_factor on, a step whose loss jumps above factor x the
    moving average is not applied (params, optimizer state and EMA bitwise unchanged)."""
    mesh, optimizer = env["mesh"], make_optimizer(OPTIM, TOTAL_STEPS)
    fn = make_lm_step(
        env["graphdef"], optimizer, learning_rate_schedule(OPTIM, TOTAL_STEPS),
        spike_factor=1.1, spike_warmup_steps=3, loss_ema_decay=0.0,  # EMA = last loss
    )  # fmt: skip
    step = jit_train_step(fn, env["shardings"], mesh)
    batch = packed_batch(seed=8)
    spiky = {**batch, "targets": np.random.default_rng(0).permutation(batch["targets"], axis=1)}
    state = fresh_state(env)
    with jax.set_mesh(mesh):
        for _ in range(8):  # learn this batch, so permuted targets cost far more
            state, m = step(state, host_batch_to_global(batch, mesh))
            assert int(m["skipped_spike"]) == 0
        before = jax.device_get(state)
        state, m = step(state, host_batch_to_global(spiky, mesh))
        assert int(m["skipped_spike"]) == 1 and int(m["finite"]) == 1
        assert float(m["loss"]) > 1.1 * float(before.loss_ema)
        after = jax.device_get(state)
        assert int(after.step) == int(before.step) == 8
        assert_bitwise_equal(after.params, before.params)
        assert_bitwise_equal(after.opt_state, before.opt_state)
        assert after.loss_ema == before.loss_ema
        state, m = step(state, host_batch_to_global(batch, mesh))  # ordinary again: applied
        assert int(m["skipped_spike"]) == 0 and int(jax.device_get(state).step) == 9
