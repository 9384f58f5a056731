"""GPU-only checks: cuDNN attention and bf16 training agree with the references.

Skipped where JAX has no GPU (CI's CPU machines). On a GPU host run:
    JAX_PLATFORMS=cuda,cpu pytest -q tests/test_gpu.py
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import OptimConfig
from jaxlm.models.attention import attention
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import create_train_state
from jaxlm.training.steps import jit_train_step, make_lm_step

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")


def packed_segments(B: int, T: int, rng) -> np.ndarray:
    """Rows of 1-4 documents followed by some padding (segment 0)."""
    seg = np.zeros((B, T), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(8, T - 8), size=rng.integers(0, 4), replace=False))
        end = T - rng.integers(0, 16)
        bounds = [0, *cuts.tolist(), end]
        for i in range(len(bounds) - 1):
            seg[b, bounds[i] : bounds[i + 1]] = i + 1
    return seg


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_cudnn_attention_matches_naive(dtype):
    rng = np.random.default_rng(0)
    B, T, N, K, H = 4, 256, 8, 2, 64
    q = jnp.asarray(rng.standard_normal((B, T, N, H)), dtype)
    k = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
    v = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
    seg = jnp.asarray(packed_segments(B, T, rng))
    real = (seg != 0)[:, :, None, None]

    def run(impl):
        def loss(q, k, v):
            out = attention(q, k, v, seg, implementation=impl).astype(jnp.float32)
            return jnp.sum(jnp.where(real, out, 0.0) ** 2), out

        (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    ref_out, ref_grads = run("naive")
    for impl in ("xla", "cudnn"):
        out, grads = run(impl)
        # bf16 has an 8-bit mantissa: compare at its resolution, on real tokens only.
        np.testing.assert_allclose(
            np.where(real, out, 0), np.where(real, ref_out, 0), atol=2e-2, rtol=2e-2
        )
        for g, r in zip(grads, ref_grads, strict=True):
            g32, r32 = np.asarray(g, np.float32), np.asarray(r, np.float32)
            scale = np.abs(r32).max()
            assert np.abs(g32 - r32).max() <= 3e-2 * scale, impl


def test_bf16_cudnn_training_tracks_fp32():
    # cuDNN needs a head dim that is a multiple of 8: widen tiny to head_dim 16.
    base = dataclasses.replace(get_preset("tiny"), d_model=64)
    rng = np.random.default_rng(0)
    B, T = 8, 64
    tokens = np.tile(rng.integers(4, base.vocab_size, (B, 9)), (1, 8))[:, : T + 1].astype(np.int32)
    batch = {
        "tokens": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((B, T), np.int32),
        "segment_ids": np.ones((B, T), np.int32),
        "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)),
    }
    optim_cfg = OptimConfig(lr=3e-3, warmup_steps=2)
    losses = {}
    for name, overrides in {
        "fp32": {},
        "bf16": {"compute_dtype": "bfloat16", "attention_impl": "cudnn"},
    }.items():
        cfg = dataclasses.replace(base, **overrides)
        optimizer = make_optimizer(optim_cfg, 30)
        mesh = make_mesh((1, 1, 1), jax.devices()[:1])
        state, shardings = create_train_state(cfg, optimizer, mesh, jax.random.key(0))
        graphdef, _ = abstract_model(cfg)
        step = jit_train_step(
            make_lm_step(graphdef, optimizer, learning_rate_schedule(optim_cfg, 30)),
            shardings,
            mesh,
        )
        out = []
        with jax.set_mesh(mesh):
            gb = host_batch_to_global(batch, mesh)
            for _ in range(30):
                state, m = step(state, gb)
                out.append(float(m["loss"]))
        losses[name] = out
    assert all(np.isfinite(losses["bf16"]))
    assert losses["bf16"][-1] < 0.5 * losses["bf16"][0]
    # bf16 activations drift from fp32, but by much less than the loss moved
    np.testing.assert_allclose(losses["bf16"][:5], losses["fp32"][:5], rtol=2e-2)
