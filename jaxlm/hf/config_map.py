"""Hugging Face config.json <-> jaxlm ModelConfig, for the Llama family and its MoEs.

Import reads the model types jaxlm computes exactly:

    llama      Llama 2 / 3 / 3.x (rope types default, linear, llama3, yarn, dynamic)
    mistral    Llama with grouped-query attention and a sliding window (see below)
    qwen2      q/k/v projection biases
    qwen3      QK-norm (RMSNorm over each head, before RoPE)
    qwen3_moe  Qwen3 with every MLP a routed mixture of experts
    mixtral    Mistral with every MLP a routed mixture of experts

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

Mixture of experts. Both families route as jaxlm does (jaxlm.models.moe, softmax
scores): the router's logits h @ W, their softmax over all E experts in float32, the
top k, and the expert outputs summed with those probabilities, renormalised to sum 1
when Qwen3-MoE's norm_topk_prob is true and always in Mixtral; dropless, no bias, no
shared expert. So:

    num_experts (Qwen3-MoE; transformers saves it as num_local_experts),
    num_local_experts (Mixtral)                         -> moe_experts
    num_experts_per_tok                                 -> moe_top_k
    moe_intermediate_size (Qwen3-MoE),
    intermediate_size (Mixtral)                         -> moe_d_ff
    norm_topk_prob (Qwen3-MoE; default false), Mixtral true -> moe_norm_topk

and moe_score softmax, moe_capacity_factor 0, moe_shared_experts 0. Qwen3-MoE's
intermediate_size (the width of its dense layers, of which an imported model has
none unless decoder_sparse_step > 1) becomes d_ff. decoder_sparse_step k becomes
model.moe_every (layer i routes when (i + 1) % k == 0, the others are dense MLPs of
width d_ff); it must divide the layers. Refused: a non-empty mlp_only_layers (dense
layers anywhere else), Mixtral's router_jitter_noise != 0 (training-time noise on the router
input that jaxlm's training would not add) and Qwen2-MoE, whose shared expert is gated
per token. The training-only router_aux_loss_coef is not mapped: transformers' balance
loss is the Switch Transformer's over the whole batch, K for uniform routing, jaxlm's
is sequence-wise and 1 for uniform routing, so model.moe_balance_weight (like every
routing-loss field) keeps jaxlm's default and the import says so in a note.

A jaxlm MoE model exports as Qwen3-MoE when it has QK-norm, else as Mixtral (which
needs moe_norm_topk and no attention biases). Refused, as transformers has no
equivalent: shared experts, sigmoid scores, a capacity factor (transformers is
dropless), and (jaxlm.hf.export_hf) a non-zero router_bias.

RoPE: rope types default, linear and llama3 map to jaxlm's methods of those names;
"yarn" to yarn_hf and "dynamic" to dynamic_ntk, jaxlm's exact copies of transformers'
computations (jaxlm.models.rope_hf), and back on export. transformers' YaRN reads
original_max_position_embeddings (default max_position_embeddings) and, without a
factor, takes max_position_embeddings / original; its dynamic NTK grows the base past
max_position_embeddings, which becomes model.rope_original_max_len (model.max_seq_len
starts there too: raise it with --set to run longer sequences), and an export of
dynamic_ntk writes rope_original_max_len as max_position_embeddings. jaxlm's own ntk
and yarn have no transformers equivalent (yarn's ramp runs over rotation counts, not
pair indices) and are refused on export.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.errors import InputError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral")
MOE_FAMILIES = ("qwen3_moe", "mixtral")
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
# Model types near the supported ones, refused with the reason rather than a bare "not
# supported".
_REFUSED_FAMILIES = {
    "qwen2_moe": "its shared expert is scaled by a per-token sigmoid gate "
    "(shared_expert_gate), which jaxlm's shared experts do not have",
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
# The MoE keys, accepted for their family only (mapped or checked in _moe_fields).
_MOE_KEYS = {
    "qwen3_moe": frozenset(
        {
            "num_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "norm_topk_prob",
            "decoder_sparse_step",
            "mlp_only_layers",
            "router_aux_loss_coef",
            "output_router_logits",  # whether forward returns the router logits
        }
    ),
    "mixtral": frozenset(
        {
            "num_experts",
            "num_local_experts",
            "num_experts_per_tok",
            "router_jitter_noise",
            "router_aux_loss_coef",
            "output_router_logits",
        }
    ),
}
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
    "yarn": {
        "rope_type",
        "type",
        "rope_theta",
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "truncate",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
    },
    "dynamic": {"rope_type", "type", "rope_theta", "factor"},
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
    if family in _REFUSED_FAMILIES:
        raise InputError(
            f"{where}: model_type {family!r} is not supported: {_REFUSED_FAMILIES[family]}"
        )
    if family not in FAMILIES:
        raise InputError(
            f"{where}: model_type {family!r} is not supported (jaxlm imports {list(FAMILIES)})"
        )
    moe_keys = _MOE_KEYS.get(family, frozenset())
    for key in data:
        if key not in _MAPPED and key not in _BOOKKEEPING and key not in moe_keys:
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
    if family in ("qwen2", "qwen3", "qwen3_moe"):
        expect("use_sliding_window", False, False)
    layer_types = data.get("layer_types")
    if layer_types is not None and set(layer_types) - {"full_attention"}:
        raise InputError(f"{where}: layer_types {sorted(set(layer_types))} include local layers")
    n_heads = need("num_attention_heads")
    d_model = need("hidden_size")
    max_len = need("max_position_embeddings")
    head_dim = data.get("head_dim") or d_model // n_heads
    notes = []
    window = data.get("sliding_window") if family in ("mistral", "mixtral") else None
    if window is not None and window < max_len:
        notes.append(
            f"sliding_window={window} < max_position_embeddings={max_len}: jaxlm has no local "
            f"attention, so model.max_seq_len is {window}, where the window never binds"
        )
        max_len = window
    moe = _moe_fields(family, data, where, need, notes) if family in MOE_FAMILIES else {}
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
        qk_norm=family in ("qwen3", "qwen3_moe"),
        # llama and qwen3 with attention_bias also bias o_proj, which jaxlm lacks: the
        # importer accepts those only when they are all zero (import_hf.check_tensors).
        # Mixtral's attention has no biases whatever the config says.
        attention_bias=family == "qwen2"
        or (family != "mixtral" and bool(data.get("attention_bias", False))),
        **_rope_fields(data, where),
        **moe,
    )
    if fields.get("rope_scaling") == "dynamic_ntk":
        notes.append(
            f"rope dynamic: the base grows past max_position_embeddings={max_len}; "
            "model.max_seq_len stays there, raise it with --set model.max_seq_len=... "
            "to run longer sequences"
        )
    try:
        model = ModelConfig(**fields)
    except ConfigError as error:
        raise InputError(f"{where}: {error}") from None
    return ImportedConfig(model, family, tuple(notes))


def _moe_fields(family: str, data: dict[str, Any], where, need, notes: list) -> dict[str, Any]:
    """The moe_* fields of a Qwen3-MoE or Mixtral config (module docstring)."""

    def integer(key: str, value: Any, low: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{where}: {key}={value!r} is not an integer >= {low}")
        return value

    # transformers' attribute_map makes num_experts an alias of num_local_experts, and
    # save_pretrained writes the latter even for Qwen3-MoE, whose hub configs say the former.
    given = {k: data[k] for k in ("num_experts", "num_local_experts") if data.get(k) is not None}
    if not given:
        raise InputError(f"{where}: missing key 'num_local_experts' (or 'num_experts')")
    if len(set(given.values())) > 1:
        raise InputError(f"{where}: num_experts and num_local_experts disagree ({given})")
    key, experts = next(iter(given.items()))
    experts = integer(key, experts)
    top_k = integer("num_experts_per_tok", need("num_experts_per_tok"))
    if top_k > experts:
        raise InputError(f"{where}: num_experts_per_tok={top_k} exceeds {key}={experts}")
    if family == "qwen3_moe":
        # Which layers are MoE: (i + 1) % decoder_sparse_step == 0 and i not in
        # mlp_only_layers; the others are dense MLPs of width intermediate_size. jaxlm's
        # model.moe_every is the same rule, scanned in groups of that many layers.
        step = integer("decoder_sparse_step", data.get("decoder_sparse_step", 1))
        layers = data.get("num_hidden_layers")
        if isinstance(layers, int) and layers % step:
            raise InputError(
                f"{where}: decoder_sparse_step={step} does not divide num_hidden_layers="
                f"{layers} (jaxlm runs layers in groups of decoder_sparse_step, the last "
                "of each MoE; trailing dense layers are not supported)"
            )
        dense = data.get("mlp_only_layers") or []
        if dense:
            raise InputError(
                f"{where}: mlp_only_layers={dense!r} is not supported (dense layers at "
                "arbitrary places; jaxlm's mixed layers follow decoder_sparse_step only)"
            )
        norm_topk = data.get("norm_topk_prob", False)  # transformers' default
        if not isinstance(norm_topk, bool):
            raise InputError(f"{where}: norm_topk_prob={norm_topk!r} is not true or false")
        d_ff = integer("moe_intermediate_size", need("moe_intermediate_size"))
    else:
        jitter = data.get("router_jitter_noise") or 0.0
        if jitter != 0:
            raise InputError(
                f"{where}: router_jitter_noise={jitter!r} is not supported (jaxlm's training "
                "has no router jitter; 0 is)"
            )
        norm_topk = True  # Mixtral always renormalises the top k
        step = 1  # every layer is MoE
        d_ff = integer("intermediate_size", need("intermediate_size"))
    if data.get("router_aux_loss_coef") is not None:
        notes.append(
            f"router_aux_loss_coef={data['router_aux_loss_coef']} is not imported: "
            f"transformers' balance loss (Switch Transformer's, over the batch; {top_k} for "
            "uniform routing) is not jaxlm's (sequence-wise; 1 for uniform routing), so "
            f"model.moe_balance_weight keeps jaxlm's default {ModelConfig.moe_balance_weight}"
            " (--set it when training)"
        )
    return dict(
        moe_experts=experts,
        moe_every=step,
        moe_top_k=top_k,
        moe_d_ff=d_ff,
        moe_score="softmax",
        moe_norm_topk=norm_topk,
        moe_capacity_factor=0.0,
        moe_shared_experts=0,
    )


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

    def number(name: str, default: Any = None) -> Any:
        """params[name] (a missing or null one is `default`), checked to be a number."""
        value = params.get(name)
        value = default if value is None else value
        if value is None:
            raise InputError(f"{where}: {key}.{name} is missing (rope {kind} needs it)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: {key}.{name}={value!r} is not a number")
        return value

    fields: dict[str, Any] = {"rope_theta": float(theta)}
    if kind == "linear":
        fields.update(rope_scaling="linear", rope_scaling_factor=float(number("factor")))
    elif kind == "llama3":
        fields.update(
            rope_scaling="llama3",
            rope_scaling_factor=float(number("factor")),
            rope_original_max_len=int(number("original_max_position_embeddings")),
            rope_llama3_low_freq_factor=float(number("low_freq_factor", 1.0)),
            rope_llama3_high_freq_factor=float(number("high_freq_factor", 4.0)),
        )
    elif kind == "yarn":
        # transformers' defaults: the original length is max_position_embeddings, the
        # factor their ratio; beta_fast/slow are read with `or`, so 0 is the default too.
        original = int(number("original_max_position_embeddings", data["max_position_embeddings"]))
        if original <= 0:
            raise InputError(
                f"{where}: {key}.original_max_position_embeddings={original} must be positive"
            )
        truncate = params.get("truncate", True)
        if not isinstance(truncate, bool):
            raise InputError(f"{where}: {key}.truncate={truncate!r} is not true or false")
        fields.update(
            rope_scaling="yarn_hf",
            rope_scaling_factor=float(number("factor", data["max_position_embeddings"] / original)),
            rope_original_max_len=original,
            rope_yarn_beta_fast=float(number("beta_fast", 32.0) or 32.0),
            rope_yarn_beta_slow=float(number("beta_slow", 1.0) or 1.0),
            rope_yarn_truncate=truncate,
            # 0 = not given, as transformers' None (its tests are truthiness too).
            rope_yarn_attention_factor=float(number("attention_factor", 0.0)),
            rope_yarn_mscale=float(number("mscale", 0.0)),
            rope_yarn_mscale_all_dim=float(number("mscale_all_dim", 0.0)),
        )
    elif kind == "dynamic":
        # transformers grows the base past max_position_embeddings: the original length.
        fields.update(
            rope_scaling="dynamic_ntk",
            rope_scaling_factor=float(number("factor")),
            rope_original_max_len=int(data["max_position_embeddings"]),
        )
    return fields


# ----------------------------------------------------------------------- export


def export_family(model: ModelConfig) -> str:
    """The transformers architecture that computes `model` exactly (module docstring)."""
    if model.moe:
        return _moe_export_family(model)
    if model.qk_norm:
        return "qwen3"
    if model.attention_bias:
        return "qwen2"
    return "llama"


def _moe_export_family(model: ModelConfig) -> str:
    """qwen3_moe or mixtral, or an InputError naming what transformers cannot compute."""
    cannot = "transformers' Qwen3-MoE and Mixtral have no equivalent"
    if model.moe_shared_experts:
        raise InputError(
            f"model.moe_shared_experts={model.moe_shared_experts}: {cannot} (no shared experts)"
        )
    if model.moe_score != "softmax":
        raise InputError(f"model.moe_score={model.moe_score}: {cannot} (softmax scores only)")
    if model.moe_capacity_factor:
        raise InputError(
            f"model.moe_capacity_factor={model.moe_capacity_factor}: {cannot} (they are "
            "dropless, so their logits would differ where jaxlm drops assignments); set it "
            "to 0 in the model's config.json to export the dropless model"
        )
    if model.qk_norm:
        return "qwen3_moe"
    # Without QK-norm only Mixtral remains; Qwen3-MoE, which has the two features below,
    # always has QK-norm.
    if model.attention_bias:
        raise InputError(
            "model.attention_bias=true with mixture of experts needs model.qk_norm=true: "
            "without QK-norm the model exports as Mixtral, whose attention has no biases"
        )
    if not model.moe_norm_topk:
        raise InputError(
            "model.moe_norm_topk=false needs model.qk_norm=true: without QK-norm the model "
            "exports as Mixtral, which always renormalises the top-k weights"
        )
    if model.moe_every > 1:
        raise InputError(
            f"model.moe_every={model.moe_every} needs model.qk_norm=true: without QK-norm "
            "the model exports as Mixtral, whose layers are all mixture-of-experts"
        )
    return "mixtral"


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
        # dynamic NTK grows its base past max_position_embeddings: the original length.
        "max_position_embeddings": (
            model.rope_original_max_len
            if model.rope_scaling == "dynamic_ntk"
            else model.max_seq_len
        ),
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
    if family in ("qwen2", "qwen3", "qwen3_moe"):
        data.update(use_sliding_window=False, sliding_window=None)
    if family == "qwen3_moe":
        data.update(
            attention_bias=model.attention_bias,
            # transformers reads num_experts through its alias; the hub's configs use it.
            num_experts=model.moe_experts,
            num_experts_per_tok=model.moe_top_k,
            moe_intermediate_size=model.resolved_moe_d_ff,
            norm_topk_prob=model.moe_norm_topk,
            decoder_sparse_step=model.moe_every,
            mlp_only_layers=[],
            output_router_logits=False,
        )
    if family == "mixtral":
        data.update(
            intermediate_size=model.resolved_moe_d_ff,
            num_local_experts=model.moe_experts,
            num_experts_per_tok=model.moe_top_k,
            sliding_window=None,
            router_jitter_noise=0.0,
            output_router_logits=False,
        )
    if model.score_head:
        # A reward model or critic: transformers' sequence classifier with one label,
        # whose `score` reads the last non-pad token (jaxlm.hf.export_hf).
        classifier = ARCHITECTURES[family].replace("ForCausalLM", "ForSequenceClassification")
        data.update(architectures=[classifier], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
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
    if model.rope_scaling == "yarn_hf":
        params = {
            "rope_type": "yarn",
            "rope_theta": theta,
            "factor": model.rope_scaling_factor,
            "original_max_position_embeddings": model.rope_original_max_len,
            "beta_fast": model.rope_yarn_beta_fast,
            "beta_slow": model.rope_yarn_beta_slow,
            "truncate": model.rope_yarn_truncate,
        }
        # Only what was given: transformers reads a missing key as "derive it".
        for name, value in (
            ("attention_factor", model.rope_yarn_attention_factor),
            ("mscale", model.rope_yarn_mscale),
            ("mscale_all_dim", model.rope_yarn_mscale_all_dim),
        ):
            if value:
                params[name] = value
        return params
    if model.rope_scaling == "dynamic_ntk":
        return {"rope_type": "dynamic", "rope_theta": theta, "factor": model.rope_scaling_factor}
    raise InputError(
        f"model.rope_scaling={model.rope_scaling} has no exact transformers equivalent "
        "(export supports none, linear, llama3, yarn_hf and dynamic_ntk)"
    )
