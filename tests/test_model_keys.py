"""Model config keys that saved weights may differ in: one declaration, two uses.

The ModelConfig fields marked KEEPS_WEIGHTS (and, for train.init_from, ADDS_ADAPTERS)
are what `train.init_from` (jaxlm.checkpointing.params_io) and inference overrides
(jaxlm.inference.loading) let differ from the saved model. These tests hold the two
uses to that one declaration, and the declaration to the truth: a marked key really
leaves the param tree and every weight's shape alone.
"""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from jaxlm.checkpointing import params_io
from jaxlm.checkpointing.params_io import load_init_params, save_params
from jaxlm.config import ADDS_ADAPTERS, WEIGHTS, Config, DataConfig, apply_overrides
from jaxlm.errors import InputError
from jaxlm.inference import loading
from jaxlm.models.params import abstract_lora, abstract_model, init_params, keys_keeping_weights
from jaxlm.presets import get_preset

TINY = get_preset("tiny")
DATA = DataConfig(tokenizer_vocab_size=TINY.vocab_size, seq_len=16)
ADAPTER_KEYS = {
    f.name for f in dataclasses.fields(TINY) if f.metadata.get(WEIGHTS) == ADDS_ADAPTERS[WEIGHTS]
}
# One other valid value for every key that keeps the weights.
CHANGED = {
    "max_seq_len": 4 * TINY.max_seq_len,
    "rope_theta": 500_000.0,
    "rope_scaling": "yarn_hf",
    "rope_scaling_factor": 4.0,
    "rope_original_max_len": TINY.max_seq_len,
    "rope_yarn_beta_fast": 16.0,
    "rope_yarn_beta_slow": 2.0,
    "rope_yarn_truncate": False,
    "rope_yarn_attention_factor": 1.2,
    "rope_yarn_mscale": 1.0,
    "rope_yarn_mscale_all_dim": 0.5,
    "rope_llama3_low_freq_factor": 2.0,
    "rope_llama3_high_freq_factor": 8.0,
    "param_dtype": "bfloat16",
    "compute_dtype": "bfloat16",
    "attention_impl": "naive",
    "scan_layers": not TINY.scan_layers,
    "remat": "full",
    "moe_capacity_factor": 1.5,
    "moe_impl": "dense",
    "moe_balance_weight": 0.1,
    "moe_z_weight": 0.1,
    "moe_bias_rate": 0.1,
}


def shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    return {"/".join(map(str, path)): var.shape for path, var in nnx.to_flat_state(state)}


def test_both_uses_read_the_one_declaration():
    """Inference may change a subset of what train.init_from may, and the only keys
    between the two are LoRA's: plain saved weights become a LoRA run's base, but a
    model loaded for inference is always plain."""
    at_inference, at_init = loading._INFERENCE_KEYS, params_io._SAME_PARAMS
    assert at_inference == keys_keeping_weights(adapters=False)
    assert at_init == keys_keeping_weights(adapters=True)
    assert at_inference < at_init
    assert at_init - at_inference == ADAPTER_KEYS == {"lora_rank", "lora_alpha", "lora_targets"}
    assert "scan_layers" in at_inference  # the key the two hand-kept lists disagreed on


def test_every_key_keeping_weights_keeps_the_param_tree_and_shapes():
    assert set(CHANGED) == keys_keeping_weights(adapters=False), "give each marked key a value"
    _, saved = abstract_model(TINY)
    _, loading_into = abstract_model(dataclasses.replace(TINY, **CHANGED))
    assert shapes(loading_into) == shapes(saved)


def test_adapter_keys_leave_the_base_weights_alone():
    lora = dataclasses.replace(TINY, lora_rank=3, lora_alpha=6.0, lora_targets="wq,w_up")
    _, _, base = abstract_lora(lora)
    assert shapes(base) == shapes(abstract_model(TINY)[1])


def test_init_from_a_run_without_layer_scan(tmp_path):
    """scan_layers only chooses scan or an unrolled loop over the same stacked [L, ...]
    weights, so params saved by an unscanned model start a scanned run unchanged."""
    unscanned = dataclasses.replace(TINY, scan_layers=False)
    params = jax.tree.map(np.asarray, init_params(unscanned, jax.random.key(1)))
    save_params(tmp_path / "export", params, Config(model=unscanned, data=DATA))
    loaded, _ = load_init_params(tmp_path / "export", dataclasses.replace(TINY, scan_layers=True))
    for (path, want), (_, got) in zip(
        nnx.to_flat_state(params), nnx.to_flat_state(loaded), strict=True
    ):
        np.testing.assert_array_equal(got.get_value(), want.get_value(), err_msg=str(path))
    with pytest.raises(InputError, match="do not fit this model"):
        load_init_params(tmp_path / "export", dataclasses.replace(TINY, n_layers=2))


@pytest.mark.parametrize("override", ["model.param_dtype=bfloat16", "model.scan_layers=false"])
def test_inference_overrides_that_keep_the_weights_are_accepted(override):
    saved = Config(model=TINY, data=DATA)
    loading._check_overrides(saved, apply_overrides(saved, [override]), "export")


@pytest.mark.parametrize("override", ["model.lora_rank=4", "model.d_ff=64"])
def test_inference_overrides_that_change_the_weights_are_refused(override):
    saved = Config(model=TINY, data=DATA)
    with pytest.raises(InputError, match="refused: " + override.split("=")[0]):
        loading._check_overrides(saved, apply_overrides(saved, [override]), "export")
