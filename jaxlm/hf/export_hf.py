"""Write jaxlm params as a transformers checkpoint directory, tensor by tensor.

    export_to_hf(params, cfg, out, tokenizer=tok, max_shard_bytes=5 * 2**30)

writes into the new directory `out`:

    config.json               architectures [Llama|Qwen2|Qwen3|Qwen3Moe|Mixtral]ForCausalLM
                              by features (jaxlm.hf.config_map), dtype, bos/eos/pad ids
    generation_config.json    bos, eos (</s> and <|im_end|>, where chat replies end), pad
    model.safetensors         or model-0000i-of-0000n.safetensors + the index
    tokenizer files           (jaxlm.hf.tokenizer_export) when a tokenizer is given; an
                              imported Hugging Face tokenizer's own files, unchanged
                              (its generation_config.json too, when it came with one)

that `transformers.AutoModelForCausalLM.from_pretrained(out)` loads with no custom
code. Each HF tensor is produced from one layer of one parameter only when the writer
reaches it (jaxlm.hf.safetensors_io), so the host holds the params as given plus one
tensor. Params may be numpy (restored to host) or jax.Arrays on one process's devices;
a jax.Array is sliced on device and only that layer is fetched.

A model with a score head (a reward model or critic: model.score_head) is written as
[Llama|Qwen2|Qwen3]ForSequenceClassification with one label (`score.weight` [1, D]),
for `AutoModelForSequenceClassification`; an untied LM head is left out (the
classifier has none). Its logit is the score at the last token that is not
pad_token_id, so give it the text up to and including the response's end token
(`<|im_end|>` in ChatML: where jaxlm reads the reward, not at the newline after it),
right-padded with the pad id.

A mixture-of-experts model (Qwen3-MoE with QK-norm, else Mixtral; config_map says
what is refused) gets its experts written one tensor per expert, as save_pretrained
writes them (jaxlm.hf.tensor_map). Its router_bias, the auxiliary-loss-free balancing
bias, has no place in either family: a non-zero one (a run with model.moe_bias_rate >
0) changes which experts a token picks, so such a model is refused before anything is
written.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxlm.config import Config
from jaxlm.data.hf_tokenizer import HFTokenizer, write_bundle_files
from jaxlm.data.tokenizer import BOS_ID, EOS_ID, IM_END_ID, PAD_ID, Tokenizer
from jaxlm.errors import InputError
from jaxlm.hf.config_map import export_family, hf_config_from_model
from jaxlm.hf.safetensors_io import DTYPES, PendingTensor, write_checkpoint
from jaxlm.hf.tensor_map import ABSENT_ZEROS, LAYER, TensorMapping, tensor_mappings
from jaxlm.hf.tokenizer_export import write_tokenizer_files

EXPORT_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def _value(params: nnx.State, path: tuple[str, ...]):
    node = params
    for key in path:
        node = node[key]
    return node.get_value() if isinstance(node, nnx.Variable) else node


def _pending(mapping: TensorMapping, value, n_layers: int, dtype: np.dtype) -> list[PendingTensor]:
    def produce(*index: int):
        def run() -> np.ndarray:
            piece = value[index] if index else value
            host = np.asarray(jax.device_get(piece))
            return np.ascontiguousarray(mapping.to_hf(host)).astype(dtype)

        return run

    # (index into the jaxlm value, HF layer and expert of the tensor)
    if not mapping.stacked:
        indices = [((), ())]
    elif mapping.per_expert:
        layers = enumerate(mapping.hf_layers(n_layers))
        indices = [((j, e), (i, e)) for j, i in layers for e in range(mapping.experts)]
    else:
        indices = [((j,), (i,)) for j, i in enumerate(mapping.hf_layers(n_layers))]
    return [
        PendingTensor(mapping.name(*hf_index), mapping.hf_shape, dtype, produce(*index))
        for index, hf_index in indices
    ]


def _check_absent_zeros(params: nnx.State) -> None:
    """Refuse a MoE model's parameters transformers lacks (tensor_map.ABSENT_ZEROS) unless
    all zero."""
    for path in ABSENT_ZEROS:
        value = np.asarray(jax.device_get(_value(params, path)))
        if np.any(value != 0):
            raise InputError(
                f"params {'/'.join(path)} is not zero (max |bias| {np.abs(value).max():.3g}): "
                "the auxiliary-loss-free balancing bias (model.moe_bias_rate > 0) steers "
                "which experts a token picks, and transformers' Qwen3-MoE and Mixtral "
                "routers have no such bias, so they would route differently"
            )


def _special_ids(tokenizer) -> dict:
    """bos/eos/pad ids for config.json and generation_config.json (eos: every stop id)."""
    if getattr(tokenizer, "kind", None) != "huggingface":
        return {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, IM_END_ID], "pad_token_id": PAD_ID}
    bos = tokenizer.piece_to_id(tokenizer.bos_token) if tokenizer.bos_token else None
    pad = tokenizer.piece_to_id(tokenizer.pad_token) if tokenizer.pad_token else None
    return {"bos_token_id": bos, "eos_token_id": list(tokenizer.stop_ids), "pad_token_id": pad}


def export_to_hf(
    params: nnx.State,
    cfg: Config,
    out: Path | str,
    *,
    tokenizer: Tokenizer | HFTokenizer | None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> list[Path]:
    """Write the checkpoint directory `out` (module docstring); returns the weight files."""
    out = Path(out)
    model = cfg.model
    if model.lora_rank:
        raise InputError("export LoRA runs merged (restore_params merges the adapters)")
    dtype = dtype or model.param_dtype
    if dtype not in EXPORT_DTYPES:
        raise InputError(f"--dtype {dtype}: choose one of {list(EXPORT_DTYPES)}")
    np_dtype = DTYPES[EXPORT_DTYPES[dtype]]
    special = _special_ids(tokenizer)
    hf_config = hf_config_from_model(
        model,
        bos_id=special["bos_token_id"],
        eos_id=special["eos_token_id"][0],
        pad_id=special["pad_token_id"],
        dtype=dtype,
    )  # refuses what transformers cannot compute, before anything is written
    if model.moe:
        _check_absent_zeros(params)
    if tokenizer is not None and tokenizer.vocab_size > model.vocab_size:
        raise InputError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces, more than "
            f"model.vocab_size={model.vocab_size}"
        )
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    tensors: list[PendingTensor] = []
    family = export_family(model)
    for mapping in tensor_mappings(model, family):
        if model.score_head and mapping.path == ("unembed",):
            continue  # a sequence classifier has no LM head: transformers would drop it
        value = _value(params, mapping.path)
        tensors += _pending(mapping, value, model.n_layers, np_dtype)
    if family in ("qwen3", "qwen3_moe") and model.attention_bias:
        # Qwen3's attention_bias flag also gives o_proj a bias; jaxlm's is zero.
        for layer in range(model.n_layers):
            tensors.append(
                PendingTensor(
                    LAYER.format(layer=layer) + "self_attn.o_proj.bias",
                    (model.d_model,),
                    np_dtype,
                    lambda: np.zeros((model.d_model,), np_dtype),
                )
            )
    files = write_checkpoint(out, tensors, max_shard_bytes=max_shard_bytes)
    if getattr(tokenizer, "kind", None) == "huggingface":
        write_bundle_files(tokenizer.files, out)  # the imported files, byte for byte
    elif tokenizer is not None:
        write_tokenizer_files(tokenizer, out)
    if not (out / "generation_config.json").is_file():
        (out / "generation_config.json").write_text(json.dumps(special, indent=2) + "\n")
    # config.json last: a directory with it is complete.
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    return files
