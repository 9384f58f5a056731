"""`jaxlm convert --from-hf` / `--to-hf` for the mixtures of experts Qwen3-MoE and Mixtral.

For each tiny random transformers MoE model (tests/helpers/hf_models.py MOE_CASES:
Qwen3-MoE with renormalised top-2 weights, Qwen3-MoE with raw top-3 probabilities and
tied embeddings, Qwen3-MoE with dense and MoE layers in turn (decoder_sparse_step 2),
Mixtral), saved with save_pretrained (per-expert tensors) and
imported through the command line:

- the routing is exercised (every expert chosen, top-k probabilities far from
  uniform, no near-tie at the k-th place that rounding could flip), and jaxlm's fp32
  logits equal transformers' within 1e-4 (test_hf_import.py's tolerance), packed
  documents included;
- `--to-hf` of the import writes save_pretrained's tensors again, bitwise, which
  `AutoModelForCausalLM.from_pretrained` loads as the same class with the same logits;
- the fused layout of transformers 5.x's modules (a raw state dict) imports to the
  same params, and an import onto a mesh that splits the experts reads each shard's.

A jaxlm-native random MoE model exports as Qwen3-MoE (QK-norm, biases, raw top-k) or
Mixtral (tied) with its logits. Refused with the key named: dense layers in Qwen3-MoE that
jaxlm's groups cannot place (a decoder_sparse_step not dividing the layers,
mlp_only_layers), router jitter, Qwen2-MoE's gated shared
expert, MoE keys on a dense family; on export shared experts, sigmoid scores, a
capacity factor, a non-zero router bias, and what neither family computes.
"""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from helpers import hf_models

from jaxlm.checkpointing.params_io import load_params, save_params
from jaxlm.cli import main
from jaxlm.config import Config, DataConfig, ModelConfig
from jaxlm.errors import InputError
from jaxlm.hf.config_map import hf_config_from_model, model_config_from_hf
from jaxlm.hf.export_hf import export_to_hf
from jaxlm.hf.import_hf import check_tensors, import_params
from jaxlm.hf.safetensors_io import SafetensorsCheckpoint
from jaxlm.inference.decode import Generator
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.sharding import make_mesh

TOLERANCE = 1e-4  # as tests/test_hf_import.py
CASES = list(hf_models.MOE_CASES)
ARCHITECTURE = {
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen3_moe_unnormed": "Qwen3MoeForCausalLM",
    "qwen3_moe_sparse_step": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}


@pytest.fixture(scope="module", params=CASES)
def converted(request, tmp_path_factory):
    """(case, root, transformers model, jaxlm Config, graphdef, params) per case."""
    case = request.param
    root = tmp_path_factory.mktemp(case)
    reference = hf_models.build_moe(case)
    reference.save_pretrained(root / "hf", safe_serialization=True)
    assert (
        main(["convert", "--from-hf", str(root / "hf"), str(root / "jaxlm"), "--no-tokenizer"]) == 0
    )
    params, cfg = load_params(root / "jaxlm")
    graphdef, _ = abstract_model(cfg.model)
    return case, root, reference, cfg, graphdef, params


@pytest.fixture(scope="module")
def batch():
    """Two plain rows and one packed row (documents of 13 and 16 tokens, then padding)."""
    rng = np.random.default_rng(1)
    T = 40
    plain = rng.integers(0, hf_models.VOCAB, (2, T))
    doc_a, doc_b = rng.integers(0, hf_models.VOCAB, 13), rng.integers(0, hf_models.VOCAB, 16)
    pad = T - 29
    packed = np.concatenate([doc_a, doc_b, np.zeros(pad, int)])
    tokens = np.concatenate([plain, packed[None]]).astype(np.int32)
    segment_ids = np.ones((3, T), np.int32)
    segment_ids[2] = [1] * 13 + [2] * 16 + [0] * pad
    positions = np.broadcast_to(np.arange(T, dtype=np.int32), (3, T)).copy()
    positions[2] = [*range(13), *range(16), *range(pad)]
    return tokens, positions, segment_ids, doc_a, doc_b


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _logits(cfg, params, tokens, positions=None, segment_ids=None):
    graphdef, _ = abstract_model(cfg)

    def forward(p, t, pos, seg):
        return nnx.merge(graphdef, p)(t, positions=pos, segment_ids=seg)

    return np.asarray(jax.jit(forward)(params, jnp.asarray(tokens), positions, segment_ids))


