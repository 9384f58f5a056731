"""Learning-rate schedules, the weight-decay mask and gradient clipping.

Schedules are checked value by value against closed forms written here, and through
`make_optimizer` so the lr an update really uses is the one the schedule promises
(update number k, 0-based, gets schedule(k); the first update already gets lr / warmup).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxlm.config import OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.training.optim import learning_rate_schedule, make_optimizer, weight_decay_mask

LR, WARMUP, TOTAL, MIN_RATIO = 3e-3, 10, 100, 0.1


def param(value) -> nnx.Param:
    """A weight as jaxlm's optimizer sees it: an nnx.Param with logical axes."""
    value = jnp.asarray(value, jnp.float32)
    return nnx.Param(value, logical_axes=("embed", "mlp")[: value.ndim])


def schedule_values(cfg: OptimConfig, total: int) -> np.ndarray:
    sched = jax.jit(jax.vmap(learning_rate_schedule(cfg, total)))
    return np.asarray(sched(jnp.arange(total)))


def expected_warmup(k: int) -> float:
    return LR * (k + 1) / WARMUP


def test_cosine_warms_up_then_decays_to_min_lr_at_the_last_step():
    cfg = OptimConfig(lr=LR, schedule="cosine", warmup_steps=WARMUP, min_lr_ratio=MIN_RATIO)
    lrs = schedule_values(cfg, TOTAL)
    final = LR * MIN_RATIO
    expected = []
    for k in range(TOTAL):
        if k + 1 <= WARMUP:
            expected.append(expected_warmup(k))
        else:
            frac = (k + 1 - WARMUP) / (TOTAL - WARMUP)
            expected.append(final + (LR - final) * 0.5 * (1 + math.cos(math.pi * frac)))
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=0)
    assert lrs[0] == pytest.approx(LR / WARMUP, rel=1e-6)
    assert lrs[WARMUP - 1] == pytest.approx(LR, rel=1e-6)  # peak on the last warmup update
    assert lrs[-1] == pytest.approx(final, rel=1e-5)  # the last update uses lr * min_lr_ratio
    assert np.all(np.diff(lrs[WARMUP - 1 :]) < 0)


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    cfg = OptimConfig(
        lr=LR, schedule="wsd", warmup_steps=WARMUP, min_lr_ratio=MIN_RATIO, decay_fraction=0.2
    )
    lrs = schedule_values(cfg, TOTAL)
    final = LR * MIN_RATIO
    decay_start = TOTAL - 20  # 20% of 100 steps
    expected = []
    for k in range(TOTAL):
        if k + 1 <= WARMUP:
            expected.append(expected_warmup(k))
        elif k + 1 <= decay_start:
            expected.append(LR)
        else:
            expected.append(LR + (final - LR) * (k + 1 - decay_start) / (TOTAL - decay_start))
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=0)
    # Flat at exactly lr from the end of warmup to the start of the decay.
    np.testing.assert_array_equal(lrs[WARMUP - 1 : decay_start], np.float32(LR))
    assert lrs[decay_start] < LR
    assert lrs[-1] == pytest.approx(final, rel=1e-5)


def test_constant_stays_at_lr_after_warmup():
    cfg = OptimConfig(lr=LR, schedule="constant", warmup_steps=WARMUP)
    lrs = schedule_values(cfg, TOTAL)
    np.testing.assert_allclose(lrs[:WARMUP], [expected_warmup(k) for k in range(WARMUP)], rtol=1e-5)
    np.testing.assert_array_equal(lrs[WARMUP - 1 :], np.float32(LR))


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_optimizer_applies_the_schedule_update_by_update(schedule):
    """With a constant gradient of 1, Adam's normalised step is 1, so update k is -lr(k)."""
    cfg = OptimConfig(
        lr=LR, schedule=schedule, warmup_steps=3, weight_decay=0.0, clip_norm=0.0, eps=1e-12
    )
    total = 8
    opt = make_optimizer(cfg, total)
    params = {"w": param(np.zeros(3))}
    grads = {"w": param(np.ones(3))}
    opt_state = opt.init(params)
    update = jax.jit(opt.update)
    steps = []
    for _ in range(total):
        updates, opt_state = update(grads, opt_state, params)
        steps.append(float(updates["w"][...][0]))
    np.testing.assert_allclose(steps, -schedule_values(cfg, total), rtol=1e-5)


def tiny_qk_norm_params():
    _, abstract = abstract_model(dataclasses.replace(get_preset("tiny"), qk_norm=True))
    return abstract


def test_weight_decay_mask_is_false_exactly_for_norm_scales():
    mask = weight_decay_mask(tiny_qk_norm_params())
    flat = {"/".join(map(str, path)): var.get_value() for path, var in nnx.to_flat_state(mask)}
    assert flat == {
        "embed": True,
        "unembed": True,
        "final_norm": False,
        "layers/attn_norm": False,  # stacked [L, D]
        "layers/mlp_norm": False,
        "layers/q_norm": False,  # stacked [L, H]
        "layers/k_norm": False,
        "layers/wq": True,
        "layers/wk": True,
        "layers/wv": True,
        "layers/wo": True,
        "layers/w_gate": True,
        "layers/w_up": True,
        "layers/w_down": True,
    }


def test_weight_decay_reaches_matrices_but_never_norms():
    """Zero gradients: Adam's step is 0, so only decoupled weight decay moves params."""
    abstract = tiny_qk_norm_params()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(1.0 + rng.random(s.shape), jnp.float32), abstract)
    cfg = OptimConfig(lr=LR, schedule="constant", warmup_steps=0, weight_decay=0.5)
    opt = make_optimizer(cfg, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(opt.update)(zeros, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    before = dict(nnx.to_flat_state(params))
    for path, var in nnx.to_flat_state(new):
        name = "/".join(map(str, path))
        old, now = np.asarray(before[path].get_value()), np.asarray(var.get_value())
        if path[-1].endswith("norm"):
            np.testing.assert_array_equal(now, old, err_msg=name)
        else:
            np.testing.assert_allclose(now, old * (1 - LR * 0.5), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(("norm", "clip_norm"), [(10.0, 1.0), (0.5, 1.0), (10.0, 0.0)])
def test_clipping_caps_the_global_gradient_norm(norm, clip_norm):
    """b1 = b2 = 0 and eps = 1 make Adam's step g / (|g| + 1): the gradient's scale shows.

    With clipping the optimizer must see g * min(1, clip_norm / |g|_global); clip_norm
    0 disables clipping.
    """
    rng = np.random.default_rng(1)
    g = {"a": rng.standard_normal((4, 5)), "b": rng.standard_normal((7,))}
    scale = norm / np.sqrt(sum(np.sum(x * x) for x in g.values()))
    g = {k: (v * scale).astype(np.float32) for k, v in g.items()}
    cfg = OptimConfig(
        lr=1.0,
        schedule="constant",
        warmup_steps=0,
        b1=0.0,
        b2=0.0,
        eps=1.0,
        weight_decay=0.0,
        clip_norm=clip_norm,
    )
    opt = make_optimizer(cfg, 10)
    params = {k: param(np.zeros_like(v)) for k, v in g.items()}
    updates, _ = opt.update({k: param(v) for k, v in g.items()}, opt.init(params), params)
    factor = min(1.0, clip_norm / norm) if clip_norm > 0 else 1.0
    for k, v in g.items():
        seen = v * factor
        np.testing.assert_allclose(
            updates[k][...], -seen / (np.abs(seen) + 1.0), rtol=1e-5, atol=1e-7
        )
