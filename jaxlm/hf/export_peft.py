"""LoRA adapters as a PEFT adapter directory, for the base exported by `convert --to-hf`.

    export_to_peft(adapters, cfg, out)      # jaxlm convert --to-peft ADAPTERS OUT

writes into the new directory `out`:

    adapter_config.json        peft's LoraConfig: r, lora_alpha, target_modules, ...
    adapter_model.safetensors  a lora_A and a lora_B weight per adapted projection and layer

which `peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(HF_BASE), out)`
loads, HF_BASE being the adapters' base converted with `jaxlm convert --to-hf`.

The conventions, each of which would silently give another model if wrong:

  - scale: jaxlm's branch is (alpha / r) x A B (jaxlm.models.layers.low_rank_scale),
    peft's is lora_alpha / r with use_rslora false, so r and alpha are copied as they are;
  - modules: jaxlm's targets map to the transformers modules of jaxlm.hf.tensor_map
    (wq -> self_attn.q_proj, w_gate -> mlp.gate_proj, ...), and tensors are named as
    peft saves them: "base_model.model." + the module's path + ".lora_A.weight" (the
    adapter's own name, "default", is left out on disk and put back by peft on load);
  - layout: a torch Linear computes x W^T with W [out, in]. Every target's HF weight is
    jaxlm's weight [*I, *O] (one layer) with I and O each flattened in order and then
    transposed (tensor_map: heads split in order, no RoPE permutation). peft adds
    x A_hf^T B_hf^T, so lora_A.weight [r, in] = A.reshape(in, r)^T and lora_B.weight
    [out, r] = B.reshape(r, out)^T: B_hf A_hf = (A B)^T, the HF form of jaxlm's delta.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxlm.config import Config
from jaxlm.errors import InputError
from jaxlm.hf.safetensors_io import DTYPES, PendingTensor, write_file
from jaxlm.hf.tensor_map import tensor_mappings
from jaxlm.models.layers import LOW_RANK_A, LOW_RANK_B
from jaxlm.models.lora import lora_targets, plain_config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_WEIGHT = ".weight"


def _layer_tensor(value, layer: int, flat_shape: tuple[int, int], dtype) -> Callable:
    """One layer's factor, flattened to `flat_shape` and transposed (torch's [out, in])."""

    def produce() -> np.ndarray:
        piece = np.asarray(jax.device_get(value[layer]))
        return np.ascontiguousarray(piece.reshape(flat_shape).T).astype(dtype)

    return produce


def export_to_peft(adapters: nnx.State, cfg: Config, out: Path | str) -> Path:
    """Write `out` (module docstring) from the adapters of an adapters-only export."""
    out = Path(out)
    model = cfg.model
    if not model.lora_rank:
        raise InputError("--to-peft needs LoRA adapters (model.lora_rank > 0)")
    modules = {m.path[-1]: m.hf_name for m in tensor_mappings(plain_config(model))}
    r, layers = model.lora_rank, adapters["layers"]
    tensors, target_modules = [], []
    for name in lora_targets(model):
        hf_weight = modules[name]  # e.g. "model.layers.{layer}.self_attn.q_proj.weight"
        module = hf_weight.removesuffix(_WEIGHT)
        target_modules.append(module.rsplit(".", 1)[-1])
        a = layers[name + LOW_RANK_A].get_value()  # [L, *I, r]
        b = layers[name + LOW_RANK_B].get_value()  # [L, r, *O]
        n_in, n_out = int(np.prod(a.shape[1:-1])), int(np.prod(b.shape[2:]))
        dtype = np.dtype(a.dtype)
        if dtype not in DTYPES.values():
            raise InputError(f"adapters in {dtype}: peft export writes float32/bfloat16/float16")
        for layer in range(model.n_layers):
            path = _PREFIX + module.format(layer=layer)
            tensors.append(
                PendingTensor(
                    path + ".lora_A.weight",
                    (r, n_in),
                    dtype,
                    _layer_tensor(a, layer, (n_in, r), dtype),
                )
            )
            tensors.append(
                PendingTensor(
                    path + ".lora_B.weight",
                    (n_out, r),
                    dtype,
                    _layer_tensor(b, layer, (r, n_out), dtype),
                )
            )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": r,
        "lora_alpha": model.lora_alpha,
        "target_modules": target_modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    write_file(out / ADAPTER_WEIGHTS, tensors)
    # The config last: a directory with it is complete.
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
