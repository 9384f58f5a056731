"""RoPE scalings that reproduce transformers: yarn_hf (rope_type "yarn") and dynamic_ntk
(rope_type "dynamic"), through tables, imported models, generation and export.

- Tables: yarn_hf's inverse frequencies equal transformers' `_compute_yarn_parameters`
  within 2 float32 ulps for factors 2, 4, 8, head dims 16, 64, 128, three theta /
  original-length pairs, truncate on and off; its attention factor equals
  transformers' exactly for every variant (derived, mscale alone, mscale /
  mscale_all_dim, explicit). dynamic_ntk's equal transformers' rotary embedding after
  a call of length T (below, at and above the original length, up to 100k), factors
  1, 1.1, 2, 4, head dims 16 and 80, within 3 ulps. The cos and sin tables (read from
  apply_rope on unit vectors) equal transformers' within 4 ulps of the largest angle.
  jaxlm's own `yarn` gives other frequencies, and truncate changes them.
- Models: tiny random transformers models (Qwen2 with YaRN, Llama with YaRN,
  truncate=false and DeepSeek's mscale pair, Llama with dynamic NTK) imported with
  `jaxlm convert --from-hf` give transformers' float32 logits at lengths past
  original_max_position_embeddings (YaRN) and past max_position_embeddings (dynamic),
  and greedy generation of a batch whose prompts cross the original length makes the
  same tokens as transformers' generate (left-padded there, right-padded in jaxlm).
- Export: `export_to_hf` writes the imported rope parameters back (transformers'
  defaults made explicit), transformers loads the export with the same logits, and
  importing it again gives the same config.
- Config: bad values are one-line ConfigErrors naming the key; bad HF values are
  InputErrors naming the file and key.

Measured max abs logit differences against transformers (float32, 2-core CPU; the
fixtures' models on the test's seed-0 tokens; logits up to ~8):
llama_yarn_mscale at T=160 1.8e-5, llama_dynamic at T=80 1.5e-5, qwen2_yarn (slow) at
T=288 3.0e-5. That is the float32 noise of the whole forward, not of RoPE: the same
models without rope scaling differ as much (qwen2 at T=320 2.2e-5; with theta 500,
1.6e-4), hence TOLERANCE = 1e-4 as in test_hf_import. A wrong scaling is off by ~10:
jaxlm's paper `yarn` in place of yarn_hf 9-12, truncate=true instead of false 8.6-9.4,
mscale dropped 5.4-6.6, no scaling in place of dynamic 8.9-10 (three token draws each).
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from helpers import hf_models
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from jaxlm.checkpointing.params_io import load_params
from jaxlm.cli import main
from jaxlm.config import Config, ConfigError, apply_overrides
from jaxlm.errors import InputError
from jaxlm.hf.config_map import hf_config_from_model, model_config_from_hf
from jaxlm.hf.export_hf import export_to_hf
from jaxlm.hf.import_hf import read_hf_config
from jaxlm.inference.decode import Generator
from jaxlm.models.params import abstract_model
from jaxlm.models.rope import RopeScaling, apply_rope, scaled_frequencies
from jaxlm.models.rope_hf import (
    dynamic_ntk_frequencies,
    rotation_speeds,
    yarn_hf_band,
    yarn_hf_blend,
)

# The float32 noise floor of the whole forward, not of RoPE: the same models without
# rope scaling differ from transformers by as much (2.2e-5 at T=320, 1.6e-4 for theta
# 500); test_hf_import uses the same bound. See the module docstring for measurements.
TOLERANCE = 1e-4
THETA = 10_000.0

rope = jax.jit(apply_rope, static_argnums=(2, 3))

# ---- tables ------------------------------------------------------------------------


def _hf_config(head_dim, rope, theta=10_000.0, max_positions=4096):
    return transformers.LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters={**rope, "rope_theta": theta},
    )


def _imported_scaling(config) -> RopeScaling:
    """The RopeScaling jaxlm's importer makes of a transformers config."""
    data = json.loads(config.to_json_string())
    return RopeScaling.from_config(model_config_from_hf(data, "config.json").model)


