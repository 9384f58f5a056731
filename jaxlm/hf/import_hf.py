"""Load a Hugging Face Llama-family checkpoint straight into jaxlm's sharded params.

    imported = read_hf_config(hf_dir)                     # ModelConfig + family
    params = import_params(hf_dir, imported.model, mesh)  # nnx.State of jax.Arrays

The target shardings come from the same logical-axis rules as training
(jaxlm.models.params.param_shardings), and every parameter is built with
`jax.make_array_from_callback`: the callback receives the index of one device's
shard and reads only those rows and columns from the memory-mapped safetensors
(for stacked layers, only the requested layers' tensors). No device and no host
buffer ever holds more than one shard of one parameter at a time (beyond the page
cache), so a model larger than any device imports onto the mesh that will run it.

Before any array is built, the checkpoint's tensor names, shapes and dtypes are
checked against the model: a missing, unexpected or misshapen tensor is an
InputError naming the tensor and its file.

A mixture-of-experts checkpoint's experts are read in whichever layout it holds
(jaxlm.hf.tensor_map: save_pretrained's per-expert tensors, or transformers 5.x's
fused ones); the router stays float32 whatever --dtype says, as jaxlm routes in
float32 (jaxlm.models.transformer), and router_bias, which transformers lacks, is zeros.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.hf.config_map import ImportedConfig, model_config_from_hf
from jaxlm.hf.safetensors_io import SafetensorsCheckpoint
from jaxlm.hf.tensor_map import (
    ABSENT_ZEROS,
    FUSED_NAMES,
    IGNORED_SUFFIXES,
    LAYER,
    TensorMapping,
    tensor_mappings,
)
from jaxlm.models.params import abstract_model, param_shardings

HF_CONFIG = "config.json"


def read_hf_config(hf_dir: Path | str) -> ImportedConfig:
    """The ModelConfig (and family) of a transformers checkpoint directory."""
    path = Path(hf_dir) / HF_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"not a transformers checkpoint directory (no {path})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    return model_config_from_hf(data, path)


def check_tensors(
    checkpoint: SafetensorsCheckpoint, cfg: ModelConfig, family: str | None = None
) -> list[TensorMapping]:
    """The mappings of `cfg` (a MoE model's expert names: `family`'s, or the fused ones if
    the checkpoint holds those), after checking every HF tensor exists with the right
    shape."""
    first_moe = cfg.moe_layers[0] if cfg.moe else 0  # a mixed model's layer 0 is dense
    fused = cfg.moe and (LAYER.format(layer=first_moe) + FUSED_NAMES[1]) in checkpoint.names()
    mappings = tensor_mappings(cfg, family, fused=fused)
    expected = {}
    for mapping in mappings:
        for name in mapping.hf_names(cfg.n_layers):
            expected[name] = mapping.hf_shape
    for name, shape in expected.items():
        entry = checkpoint.entry(name)  # raises naming the tensor when missing
        if entry.shape != shape:
            raise InputError(
                f"{checkpoint.where(name)}: tensor {name!r} has shape {list(entry.shape)}, "
                f"config.json implies {list(shape)}"
            )
    for name in checkpoint.names():
        if name in expected or name.endswith(IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied: transformers also ignores a stored copy
        if name.endswith("self_attn.o_proj.bias") and cfg.attention_bias:
            if np.any(checkpoint.tensor(name) != 0):
                raise InputError(
                    f"{checkpoint.where(name)}: tensor {name!r} is not zero; jaxlm's attention "
                    "has no output-projection bias"
                )
            continue
        raise InputError(
            f"{checkpoint.where(name)}: tensor {name!r} has no place in a jaxlm model of this "
            "config (an unsupported feature, e.g. an o_proj or MLP bias?)"
        )
    return mappings


def _reader(checkpoint: SafetensorsCheckpoint, mapping: TensorMapping, n_layers: int, dtype):
    """The make_array_from_callback callback of one parameter."""

    def one(name: str, index: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(mapping.to_jaxlm(checkpoint.tensor(name))[index], dtype=dtype)

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if not mapping.stacked:
            return one(mapping.hf_name, index)
        layers = mapping.hf_layers(n_layers)[index[0]]
        if not mapping.per_expert:
            return np.stack([one(mapping.name(i), index[1:]) for i in layers])
        # [L, E, ...]: one tensor per layer and expert, only the shard's of both.
        experts = range(mapping.experts)[index[1]]
        return np.stack(
            [np.stack([one(mapping.name(i, e), index[2:]) for e in experts]) for i in layers]
        )

    return read


def _zeros_reader(shape: tuple[int, ...], dtype):
    """The callback of a parameter transformers lacks (ABSENT_ZEROS): zeros."""

    def read(index: tuple[slice, ...]) -> np.ndarray:
        return np.zeros([len(range(n)[i]) for n, i in zip(shape, index, strict=True)], dtype)

    return read


def import_params(
    hf_dir: Path | str,
    cfg: ModelConfig,
    mesh: Mesh,
    *,
    dtype: str | None = None,
    family: str | None = None,
) -> nnx.State:
    """jaxlm params of `cfg` from the checkpoint in `hf_dir`, sharded on `mesh`.

    Arrays take `dtype` (default: cfg.param_dtype) whatever the file stores, but the
    router's, which stay float32. `family` (a MoE model's model_type) names the experts'
    tensors; without it, it is read from hf_dir's config.json.
    """
    checkpoint = SafetensorsCheckpoint(hf_dir)
    if cfg.moe and family is None:
        family = read_hf_config(hf_dir).family
    mappings = {m.path: m for m in check_tensors(checkpoint, cfg, family)}
    _, abstract = abstract_model(cfg)
    shardings = param_shardings(abstract, mesh)
    target = np.dtype(dtype or cfg.param_dtype)
    if target.name == "bfloat16":
        target = np.dtype(ml_dtypes.bfloat16)
    arrays = {}
    for path, var in nnx.to_flat_state(abstract):
        keys = tuple(str(p) for p in path)
        sharding = _lookup(shardings, path).get_value()
        # The router is float32 by design (routing is sensitive to rounding).
        want = np.dtype(np.float32) if keys[-1].startswith("router") else target
        if keys in ABSENT_ZEROS:
            read = _zeros_reader(var.shape, want)
            arrays[path] = jax.make_array_from_callback(var.shape, sharding, read)
            continue
        mapping = mappings.get(keys)
        if mapping is None:
            raise ValueError(f"no Hugging Face tensor maps to jaxlm parameter {'/'.join(keys)}")
        arrays[path] = jax.make_array_from_callback(
            var.shape, sharding, _reader(checkpoint, mapping, cfg.n_layers, want)
        )
    return jax.tree_util.tree_map_with_path(
        lambda path, var: var.replace(arrays[tuple(getattr(p, "key", p) for p in path)]),
        abstract,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def _lookup(state: nnx.State, path: tuple) -> nnx.Variable:
    node = state
    for key in path:
        node = node[key]
    return node