@pytest.fixture(scope="module")
def jaxlm_logits(converted, batch):
    _, _, _, cfg, _, params = converted
    tokens, positions, segment_ids, _, _ = batch
    return _logits(cfg.model, params, tokens, positions, segment_ids)


def test_config_maps_the_routing(converted):
    case, _, reference, cfg, _, _ = converted
    hf, model = reference.config, cfg.model
    assert model.moe_experts == hf.num_local_experts == hf_models.E
    assert model.moe_top_k == hf.num_experts_per_tok
    assert model.moe_norm_topk == (case != "qwen3_moe_unnormed")
    assert model.moe_d_ff == hf_models.F_EXPERT
    assert (model.moe_score, model.moe_capacity_factor, model.moe_shared_experts) == (
        "softmax",
        0.0,
        0,
    )
    assert model.qk_norm == case.startswith("qwen3")
    step = getattr(hf, "decoder_sparse_step", 1)  # Mixtral has none: every layer
    assert model.moe_every == step and model.d_ff == hf.intermediate_size
    assert model.moe_layers == [i for i in range(hf.num_hidden_layers) if (i + 1) % step == 0]
    # The training-only fields keep jaxlm's defaults (config_map's docstring).
    assert model.moe_balance_weight == ModelConfig.moe_balance_weight


def test_routing_is_exercised(converted, batch):
    """The comparison below means something: every expert gets tokens, the top-k
    probabilities are far from uniform, and no token's k-th and (k+1)-th experts are
    so close that float rounding could swap them between the two implementations."""
    case, _, reference, cfg, _, _ = converted
    K, E = cfg.model.moe_top_k, cfg.model.moe_experts
    with torch.no_grad():
        out = reference(torch.as_tensor(batch[0][:2], dtype=torch.long), output_router_logits=True)
    for layer, logits in enumerate(out.router_logits):
        probs = logits.float().softmax(-1)
        top = probs.topk(K + 1, dim=-1)
        chosen = torch.bincount(top.indices[:, :K].flatten(), minlength=E)
        assert (chosen > 0).all(), f"{case} layer {layer}: experts unused {chosen.tolist()}"
        assert top.values[:, 0].mean() > 2 / E, case  # far above uniform 1/E
        gap = (top.values[:, K - 1] - top.values[:, K]).min()
        assert gap > 1e-5, f"{case} layer {layer}: near-tie {gap:.2g}, pick another seed"


def test_logits_match_transformers(converted, batch, jaxlm_logits):
    case, _, reference, _, _, _ = converted
    theirs = _hf_logits(reference, batch[0][:2])
    assert np.abs(theirs).max() > 1.0  # not a degenerate near-zero model
    np.testing.assert_allclose(jaxlm_logits[:2], theirs, rtol=0, atol=TOLERANCE, err_msg=case)


def test_packed_documents_match_transformers_run_alone(converted, batch, jaxlm_logits):
    case, _, reference, _, _, _ = converted
    doc_a, doc_b = batch[3], batch[4]
    ours = jaxlm_logits[2]
    np.testing.assert_allclose(
        ours[:13], _hf_logits(reference, doc_a[None])[0], rtol=0, atol=TOLERANCE, err_msg=case
    )
    np.testing.assert_allclose(
        ours[13:29], _hf_logits(reference, doc_b[None])[0], rtol=0, atol=TOLERANCE, err_msg=case
    )