@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_hf_frequencies_equal_transformers(truncate):
    checked = 0
    for head_dim in (16, 64, 128):
        for factor in (2.0, 4.0, 8.0):
            for theta, original in ((10_000.0, 4096), (1_000_000.0, 32_768), (500.0, 256)):
                rope = {
                    "rope_type": "yarn",
                    "factor": factor,
                    "original_max_position_embeddings": original,
                    "truncate": truncate,
                }
                config = _hf_config(head_dim, rope, theta, max_positions=int(original * factor))
                theirs, _ = ROPE_INIT_FUNCTIONS["yarn"](config)
                scaling = _imported_scaling(config)
                assert scaling.method == "yarn_hf" and scaling.truncate == truncate
                # theta ** (2i/H): jaxlm's is correctly rounded; torch's float32 pow is
                # within 1 ulp of it (which last bit depends on the CPU).
                speeds = rotation_speeds(head_dim, theta)
                exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
                torch_speeds = (theta**exponents).numpy()
                np.testing.assert_array_max_ulp(speeds, torch_speeds, maxulp=1)
                # From the same speeds, jaxlm's band and blend are transformers' bit for bit.
                low, high = yarn_hf_band(
                    head_dim, theta, original, scaling.beta_fast, scaling.beta_slow, truncate
                )
                blended = yarn_hf_blend(torch_speeds, factor, low, high)
                np.testing.assert_array_equal(blended, theirs.numpy())
                ours = np.asarray(scaled_frequencies(head_dim, theta, scaling))
                np.testing.assert_array_equal(ours, yarn_hf_blend(speeds, factor, low, high))
                checked += 1
    assert checked == 27


def _m(factor, mscale=1.0):
    return 0.1 * mscale * math.log(factor) + 1.0


# options -> the factor YaRN's paper / DeepSeek / the config says, for s > 1.
ATTENTION_VARIANTS = {
    "derived": ({}, _m),
    # transformers ignores mscale without mscale_all_dim.
    "mscale_alone": ({"mscale": 0.707}, _m),
    "mscale_pair": ({"mscale": 0.707, "mscale_all_dim": 1.0}, lambda s: _m(s, 0.707) / _m(s)),
    "mscale_equal": ({"mscale": 1.0, "mscale_all_dim": 1.0}, lambda s: 1.0),
    "explicit": ({"attention_factor": 1.25, "mscale": 2.0, "mscale_all_dim": 1.0}, lambda s: 1.25),
}


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_yarn_hf_attention_factor_equals_transformers(variant):
    options, expected = ATTENTION_VARIANTS[variant]
    for factor in (1.0, 2.0, 4.0, 8.0):
        rope = {
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": 4096,
            **options,
        }
        config = _hf_config(64, rope, max_positions=int(4096 * factor))
        _, theirs = ROPE_INIT_FUNCTIONS["yarn"](config)
        ours = _imported_scaling(config).attention_factor
        assert ours == theirs, (variant, factor)
        if factor > 1:
            assert ours == pytest.approx(expected(factor), rel=1e-12), (variant, factor)


def test_yarn_hf_differs_from_jaxlm_yarn_and_truncate_matters():
    """The two YaRNs are different functions, and truncate changes the table."""
    head_dim, theta, factor, original = 128, 10_000.0, 4.0, 4096
    common = dict(factor=factor, original_max_len=original)
    hf_truncated = np.asarray(
        scaled_frequencies(head_dim, theta, RopeScaling(method="yarn_hf", **common))
    )
    hf_exact = np.asarray(
        scaled_frequencies(head_dim, theta, RopeScaling(method="yarn_hf", truncate=False, **common))
    )
    paper = np.asarray(scaled_frequencies(head_dim, theta, RopeScaling(method="yarn", **common)))
    assert np.abs(hf_truncated / paper - 1).max() > 0.1
    assert np.abs(hf_truncated / hf_exact - 1).max() > 1e-3
    # Both agree outside the band: fastest pair kept, slowest interpolated by 1/s.
    plain = np.asarray(scaled_frequencies(head_dim, theta))
    np.testing.assert_allclose(hf_truncated[0], plain[0], rtol=1e-7)
    np.testing.assert_allclose(hf_truncated[-1], plain[-1] / factor, rtol=2e-7)


def _jaxlm_cos_sin(head_dim, theta, scaling, positions):
    """(cos, sin) * attention factor [T, H/2], read off apply_rope on unit vectors."""
    half = head_dim // 2
    T = len(positions)
    unit = jnp.concatenate([jnp.ones((1, T, 1, half)), jnp.zeros((1, T, 1, half))], axis=-1)
    rotated = np.asarray(rope(unit, jnp.asarray(positions)[None], theta, scaling))[0, :, 0]
    return rotated[:, :half], rotated[:, half:]


