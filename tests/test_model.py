"""Whole-model properties of the Llama decoder on the `tiny` preset.

Causality by gradient (no logit depends on a later token or another packed document),
packed == unpacked logits per document, scan == loop and every remat policy giving the
same loss and gradients, preset parameter counts from shapes alone, and a bfloat16
compute dtype that still returns float32 logits.
"""

import dataclasses
import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.config import ModelConfig
from jaxlm.models import count_params, transformer
from jaxlm.models.params import abstract_model
from jaxlm.presets import PRESETS, get_preset
from jaxlm.training.steps import forward, loss_sums

CFG = get_preset("tiny")
GRAPHDEF, _ = abstract_model(CFG)
# The paths tiny leaves out: QK-norm and a head tied to the embedding table.
QK_NORM_TIED = dataclasses.replace(CFG, qk_norm=True, tie_embeddings=True)
T = 20
DOC_LENGTHS = (6, 9, 3)  # packed into one row of T, followed by 2 padding tokens


def packed_row(lengths=DOC_LENGTHS, seq_len=T, seed=0) -> dict[str, np.ndarray]:
    """One row of the batch schema (jaxlm.data.packing): `lengths` documents, then padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (1, seq_len)).astype(np.int32)
    segment_ids = np.zeros((1, seq_len), np.int32)
    positions = np.zeros((1, seq_len), np.int32)
    start = 0
    for i, n in enumerate(lengths):
        segment_ids[0, start : start + n] = i + 1
        positions[0, start : start + n] = np.arange(n)
        start += n
    targets = np.roll(tokens, -1, axis=1)
    last = np.roll(segment_ids, -1, axis=1) != segment_ids
    last[:, -1] = True
    loss_mask = ((segment_ids != 0) & ~last).astype(np.int32)
    return dict(
        tokens=tokens,
        targets=targets,
        loss_mask=loss_mask,
        segment_ids=segment_ids,
        positions=positions,
    )


def random_params(cfg: ModelConfig, seed: int = 0):
    """Parameters with O(1) activations and logits, and norm scales that are not 1.

    The default init (std 0.02) makes attention almost uniform, which would let a
    wrong position or mask hide below 1e-4; fan-in scaling makes attention peaked.
    """
    _, abstract = abstract_model(cfg)
    rng = np.random.default_rng(seed)
    D, F, NH = cfg.d_model, cfg.resolved_d_ff, cfg.n_heads * cfg.resolved_head_dim
    fan_in = {"embed": 1, "wo": NH, "w_down": F}

    def fill(path, var):
        if "norm" in var.get_metadata()["logical_axes"]:
            value = 1.0 + 0.2 * rng.standard_normal(var.shape)
        else:
            value = rng.standard_normal(var.shape) / np.sqrt(fan_in.get(path[-1].key, D))
        return var.replace(jnp.asarray(value, jnp.float32))

    return jax.tree_util.tree_map_with_path(
        fill, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


@functools.partial(jax.jit, static_argnums=0)
def model_logits(graphdef, params, batch):
    return forward(graphdef, params, batch)


@functools.partial(jax.jit, static_argnums=0)
def default_call(graphdef, params, tokens_BT):
    """`model(tokens)` with the model's own defaults for positions and segment ids."""
    return nnx.merge(graphdef, params)(tokens_BT)


def logits_with_input_perturbation(params, delta_BTD, batch):
    """The real model's logits with `delta` added to the embedded tokens.

    `Transformer.__call__` embeds the tokens and hands them to
    `run_layers_with_stats`; wrapping that function lets gradients be taken with
    respect to the embedded input.
    """
    run_layers = transformer.run_layers_with_stats

    def perturbed(cfg, layers, x_BTD, *args, **kwargs):
        return run_layers(cfg, layers, x_BTD + delta_BTD.astype(x_BTD.dtype), *args, **kwargs)

    with mock.patch.object(transformer, "run_layers_with_stats", perturbed):
        return forward(GRAPHDEF, params, batch)