def test_the_renormalisation_is_what_matters(converted, batch, jaxlm_logits):
    """Flipping moe_norm_topk moves the logits far past the tolerance: the test above
    would catch a wrong mapping of norm_topk_prob."""
    case, _, _, cfg, _, params = converted
    flipped = dataclasses.replace(cfg.model, moe_norm_topk=not cfg.model.moe_norm_topk)
    other = _logits(flipped, params, batch[0][:2])
    assert np.abs(other - jaxlm_logits[:2]).max() > 100 * TOLERANCE, case


def test_export_writes_the_checkpoint_transformers_saved(converted, batch, jaxlm_logits):
    case, root, reference, _, _, _ = converted
    out = root / "back"
    assert main(["convert", "--to-hf", str(root / "jaxlm"), str(out), "--no-tokenizer"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE[case]]
    # The same tensors, names and layout as save_pretrained's, bitwise (fp32 both ways).
    original, exported = SafetensorsCheckpoint(root / "hf"), SafetensorsCheckpoint(out)
    skip = {"lm_head.weight"} if reference.config.tie_word_embeddings else set()
    assert set(exported.names()) == set(original.names()) - skip, case
    for name in exported.names():
        assert np.array_equal(exported.tensor(name), original.tensor(name)), name
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded).__name__ == ARCHITECTURE[case]
    assert loaded.config.num_experts_per_tok == reference.config.num_experts_per_tok
    assert getattr(loaded.config, "norm_topk_prob", True) == getattr(
        reference.config, "norm_topk_prob", True
    )
    np.testing.assert_allclose(
        _hf_logits(loaded, batch[0][:2]), jaxlm_logits[:2], rtol=0, atol=TOLERANCE, err_msg=case
    )


def test_fused_layout_imports_the_same_params(converted, tmp_path):
    """A checkpoint holding transformers 5.x's fused expert tensors (its modules' state
    dict: mlp.experts.gate_up_proj [E, 2F, D], down_proj [E, D, F])."""
    from safetensors.torch import save_file

    case, root, reference, cfg, _, params = converted
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_bytes((root / "hf" / "config.json").read_bytes())
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if reference.config.tie_word_embeddings:
        del state["lm_head.weight"]
    first_moe = cfg.model.moe_layers[0]
    assert f"model.layers.{first_moe}.mlp.experts.gate_up_proj" in state, case
    save_file(state, fused / "model.safetensors", metadata={"format": "pt"})
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    back = import_params(fused, cfg.model, mesh)
    for (path, a), (_, b) in zip(nnx.to_flat_state(params), nnx.to_flat_state(back), strict=True):
        assert np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value())), (case, path)


# One case each where the code path is the same for all.
@pytest.mark.parametrize("converted", ["qwen3_moe"], indirect=True)
def test_sharded_import_splits_the_experts(converted):
    _, root, _, cfg, _, params = converted
    mesh = make_mesh((1, 4, 2))
    imported = import_params(root / "hf", cfg.model, mesh)
    expected = dict(nnx.to_flat_state(param_shardings(abstract_model(cfg.model)[1], mesh)))
    for path, var in nnx.to_flat_state(imported):
        assert var.get_value().sharding == expected[path].get_value(), path
    gate = imported["layers"]["moe_gate"].get_value()  # [L, E, D, F], experts over fsdp
    assert gate.addressable_shards[0].data.shape[1] == hf_models.E // 4
    router = imported["layers"]["router"].get_value()
    assert router.dtype == jnp.float32
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(imported), strict=True)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in leaves)


@pytest.mark.parametrize("converted", ["mixtral"], indirect=True)
def test_bfloat16_import_keeps_the_router_float32(converted, tmp_path):
    _, root, _, _, _, _ = converted
    out = tmp_path / "bf16"
    args = ["convert", "--from-hf", str(root / "hf"), str(out), "--no-tokenizer"]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    params, cfg = load_params(out)
    assert cfg.model.param_dtype == "bfloat16"
    layers = params["layers"]
    assert layers["moe_gate"].get_value().dtype == jnp.bfloat16
    assert layers["router"].get_value().dtype == jnp.float32
    assert layers["router_bias"].get_value().dtype == jnp.float32