def _hf_cos_sin(config, positions):
    half = config.head_dim // 2
    embedding = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
    cos, sin = embedding(torch.zeros(1), torch.as_tensor(positions)[None])
    return cos[0, :, :half].numpy(), sin[0, :, :half].numpy()


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
        {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 64,
            "truncate": False,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
        },
        {"rope_type": "dynamic", "factor": 2.0},
    ],
    ids=["yarn", "yarn-mscale-exact-edges", "dynamic"],
)
def test_cos_sin_tables_equal_transformers(rope):
    head_dim, theta = 64, 10_000.0
    original = rope.get("original_max_position_embeddings", 128)
    config = _hf_config(head_dim, rope, theta, max_positions=int(original * rope["factor"]))
    if rope["rope_type"] == "dynamic":
        config = _hf_config(head_dim, rope, theta, max_positions=original)
    scaling = _imported_scaling(config)
    for length in (100, 300):  # dynamic: below, then beyond max_position_embeddings
        positions = np.arange(length)
        theirs = _hf_cos_sin(config, positions)
        ours = _jaxlm_cos_sin(head_dim, theta, scaling, positions)
        # Angles reach `length` rad, where one float32 ulp is spacing(length).
        atol = 4 * np.spacing(np.float32(length))
        for our, their in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(our, their, rtol=0, atol=atol)


DYNAMIC_FACTORS = (1.0, 1.1, 2.0, 4.0)


@pytest.mark.parametrize("head_dim", [16, 80])
def test_dynamic_ntk_frequencies_equal_transformers_at_each_length(head_dim):
    original = 32
    plain = np.asarray(scaled_frequencies(head_dim, THETA))
    configs = []
    for factor in DYNAMIC_FACTORS:
        config = _hf_config(head_dim, {"rope_type": "dynamic", "factor": factor}, THETA, original)
        scaling = _imported_scaling(config)
        assert (scaling.method, scaling.original_max_len, scaling.factor) == (
            "dynamic_ntk",
            original,
            factor,
        )
        configs.append(config)

    @jax.jit  # the length traced, as inside the model; one compilation for every factor
    def tables(length):
        return [
            dynamic_ntk_frequencies(head_dim, THETA, factor, original, length)
            for factor in DYNAMIC_FACTORS
        ]

    for length in (10, 32, 33, 100, 1000, 100_000):
        ours_by_factor = tables(jnp.int32(length))
        for factor, config, ours in zip(DYNAMIC_FACTORS, configs, ours_by_factor, strict=True):
            # A fresh module per call (transformers keeps a grown table across calls);
            # its length is the largest position + 1.
            embedding = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config)
            embedding(torch.zeros(1), torch.tensor([[length - 1]]))
            ours = np.asarray(ours)
            # Measured: at most 3 ulps apart (rope_hf._rational_power; XLA's own float32
            # pow is up to 10 ulps from torch's here).
            np.testing.assert_array_max_ulp(ours, embedding.inv_freq.numpy(), maxulp=3)
            grown = np.abs(ours / plain - 1).max() > 1e-3
            assert grown == (length > original), (factor, length)


# ---- imported models ---------------------------------------------------------------

# name -> (config class, model class, config overrides, sequence length for logits)
MODELS = {
    "qwen2_yarn": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 1024,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 256,
            },
        },
        288,
    ),
    "llama_yarn_mscale": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "num_key_value_heads": 2,
            "head_dim": 32,
            "max_position_embeddings": 1024,
            "rope_theta": 500.0,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 8.0,
                "original_max_position_embeddings": 128,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
                "truncate": False,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
            },
        },
        160,
    ),
    "llama_dynamic": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "num_key_value_heads": 2,
            "max_position_embeddings": 32,
            "rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
        },
        80,
    ),
}


def _reference(name):
    """A fresh transformers model (its dynamic RoPE state not yet grown)."""
    config_cls, model_cls, overrides, _ = MODELS[name]
    return hf_models.build_model(config_cls, model_cls, overrides)


