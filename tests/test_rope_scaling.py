"""RoPE scaling for context extension (jaxlm.models.rope): PI, NTK-aware, YaRN.

Each method is checked against its defining formula, computed here independently in
float64: PI rotates position p as plain RoPE rotates p / s; NTK's frequencies are
those of the base theta * s^(H/(H-2)); YaRN leaves pairs that turn more than
beta_fast times over the original context alone, interpolates those turning less
than beta_slow times by 1/s, blends linearly between, and multiplies q and k by
0.1 ln(s) + 1. A factor of 1 is plain RoPE for every method. The model applies the
scaling (positions 2p under PI with s = 2 give the logits of positions p), configs
refuse bad settings naming the key, and init_from accepts a model trained without
scaling.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.checkpointing.params_io import _refuse_other_model
from jaxlm.config import Config, ConfigError, ModelConfig, apply_overrides
from jaxlm.errors import InputError
from jaxlm.models.rope import (
    RopeScaling,
    apply_rope,
    frequency_multipliers,
    rope_frequencies,
    scaled_frequencies,
    yarn_ramp,
)
from jaxlm.models.transformer import Transformer
from jaxlm.presets import get_preset

THETA = 10_000.0
H = 64
B, T, N = 2, 48, 3

rope = jax.jit(apply_rope, static_argnums=(2, 3))


@pytest.fixture(scope="module")
def x_and_positions():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)
    positions = jnp.asarray(np.stack([np.arange(T), np.arange(T) * 7 + 3]), jnp.int32)
    return x, positions


def reference_rope(x, positions, inv_freq):
    """Plain half-split RoPE in float64 numpy, with the given inverse frequencies."""
    x = np.asarray(x, np.float64)
    angles = np.asarray(positions, np.float64)[..., None] * np.asarray(inv_freq, np.float64)
    cos, sin = np.cos(angles)[:, :, None, :], np.sin(angles)[:, :, None, :]
    first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def base_inv_freq(head_dim=H, theta=THETA):
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def yarn(factor, original=4096, **kw):
    return RopeScaling(method="yarn", factor=factor, original_max_len=original, **kw)


def test_unscaled_rope_matches_the_formula(x_and_positions):
    x, pos = x_and_positions
    expected = reference_rope(x, pos, base_inv_freq())
    np.testing.assert_allclose(rope(x, pos, THETA, RopeScaling()), expected, atol=2e-4)
    # The default (no scaling argument) is the unscaled path (eager vs jitted: rounding).
    np.testing.assert_allclose(
        apply_rope(x, pos, THETA), rope(x, pos, THETA, RopeScaling()), atol=5e-5
    )


@pytest.mark.parametrize(
    "scaling",
    [
        RopeScaling(method="linear", factor=1.0),
        RopeScaling(method="ntk", factor=1.0),
        yarn(1.0),
        yarn(1.0, original=64),  # every pair on the ramp or below it
    ],
    ids=["linear", "ntk", "yarn", "yarn-short"],
)
def test_factor_one_is_plain_rope(x_and_positions, scaling):
    x, pos = x_and_positions
    np.testing.assert_array_equal(frequency_multipliers(H, THETA, scaling), 1.0)
    assert scaling.attention_factor == 1.0
    np.testing.assert_array_equal(rope(x, pos, THETA, scaling), rope(x, pos, THETA, RopeScaling()))


@pytest.mark.parametrize("factor", [4.0, 2.5])
def test_linear_rotates_position_p_as_plain_rope_rotates_p_over_s(x_and_positions, factor):
    x, pos = x_and_positions
    scaled = rope(x, pos, THETA, RopeScaling(method="linear", factor=factor))
    plain_at_p_over_s = apply_rope(x, pos.astype(jnp.float32) / factor, THETA)
    # Angles reach ~300 rad here, where a float32 ulp is 3e-5.
    np.testing.assert_allclose(scaled, plain_at_p_over_s, atol=1e-4)
    # ... and differs from plain RoPE at p (the test would see a no-op).
    assert np.abs(np.asarray(scaled) - np.asarray(apply_rope(x, pos, THETA))).max() > 0.1


@pytest.mark.parametrize("head_dim", [64, 16])
@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_ntk_frequencies_are_those_of_the_enlarged_base(head_dim, factor):
    new_theta = THETA * factor ** (head_dim / (head_dim - 2))
    expected = new_theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    got = np.asarray(scaled_frequencies(head_dim, THETA, RopeScaling(method="ntk", factor=factor)))
    np.testing.assert_allclose(got, expected, rtol=2e-6)
    # The fastest pair is extrapolated, the slowest interpolated by exactly 1/s.
    base = base_inv_freq(head_dim)
    np.testing.assert_allclose(got[0], base[0], rtol=1e-7)
    np.testing.assert_allclose(got[-1], base[-1] / factor, rtol=2e-6)


def test_ntk_rotation_uses_those_frequencies(x_and_positions):
    x, pos = x_and_positions
    new_theta = THETA * 4.0 ** (H / (H - 2))
    got = rope(x, pos, THETA, RopeScaling(method="ntk", factor=4.0))
    np.testing.assert_allclose(got, reference_rope(x, pos, base_inv_freq(H, new_theta)), atol=2e-4)


def yarn_reference(head_dim, theta, factor, original, beta_fast=32.0, beta_slow=1.0):
    """YaRN's frequencies from the paper's definitions, one pair at a time."""
    out = []
    for i in range(head_dim // 2):
        inv_freq = theta ** (-2 * i / head_dim)
        wavelength = 2 * math.pi / inv_freq
        r = original / wavelength
        if r < beta_slow:
            gamma = 0.0
        elif r > beta_fast:
            gamma = 1.0
        else:
            gamma = (r - beta_slow) / (beta_fast - beta_slow)
        out.append((1 - gamma) * inv_freq / factor + gamma * inv_freq)
    return np.array(out)


@pytest.mark.parametrize(
    ("factor", "original", "betas"),
    [(4.0, 4096, (32.0, 1.0)), (8.0, 2048, (32.0, 1.0)), (4.0, 4096, (16.0, 2.0))],
)
def test_yarn_frequencies_follow_the_ramp(factor, original, betas):
    scaling = yarn(factor, original, beta_fast=betas[0], beta_slow=betas[1])
    got = np.asarray(scaled_frequencies(H, THETA, scaling))
    np.testing.assert_allclose(got, yarn_reference(H, THETA, factor, original, *betas), rtol=2e-6)
    base = base_inv_freq()
    rotations = original * base / (2 * np.pi)
    fast, slow = rotations > betas[0], rotations < betas[1]
    ramp = ~fast & ~slow
    # All three regimes occur for these settings, so each branch is exercised.
    assert fast.sum() >= 2 and slow.sum() >= 2 and ramp.sum() >= 2
    np.testing.assert_allclose(got[fast], base[fast], rtol=1e-6)  # unchanged
    np.testing.assert_allclose(got[slow], base[slow] / factor, rtol=2e-6)  # interpolated
    assert np.all(got[ramp] < base[ramp]) and np.all(got[ramp] > base[ramp] / factor)
    gamma = yarn_ramp(H, THETA, scaling)
    np.testing.assert_array_equal(gamma[fast], 1.0)
    np.testing.assert_array_equal(gamma[slow], 0.0)


@pytest.mark.parametrize("factor", [2.0, 4.0, 16.0])
def test_yarn_attention_factor_scales_q_and_k(x_and_positions, factor):
    x, pos = x_and_positions
    mscale = 0.1 * math.log(factor) + 1.0
    scaling = yarn(factor)
    assert scaling.attention_factor == pytest.approx(mscale, rel=1e-12)
    assert yarn(4.0).attention_factor == pytest.approx(1.1386294361, rel=1e-9)
    # The rotation keeps norms, so each rotated vector is mscale times as long ...
    got = np.asarray(rope(x, pos, THETA, scaling), np.float64)
    ratio = np.linalg.norm(got, axis=-1) / np.linalg.norm(np.asarray(x, np.float64), axis=-1)
    np.testing.assert_allclose(ratio, mscale, rtol=1e-5)
    # ... and equals the rotation by YaRN's frequencies, times mscale.
    expected = mscale * reference_rope(x, pos, yarn_reference(H, THETA, factor, 4096))
    np.testing.assert_allclose(got, expected, atol=5e-4)
    # q.k, the attention logit, is scaled by mscale^2 = 1/t.
    q, k = got[0, 5, 0], got[0, 9, 1]
    plain = reference_rope(x, pos, yarn_reference(H, THETA, factor, 4096))
    np.testing.assert_allclose(q @ k, mscale**2 * (plain[0, 5, 0] @ plain[0, 9, 1]), rtol=1e-4)


def test_linear_and_ntk_leave_the_magnitude_alone(x_and_positions):
    x, pos = x_and_positions
    for method in ("linear", "ntk"):
        scaling = RopeScaling(method=method, factor=4.0)
        assert scaling.attention_factor == 1.0
        got = np.asarray(rope(x, pos, THETA, scaling))
        np.testing.assert_allclose(
            np.linalg.norm(got, axis=-1), np.linalg.norm(np.asarray(x), axis=-1), rtol=1e-5
        )


def test_rope_keeps_the_input_dtype(x_and_positions):
    x, pos = x_and_positions
    out = rope(x.astype(jnp.bfloat16), pos, THETA, yarn(4.0))
    assert out.dtype == jnp.bfloat16


# ---- through the model -------------------------------------------------------------


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(get_preset("tiny"), **changes)


def logits(cfg: ModelConfig, tokens, positions, params=None):
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    model = nnx.merge(graphdef, params if params is not None else state)
    return np.asarray(model(tokens, positions=positions)), state


def test_model_applies_the_scaling_to_queries_and_keys():
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 320, (2, 24)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(24, dtype=jnp.int32), (2, 24))
    plain, params = logits(tiny(), tokens, positions)
    # Same weights: PI with s = 2 at positions 2p is plain RoPE at positions p.
    pi, _ = logits(
        tiny(rope_scaling="linear", rope_scaling_factor=2.0), tokens, 2 * positions, params
    )
    np.testing.assert_allclose(pi, plain, atol=2e-5)
    # Factor 1 of every method is the unscaled model, bit for bit.
    for method in ("linear", "ntk", "yarn"):
        cfg = tiny(rope_scaling=method, rope_original_max_len=64)
        same, _ = logits(cfg, tokens, positions, params)
        np.testing.assert_array_equal(same, plain)
    # The other methods change the function (the wiring is not a no-op).
    for method in ("ntk", "yarn"):
        cfg = tiny(rope_scaling=method, rope_scaling_factor=4.0, rope_original_max_len=16)
        other, _ = logits(cfg, tokens, positions, params)
        assert np.abs(other - plain).max() > 1e-5  # init logits are small


# ---- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.rope_scaling=dynamic"], r"model\.rope_scaling='dynamic' is not one of"),
        (["model.rope_scaling=linear", "model.rope_scaling_factor=0.5"], "rope_scaling_factor=0.5"),
        (
            ["model.rope_scaling=ntk", "model.rope_scaling_factor=nan"],
            r"rope_scaling_factor='nan' is not a finite number",
        ),
        (["model.rope_scaling_factor=2"], r"model\.rope_scaling_factor=2\.0 has no effect"),
        (["model.rope_scaling=yarn", "model.rope_scaling_factor=4"], "rope_original_max_len > 0"),
        (["model.rope_original_max_len=-1"], r"model\.rope_original_max_len=-1"),
        (
            [
                "model.rope_scaling=yarn",
                "model.rope_scaling_factor=4",
                "model.rope_original_max_len=128",
                "model.rope_yarn_beta_slow=40",
            ],
            "rope_yarn_beta_slow=40.0",
        ),
        (["model.rope_theta=0"], r"model\.rope_theta=0\.0 must be positive"),
    ],
)
def test_config_refuses_bad_rope_scaling(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), overrides)


def test_config_refuses_an_unknown_method_built_directly():
    with pytest.raises(ConfigError, match=r"model\.rope_scaling='ntk-by-parts'"):
        ModelConfig(rope_scaling="ntk-by-parts")


def test_config_accepts_each_method_and_rope_scaling_reads_it():
    cfg = apply_overrides(
        Config(),
        [
            "model.rope_scaling=yarn",
            "model.rope_scaling_factor=4",
            "model.rope_original_max_len=256",
            "model.max_seq_len=1024",
            "data.seq_len=1024",
        ],
    )
    assert RopeScaling.from_config(cfg.model) == yarn(4.0, original=256)
    for method in ("linear", "ntk"):
        model = ModelConfig(rope_scaling=method, rope_scaling_factor=8.0)
        assert RopeScaling.from_config(model).factor == 8.0
    assert RopeScaling.from_config(ModelConfig()) == RopeScaling()


def test_init_from_accepts_a_model_trained_without_scaling():
    base = ModelConfig()
    extended = dataclasses.replace(
        base,
        max_seq_len=1024,
        rope_scaling="yarn",
        rope_scaling_factor=4.0,
        rope_original_max_len=256,
        rope_yarn_beta_fast=16.0,
        rope_yarn_beta_slow=2.0,
        rope_theta=50_000.0,
    )
    _refuse_other_model(base, extended, "base")  # no error: same parameter shapes
    with pytest.raises(InputError, match=r"model\.d_model: 256 -> 128"):
        _refuse_other_model(base, dataclasses.replace(extended, d_model=128), "base")


def test_frequencies_unchanged_for_the_unscaled_path():
    """Scaling support must not move the unscaled numerics (golden losses rely on them)."""
    got = np.asarray(scaled_frequencies(H, THETA))
    expected = 1.0 / (THETA ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
    np.testing.assert_array_equal(got, np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(rope_frequencies(H, THETA)), got)