@pytest.mark.parametrize("converted", ["qwen3_moe"], indirect=True)
def test_greedy_generation_matches_transformers(converted):
    case, _, reference, cfg, graphdef, params = converted
    prompt = [1, *np.random.default_rng(3).integers(6, hf_models.VOCAB, 7).tolist()]
    new = 16
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=2,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    theirs = out[: out.index(2)] if 2 in out else out
    ours = Generator(cfg.model, graphdef, params).generate(
        [prompt], max_new_tokens=new, stop_ids=(2,)
    )
    assert ours.tokens[0] == theirs, case
    assert len(set(theirs)) > 2, f"{case}: a degenerate model repeats one token: {theirs}"


# ------------------------------------------------------------- jaxlm-native exports

NATIVE = {
    # QK-norm -> Qwen3-MoE; with q/k/v biases (o_proj's written as zeros), raw top-k.
    "qwen3_moe": dict(qk_norm=True, attention_bias=True, moe_norm_topk=False, moe_top_k=3),
    # No QK-norm, renormalised -> Mixtral.
    "mixtral": dict(tie_embeddings=True),
}


def _native_model(**overrides) -> ModelConfig:
    fields = dict(
        vocab_size=hf_models.VOCAB,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        tie_embeddings=False,
        moe_experts=hf_models.E,
        moe_top_k=2,
        moe_d_ff=hf_models.F_EXPERT,
    )
    return ModelConfig(**{**fields, **overrides})


def _native_params(model: ModelConfig) -> nnx.State:
    """Every weight drawn (norm scales around 1, biases around 0, a spread router);
    router_bias stays zero, as transformers has none."""
    params = init_params(model, jax.random.key(0))
    flat = nnx.to_flat_state(params)
    keys = jax.random.split(jax.random.key(1), len(flat))
    for key, (path, var) in zip(keys, flat, strict=True):
        name = path[-1]
        if name == "router_bias":
            continue
        noise = jax.random.normal(key, var.get_value().shape, var.get_value().dtype)
        if name.endswith("norm"):
            var.set_value(1.0 + 0.2 * noise)
        elif name == "router":
            var.set_value(0.4 * noise)
        else:
            var.set_value(0.2 * noise)
    return params


@pytest.mark.parametrize("family", list(NATIVE))
def test_native_moe_exports_with_its_logits(family, tmp_path):
    model = _native_model(**NATIVE[family])
    cfg = Config(model=model, data=DataConfig(seq_len=64))
    params = _native_params(model)
    save_params(tmp_path / "jaxlm", params, cfg)
    out = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(tmp_path / "jaxlm"), str(out), "--no-tokenizer"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.num_local_experts == hf_models.E
    tokens = np.random.default_rng(0).integers(0, hf_models.VOCAB, (2, 40)).astype(np.int32)
    theirs = _hf_logits(loaded, tokens)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(
        _logits(model, params, tokens), theirs, rtol=0, atol=TOLERANCE, err_msg=family
    )
    # ... and it imports back to the same model.
    assert main(["convert", "--from-hf", str(out), str(tmp_path / "back"), "--no-tokenizer"]) == 0
    back, back_cfg = load_params(tmp_path / "back")
    if family == "mixtral":
        # Mixtral has one intermediate_size, the experts'; the dense d_ff, which a model
        # without shared experts never uses, comes back as that.
        assert back_cfg.model.d_ff == hf_models.F_EXPERT
        back_cfg = dataclasses.replace(
            back_cfg, model=dataclasses.replace(back_cfg.model, d_ff=model.d_ff)
        )
    assert back_cfg.model == model
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------ refusals