@pytest.fixture(scope="module")
def import_case(tmp_path_factory):
    """name -> (name, root, jaxlm Config, graphdef, params), each model imported once."""
    done = {}

    def run(name):
        if name not in done:
            root = tmp_path_factory.mktemp(name)
            _reference(name).save_pretrained(root / "hf", safe_serialization=True)
            argv = ["convert", "--from-hf", str(root / "hf"), str(root / "jaxlm")]
            assert main([*argv, "--no-tokenizer"]) == 0
            params, cfg = load_params(root / "jaxlm")
            graphdef, _ = abstract_model(cfg.model)
            done[name] = name, root, cfg, graphdef, params
        return done[name]

    return run


# Qwen2 differs from Llama only in its biases, which test_hf_import covers; its YaRN
# (truncated edges, derived attention factor) runs with the slow tests, the Llama one
# with every yarn_hf option by default.
@pytest.fixture(
    params=[
        pytest.param("qwen2_yarn", marks=pytest.mark.slow),
        "llama_yarn_mscale",
        "llama_dynamic",
    ],
)
def imported(request, import_case):
    return import_case(request.param)


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _jaxlm_logits(graphdef, params, tokens):
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    return np.asarray(forward(params, jnp.asarray(tokens, jnp.int32)))


def test_imported_model_gives_transformers_logits_past_the_original_length(imported):
    name, _, cfg, graphdef, params = imported
    length = MODELS[name][3]
    expected_method = "dynamic_ntk" if "dynamic" in name else "yarn_hf"
    assert cfg.model.rope_scaling == expected_method
    assert length > cfg.model.rope_original_max_len
    tokens = np.random.default_rng(0).integers(0, hf_models.VOCAB, (2, length))
    theirs = _hf_logits(_reference(name), tokens)
    ours = _jaxlm_logits(graphdef, params, tokens)
    assert np.abs(theirs).max() > 1.0  # not a degenerate near-zero model
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE, err_msg=name)


def test_cached_generation_grows_the_dynamic_base_like_transformers(import_case):
    """A batch whose longest prompt (40) passes max_position_embeddings (32) and is not
    its padded bucket's length (64): prefill and every decode step must use the length
    transformers uses, the longest real prompt + the tokens made so far."""
    # YaRN's table does not depend on the length: test_hf_import's cached generation
    # with llama3 covers static scalings.
    name, _, cfg, graphdef, params = import_case("llama_dynamic")
    rng = np.random.default_rng(3)
    prompts = [rng.integers(6, hf_models.VOCAB, n).tolist() for n in (40, 27)]
    new = 20
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):  # left padding, transformers' convention
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    with torch.no_grad():
        out = _reference(name).generate(
            torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=None,
            pad_token_id=0,
        )
    theirs = out[:, width:].tolist()
    model = dataclasses.replace(cfg.model, max_seq_len=128)  # run past the original 32
    ours = Generator(model, graphdef, params).generate(prompts, max_new_tokens=new)
    assert ours.tokens == theirs
    assert all(len(set(row)) > 2 for row in theirs), theirs  # not a degenerate repeat


# ---- export ------------------------------------------------------------------------

# transformers' defaults that the export writes out when the checkpoint left them out.
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}


def test_export_writes_the_rope_parameters_back_and_transformers_agrees(imported, tmp_path):
    name, root, cfg, _, params = imported
    original = json.loads((root / "hf" / "config.json").read_text())
    if name == "llama_dynamic":
        # Run longer than the original length: the export still names the original.
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_seq_len=128))
    export_to_hf(params, cfg, tmp_path / "out", tokenizer=None)
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    theirs = original["rope_parameters"]
    if theirs["rope_type"] == "yarn":
        theirs = {**_YARN_DEFAULTS, **theirs}
    assert exported["rope_parameters"] == theirs
    assert exported["max_position_embeddings"] == original["max_position_embeddings"]
    # transformers loads the export and computes the reference's logits.
    tokens = np.random.default_rng(1).integers(0, hf_models.VOCAB, (1, MODELS[name][3]))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    np.testing.assert_allclose(
        _hf_logits(reloaded, tokens), _hf_logits(_reference(name), tokens), rtol=0, atol=1e-5
    )
    # ... and importing the export gives the same model config back.
    again = read_hf_config(tmp_path / "out").model
    assert again == dataclasses.replace(cfg.model, max_seq_len=again.max_seq_len)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
        {
            "rope_type": "yarn",
            "factor": 16.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "attention_factor": 1.1,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
        },
        {"rope_type": "dynamic", "factor": 3.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ],
    ids=["yarn", "yarn-every-option", "dynamic", "llama3"],
)
def test_config_round_trip_keeps_the_rope_parameters(rope):
    hf = {**_minimal_hf_config(), "rope_parameters": {**rope, "rope_theta": 1e6}}
    model = model_config_from_hf(hf, "config.json").model
    back = hf_config_from_model(model, bos_id=1, eos_id=2, pad_id=0, dtype="float32")
    expected = hf["rope_parameters"]
    if rope["rope_type"] == "yarn":
        expected = {**_YARN_DEFAULTS, **expected}
    assert back["rope_parameters"] == expected
    assert model_config_from_hf(back, "exported config.json").model == model