def test_causality_and_document_isolation_by_gradient(params):
    # Row 0 packs three documents and padding; row 1 is a single document.
    row0, row1 = packed_row(seed=1), packed_row(lengths=(T,), seed=2)
    batch = {k: jnp.asarray(np.concatenate([row0[k], row1[k]])) for k in row0}
    segs = np.concatenate([row0["segment_ids"], row1["segment_ids"]])
    B = segs.shape[0]
    w_V = jnp.asarray(np.random.default_rng(3).standard_normal(CFG.vocab_size), jnp.float32)

    def projected_logits(delta_BTD):
        logits = logits_with_input_perturbation(params, delta_BTD, batch)
        return logits @ w_V, logits

    zeros = jnp.zeros((B, T, CFG.d_model), jnp.float32)
    jac, logits = jax.jit(jax.jacrev(projected_logits, has_aux=True))(zeros)
    # The wrapper is the model: with no perturbation it gives the plain logits.
    np.testing.assert_allclose(logits, model_logits(GRAPHDEF, params, batch), atol=1e-6, rtol=0)
    jac = np.asarray(jac)  # [B, T, B, T, D]
    influence = np.abs(jac).max(axis=-1)  # [B, T, B, T]: does input (b', s) move logit (b, t)?

    for b in range(B):
        for t in range(T):
            visible = np.zeros((B, T), bool)
            visible[b, : t + 1] = segs[b, : t + 1] == segs[b, t]
            # Exactly zero, not small: the future, other documents and other rows.
            assert np.all(influence[b, t][~visible] == 0.0), (b, t)
            # And the test can see influence where there should be some.
            assert np.all(influence[b, t][visible] > 0.0), (b, t)


@pytest.mark.parametrize("cfg", [CFG, QK_NORM_TIED], ids=["tiny", "qk_norm_tied"])
def test_packed_equals_each_document_alone(cfg):
    graphdef, _ = abstract_model(cfg)
    params = random_params(cfg)
    row = {k: jnp.asarray(v) for k, v in packed_row().items()}
    packed = np.asarray(model_logits(graphdef, params, row))
    start = 0
    for n in DOC_LENGTHS:
        # Default positions (0..n-1) and a single segment: the document run on its own.
        alone = default_call(graphdef, params, row["tokens"][:, start : start + n])
        np.testing.assert_allclose(packed[:, start : start + n], alone, atol=1e-4, rtol=0)
        start += n
    # The comparison has power: without restarting positions at each document (or
    # without segment ids) the packed logits would be far off.
    for key, value in [("positions", jnp.arange(T)[None]), ("segment_ids", jnp.ones((1, T)))]:
        wrong = model_logits(graphdef, params, {**row, key: value.astype(jnp.int32)})
        assert np.abs(np.asarray(wrong) - packed)[:, DOC_LENGTHS[0] :].max() > 1e-2


def _loss_and_grads(cfg: ModelConfig, params, batch):
    graphdef, _ = abstract_model(cfg)

    def mean_nll(p):
        sums = loss_sums(graphdef, p, batch)
        return sums.nll / sums.num_tokens

    return jax.jit(jax.value_and_grad(mean_nll))(params)


@pytest.fixture(scope="module")
def packed_batch():
    rows = [packed_row(seed=s) for s in range(2)]
    return {k: jnp.asarray(np.concatenate([r[k] for r in rows])) for k in rows[0]}


@pytest.fixture(scope="module")
def reference_loss_and_grads(params, packed_batch):
    cfg = dataclasses.replace(CFG, scan_layers=True, remat="none")
    return _loss_and_grads(cfg, params, packed_batch)


@pytest.mark.parametrize(
    ("scan_layers", "remat"), [(False, "none"), (True, "full"), (True, "dots")]
)
def test_scan_loop_and_remat_agree(
    params, packed_batch, reference_loss_and_grads, scan_layers, remat
):
    cfg = dataclasses.replace(CFG, scan_layers=scan_layers, remat=remat)
    loss, grads = _loss_and_grads(cfg, params, packed_batch)
    ref_loss, ref_grads = reference_loss_and_grads
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    flat, ref_flat = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat)
    for g, ref in zip(flat, ref_flat, strict=True):
        assert g.shape == ref.shape
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-7)


