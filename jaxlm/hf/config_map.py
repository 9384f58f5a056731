"""Hugging Face config.json <-> jaxlm ModelConfig, for the Llama family.

Import reads the four model types jaxlm computes exactly:

    llama    Llama 2 / 3 / 3.x (rope types default, linear, llama3)
    mistral  Llama with grouped-query attention and a sliding window (see below)
    qwen2    q/k/v projection biases
    qwen3    QK-norm (RMSNorm over each head, before RoPE)

Every key of config.json is either mapped, checked to have the value jaxlm computes
(hidden_act = silu, mlp_bias = false, ...; an o_proj bias, which llama and qwen3 get
with attention_bias, only when it is all zero), or on a short list of
bookkeeping keys that do not change the function (dtype, token ids, dropout, which
inference never applies). Anything else (quantization_config, auto_map, a rope type
jaxlm does not implement) is refused with an InputError naming the file and key:
silently dropping a setting would give a model with different logits.

Sliding windows: jaxlm has no local attention. A window only changes anything for
sequences longer than the window, so a Mistral config with sliding_window W imports
with model.max_seq_len = min(max_position_embeddings, W): every length jaxlm will
then run gives exactly the checkpoint's logits (Mistral v0.2+ has no window at all).
Qwen's use_sliding_window=true is refused (it applies to some layers only).

Export picks the architecture from the features a model uses: QK-norm -> Qwen3,
attention biases -> Qwen2, otherwise Llama (which Mistral without a window is).
RoPE scalings without a transformers equivalent (jaxlm's ntk and yarn, whose ramp is
continuous where transformers' is rounded to whole pairs) are refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.errors import InputError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Keys that say nothing about the function a checkpoint computes at inference.
_BOOKKEEPING = frozenset(
    {
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "initializer_range",
        "use_cache",
        "_name_or_path",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "tokenizer_class",
        "attention_dropout",  # dropout is off at inference
        "pretraining_tp",  # only splits the same matmuls differently
        "max_window_layers",  # read only with use_sliding_window, refused below
    }
)
_MAPPED = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "attention_bias",
        "hidden_act",
        "mlp_bias",
        "sliding_window",
        "use_sliding_window",
        "layer_types",
    }
)
_ROPE_KEYS = {
    "default": {"rope_type", "type", "rope_theta"},
    "linear": {"rope_type", "type", "rope_theta", "factor"},
    "llama3": {
        "rope_type",
        "type",
        "rope_theta",
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    },
}


@dataclasses.dataclass(frozen=True)
class ImportedConfig:
    model: ModelConfig
    family: str
    # Notes for the user: anything the import adjusted (a clamped max_seq_len).
    notes: tuple[str, ...] = ()


def model_config_from_hf(data: dict[str, Any], where: Path | str) -> ImportedConfig:
    """The ModelConfig of a transformers config.json (already parsed); errors name `where`."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: not a JSON object")
    family = data.get("model_type")
    if family not in FAMILIES:
        raise InputError(
            f"{where}: model_type {family!r} is not supported (jaxlm imports {list(FAMILIES)})"
        )
    for key in data:
        if key not in _MAPPED and key not in _BOOKKEEPING:
            raise InputError(f"{where}: key {key!r} is not supported by jaxlm's importer")

    def need(key: str) -> Any:
        if data.get(key) is None:
            raise InputError(f"{where}: missing key {key!r}")
        return data[key]

    def expect(key: str, wanted: Any, default: Any) -> None:
        if data.get(key, default) != wanted:
            raise InputError(
                f"{where}: {key}={data.get(key)!r} is not supported (jaxlm computes {wanted!r})"
            )

    expect("hidden_act", "silu", "silu")
    expect("mlp_bias", False, False)
    if family in ("qwen2", "qwen3"):
        expect("use_sliding_window", False, False)
    layer_types = data.get("layer_types")
    if layer_types is not None and set(layer_types) - {"full_attention"}:
        raise InputError(f"{where}: layer_types {sorted(set(layer_types))} include local layers")
    n_heads = need("num_attention_heads")
    d_model = need("hidden_size")
    max_len = need("max_position_embeddings")
    head_dim = data.get("head_dim") or d_model // n_heads
    notes = []
    window = data.get("sliding_window") if family == "mistral" else None
    if window is not None and window < max_len:
        notes.append(
            f"sliding_window={window} < max_position_embeddings={max_len}: jaxlm has no local "
            f"attention, so model.max_seq_len is {window}, where the window never binds"
        )
        max_len = window
    fields = dict(
        vocab_size=need("vocab_size"),
        d_model=d_model,
        n_layers=need("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=data.get("num_key_value_heads") or n_heads,
        # 0 is jaxlm's spelling of the default d_model // n_heads.
        head_dim=0 if head_dim == d_model // n_heads and not d_model % n_heads else head_dim,
        d_ff=need("intermediate_size"),
        max_seq_len=max_len,
        norm_eps=float(data.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(data.get("tie_word_embeddings", False)),
        qk_norm=family == "qwen3",
        # llama and qwen3 with attention_bias also bias o_proj, which jaxlm lacks: the
        # importer accepts those only when they are all zero (import_hf.check_tensors).
        attention_bias=family == "qwen2" or bool(data.get("attention_bias", False)),
        **_rope_fields(data, where),
    )
    try:
        model = ModelConfig(**fields)
    except ConfigError as error:
        raise InputError(f"{where}: {error}") from None
    return ImportedConfig(model, family, tuple(notes))


def _rope_fields(data: dict[str, Any], where: Path | str) -> dict[str, Any]:
    if isinstance(data.get("rope_parameters"), dict):
        params, key = dict(data["rope_parameters"]), "rope_parameters"
        theta = params.get("rope_theta", data.get("rope_theta", 10_000.0))
    else:
        params, key = dict(data.get("rope_scaling") or {}), "rope_scaling"
        theta = data.get("rope_theta", 10_000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_KEYS:
        raise InputError(
            f"{where}: {key}.rope_type={kind!r} is not supported (jaxlm imports "
            f"{sorted(_ROPE_KEYS)})"
        )
    extra = set(params) - _ROPE_KEYS[kind]
    if extra:
        raise InputError(f"{where}: {key}.{sorted(extra)[0]} is not supported for rope {kind}")
    fields: dict[str, Any] = {"rope_theta": float(theta)}
    if kind == "linear":
        fields.update(rope_scaling="linear", rope_scaling_factor=float(params["factor"]))
    elif kind == "llama3":
        fields.update(
            rope_scaling="llama3",
            rope_scaling_factor=float(params["factor"]),
            rope_original_max_len=int(params["original_max_position_embeddings"]),
            rope_llama3_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            rope_llama3_high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        )
    return fields


# ----------------------------------------------------------------------- export


def export_family(model: ModelConfig) -> str:
    """The transformers architecture that computes `model` exactly (module docstring)."""
    if model.qk_norm:
        return "qwen3"
    if model.attention_bias:
        return "qwen2"
    return "llama"


def hf_config_from_model(
    model: ModelConfig, *, bos_id: int, eos_id: int, pad_id: int, dtype: str
) -> dict[str, Any]:
    """config.json for `model` (refuses settings transformers cannot reproduce)."""
    family = export_family(model)
    data: dict[str, Any] = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": model.vocab_size,
        "hidden_size": model.d_model,
        "intermediate_size": model.resolved_d_ff,
        "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads,
        "num_key_value_heads": model.n_kv_heads,
        "head_dim": model.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm_eps,
        "tie_word_embeddings": model.tie_embeddings,
        "rope_parameters": _rope_parameters(model),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,
        "use_cache": True,
    }
    if family == "llama":
        data.update(attention_bias=False, mlp_bias=False)
    if family == "qwen3":
        # Qwen3's flag also puts a bias on o_proj; the exporter writes it as zeros.
        data.update(attention_bias=model.attention_bias)
    if family in ("qwen2", "qwen3"):
        data.update(use_sliding_window=False, sliding_window=None)
    return data


def _rope_parameters(model: ModelConfig) -> dict[str, Any]:
    theta = model.rope_theta
    if model.rope_scaling == "none":
        return {"rope_type": "default", "rope_theta": theta}
    if model.rope_scaling == "linear":
        return {"rope_type": "linear", "rope_theta": theta, "factor": model.rope_scaling_factor}
    if model.rope_scaling == "llama3":
        return {
            "rope_type": "llama3",
            "rope_theta": theta,
            "factor": model.rope_scaling_factor,
            "low_freq_factor": model.rope_llama3_low_freq_factor,
            "high_freq_factor": model.rope_llama3_high_freq_factor,
            "original_max_position_embeddings": model.rope_original_max_len,
        }
    raise InputError(
        f"model.rope_scaling={model.rope_scaling} has no exact transformers equivalent "
        "(export supports none, linear and llama3)"
    )