def _minimal_hf_config():
    return {
        "model_type": "llama",
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 1024,
    }


def test_yarn_without_a_factor_or_original_length_follows_transformers():
    """transformers fills original_max_position_embeddings from max_position_embeddings
    and a null factor from the ratio of the two."""
    hf = {**_minimal_hf_config(), "rope_scaling": {"type": "yarn", "factor": None}}
    hf["rope_scaling"]["original_max_position_embeddings"] = 256
    model = model_config_from_hf(hf, "config.json").model
    assert (model.rope_scaling, model.rope_scaling_factor) == ("yarn_hf", 4.0)
    hf["rope_scaling"] = {"rope_type": "yarn", "factor": 2.0}
    model = model_config_from_hf(hf, "config.json").model
    assert model.rope_original_max_len == 1024


# ---- configuration errors ----------------------------------------------------------

_YARN_HF = [
    "model.rope_scaling=yarn_hf",
    "model.rope_scaling_factor=4",
    "model.rope_original_max_len=128",
]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ([*_YARN_HF, "model.rope_yarn_mscale=-1"], r"model\.rope_yarn_mscale=-1\.0 must be >= 0"),
        (
            [*_YARN_HF, "model.rope_yarn_attention_factor=-0.5"],
            r"model\.rope_yarn_attention_factor=-0\.5 must be >= 0",
        ),
        ([*_YARN_HF, "model.rope_yarn_mscale_all_dim=nan"], "rope_yarn_mscale_all_dim='nan'"),
        ([*_YARN_HF, "model.rope_yarn_truncate=maybe"], r"rope_yarn_truncate='maybe'"),
        ([*_YARN_HF, "model.rope_yarn_beta_fast=0.5"], r"model\.rope_yarn_beta_slow=1\.0"),
        (["model.rope_scaling=yarn_hf", "model.rope_scaling_factor=4"], "rope_original_max_len"),
        (
            [
                "model.rope_scaling=yarn",
                "model.rope_scaling_factor=4",
                "model.rope_original_max_len=128",
                "model.rope_yarn_truncate=false",
            ],
            r"model\.rope_yarn_truncate=False has no effect with model\.rope_scaling=yarn",
        ),
        (
            ["model.rope_scaling=dynamic_ntk", "model.rope_scaling_factor=2"],
            r"model\.rope_scaling=dynamic_ntk needs model\.rope_original_max_len > 0",
        ),
        (
            [
                "model.rope_scaling=dynamic_ntk",
                "model.rope_original_max_len=64",
                "model.head_dim=2",
            ],
            r"model\.rope_scaling=dynamic_ntk needs model\.head_dim >= 4",
        ),
    ],
)
def test_config_refuses_bad_values_in_one_line_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match) as error:
        apply_overrides(Config(), overrides)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("rope", "named"),
    [
        ({"truncate": "yes"}, r"rope_parameters\.truncate='yes' is not true or false"),
        ({"mscale": "x"}, r"rope_parameters\.mscale='x' is not a number"),
        ({"mscale": -1.0}, r"model\.rope_yarn_mscale=-1\.0"),
        ({"factor": 0.5}, r"model\.rope_scaling_factor=0\.5"),
        (
            {"factor": None, "original_max_position_embeddings": 0},
            r"rope_parameters\.original_max_position_embeddings=0 must be positive",
        ),
    ],
)
def test_bad_hf_yarn_values_are_refused_naming_file_and_key(rope, named):
    hf = {
        **_minimal_hf_config(),
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, **rope},
    }
    with pytest.raises(InputError, match=named) as error:
        model_config_from_hf(hf, "some/config.json")
    assert str(error.value).startswith("some/config.json: ")