def _hf_config(case: str, **changes) -> dict:
    config_cls, _, overrides = hf_models.MOE_CASES[case]
    data = getattr(transformers, config_cls)(
        vocab_size=hf_models.VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        head_dim=16,
        **overrides,
    ).to_diff_dict()  # what save_pretrained writes
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("case", "changes", "named"),
    [
        ("qwen3_moe", {"decoder_sparse_step": 3}, "decoder_sparse_step=3 does not divide"),
        ("qwen3_moe", {"mlp_only_layers": [0]}, "mlp_only_layers"),
        ("qwen3_moe", {"use_sliding_window": True}, "use_sliding_window"),
        ("qwen3_moe", {"num_experts": 4}, "num_experts and num_local_experts disagree"),
        ("qwen3_moe", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ("qwen3_moe", {"shared_expert_intermediate_size": 64}, "shared_expert_intermediate_size"),
        ("qwen3_moe", {"model_type": "qwen2_moe"}, "shared_expert_gate"),
        ("mixtral", {"router_jitter_noise": 0.01}, "router_jitter_noise"),
        ("mixtral", {"model_type": "mistral"}, "is not supported by jaxlm's importer"),
    ],
)
def test_refused_configs_name_the_key(case, changes, named):
    with pytest.raises(InputError, match=named) as error:
        model_config_from_hf(_hf_config(case, **changes), "some/config.json")
    assert "some/config.json" in str(error.value)


def test_the_aux_loss_coefficient_is_noted_not_mapped():
    imported = model_config_from_hf(_hf_config("qwen3_moe", router_aux_loss_coef=0.5), "c")
    assert imported.model.moe_balance_weight == ModelConfig.moe_balance_weight
    assert any("router_aux_loss_coef=0.5 is not imported" in note for note in imported.notes)


def test_mixtral_sliding_window_clamps_the_length_like_mistral():
    imported = model_config_from_hf(
        _hf_config("mixtral", sliding_window=64, max_position_embeddings=256), "config.json"
    )
    assert imported.model.max_seq_len == 64
    assert any("sliding_window=64" in note for note in imported.notes)


@pytest.mark.parametrize("converted", ["mixtral"], indirect=True)
def test_missing_or_extra_expert_tensors_are_named(converted, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, root, _, cfg, _, _ = converted
    tensors = load_file(root / "hf" / "model.safetensors")
    missing = "model.layers.1.block_sparse_moe.experts.5.w3.weight"
    extra = "model.layers.1.block_sparse_moe.experts.8.w3.weight"
    for name, changed in (
        (missing, {k: v for k, v in tensors.items() if k != missing}),
        (extra, {**tensors, extra: tensors[missing]}),
    ):
        (tmp_path / name).mkdir()
        save_file(changed, tmp_path / name / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(InputError, match=re.escape(repr(name))):
            check_tensors(SafetensorsCheckpoint(tmp_path / name), cfg.model, "mixtral")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(qk_norm=True, moe_shared_experts=1), "moe_shared_experts"),
        (dict(qk_norm=True, moe_score="sigmoid"), "moe_score"),
        (dict(qk_norm=True, moe_capacity_factor=1.25), "moe_capacity_factor"),
        (dict(moe_norm_topk=False), "moe_norm_topk=false needs model.qk_norm"),
        (dict(moe_every=2), "moe_every=2 needs model.qk_norm"),
        (
            dict(attention_bias=True),
            "attention_bias=true with mixture of experts needs model.qk_norm",
        ),
    ],
)
def test_unrepresentable_moe_models_are_refused(overrides, named):
    with pytest.raises(InputError, match=named):
        hf_config_from_model(
            _native_model(**overrides), bos_id=1, eos_id=2, pad_id=0, dtype="float32"
        )


def test_a_nonzero_router_bias_is_refused_before_writing(tmp_path):
    model = _native_model(qk_norm=True)
    params = _native_params(model)
    bias = params["layers"]["router_bias"]
    bias.set_value(bias.get_value().at[1, 3].set(0.05))
    with pytest.raises(InputError, match="router_bias is not zero"):
        export_to_hf(params, Config(model=model), tmp_path / "hf", tokenizer=None)
    assert not (tmp_path / "hf").exists()