def test_auto_layer_loop_unrolls_shallow_models_on_cpu_only():
    shallow = dataclasses.replace(CFG, scan_layers="auto", n_layers=transformer.UNROLL_ON_CPU_UP_TO)
    deep = dataclasses.replace(shallow, n_layers=transformer.UNROLL_ON_CPU_UP_TO + 1)
    assert jax.default_backend() == "cpu"
    assert not transformer.scans_layers(shallow)
    assert transformer.scans_layers(deep)
    assert transformer.scans_layers(dataclasses.replace(shallow, scan_layers=True))
    assert not transformer.scans_layers(dataclasses.replace(deep, scan_layers=False))
    with mock.patch.object(jax, "default_backend", return_value="gpu"):
        assert transformer.scans_layers(shallow)
    # what actually runs: the scanned step has a while loop, the unrolled one none
    tokens = jnp.zeros((1, 8), jnp.int32)
    for cfg, loops in (
        (dataclasses.replace(CFG, scan_layers="auto"), False),
        (dataclasses.replace(CFG, scan_layers=True), True),
    ):
        model = nnx.eval_shape(lambda cfg=cfg: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        hlo = jax.jit(lambda s, g=graphdef: nnx.merge(g, s)(tokens)).lower(state).as_text()
        assert ("stablehlo.while" in hlo) == loops, cfg.scan_layers


def closed_form_param_count(c: ModelConfig) -> int:
    """Parameters of a Llama decoder written out from the config fields."""
    D, V, L, F = c.d_model, c.vocab_size, c.n_layers, c.resolved_d_ff
    N, K, H = c.n_heads, c.n_kv_heads, c.resolved_head_dim
    embedding = V * D * (1 if c.tie_embeddings else 2)  # input table (+ untied head)
    attn = D * N * H + 2 * D * K * H + N * H * D  # q, k, v, o
    mlp = 3 * D * F  # gate, up, down
    if c.moe_experts:  # router and its bias, routed experts, shared experts
        E, Fe = c.moe_experts, c.resolved_moe_d_ff
        mlp = D * E + E + 3 * D * Fe * (E + c.moe_shared_experts)
    norms = 2 * D + (2 * H if c.qk_norm else 0)  # attn_norm, mlp_norm (+ q_norm, k_norm)
    return embedding + L * (attn + mlp + norms) + D  # + final_norm


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("minimind-26m", 25_829_888),  # MiniMind2-small reports 25.83M
        ("minimind-moe-145m", 145_029_792),  # MiniMind2-MoE reports 145M
        ("1b", 1_235_814_400),  # Llama-3.2-1B
        ("7b", 6_738_415_616),  # Llama-2-7B
        ("tiny", closed_form_param_count(PRESETS["tiny"])),
        ("125m", closed_form_param_count(PRESETS["125m"])),
    ],
)
def test_preset_parameter_counts(name, expected):
    cfg = get_preset(name)
    assert count_params(cfg) == expected
    assert count_params(cfg) == closed_form_param_count(cfg)
    assert count_params(cfg, include_embedding=False) == expected - cfg.vocab_size * cfg.d_model


def test_closed_form_covers_qk_norm_tied_and_derived_ffn_width():
    cfg = dataclasses.replace(CFG, qk_norm=True, tie_embeddings=True, d_ff=0)
    assert cfg.resolved_d_ff == 128  # 8/3 * 48 = 128, already a multiple of 64
    assert count_params(cfg) == closed_form_param_count(cfg)
    # The tiny numbers, spelled out once: 320*48*2 + 3*(4*48*12*2 + 2*48*2*12 + 3*48*88 + 96) + 48
    assert count_params(CFG) == 89_808


def test_bf16_compute_returns_f32_logits_close_to_f32(params, packed_batch):
    """bf16 keeps 8 significant bits: one rounding is off by up to 2**-9 ~ 2e-3.

    The residual stream and matmuls of 3 layers in bf16 put the worst logit a few bf16
    ulps (2**-8 of the logit scale) away from float32: about 0.9% of max |logit| here,
    bounded at 2% (~5 ulps). The loss averages over tokens and their errors largely
    cancel (about 1e-4 relative here), bounded at 2e-3. A real error (a lost cast to
    float32 in the norm or softmax, a dropped scale) moves both by far more.
    """
    bf16_graphdef, _ = abstract_model(dataclasses.replace(CFG, compute_dtype="bfloat16"))

    @jax.jit
    def logits_and_losses(p, batch):
        out = []
        for graphdef in (GRAPHDEF, bf16_graphdef):
            sums = loss_sums(graphdef, p, batch)
            out.append((forward(graphdef, p, batch), sums.nll / sums.num_tokens))
        return out

    (f32, loss32), (b16, loss16) = logits_and_losses(params, packed_batch)
    assert b16.dtype == jnp.float32 and f32.dtype == jnp.float32
    assert np.isfinite(float(loss16))
    scale = float(jnp.abs(f32).max())
    err = float(jnp.abs(b16 - f32).max())
    assert scale > 1.0
    assert err <= 0.02 * scale
    # bf16 really was used: float32 everywhere would agree to ~1e-6.
    assert err > 1e-4 * scale
    assert abs(float(loss16) - float(loss32)) <= 2e-3 * float(loss32)
