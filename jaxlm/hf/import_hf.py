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
from jaxlm.hf.tensor_map import IGNORED_SUFFIXES, TensorMapping, tensor_mappings
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


def check_tensors(checkpoint: SafetensorsCheckpoint, cfg: ModelConfig) -> list[TensorMapping]:
    """The mappings of `cfg`, after checking every HF tensor exists with the right shape."""
    mappings = tensor_mappings(cfg)
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

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if not mapping.stacked:
            view = mapping.to_jaxlm(checkpoint.tensor(mapping.hf_name))
            return np.asarray(view[index], dtype=dtype)
        layers = range(n_layers)[index[0]]
        parts = [
            mapping.to_jaxlm(checkpoint.tensor(mapping.hf_name.format(layer=i)))[index[1:]]
            for i in layers
        ]
        return np.stack([np.asarray(p, dtype=dtype) for p in parts])

    return read


def import_params(
    hf_dir: Path | str, cfg: ModelConfig, mesh: Mesh, *, dtype: str | None = None
) -> nnx.State:
    """jaxlm params of `cfg` from the checkpoint in `hf_dir`, sharded on `mesh`.

    Arrays take `dtype` (default: cfg.param_dtype) whatever the file stores.
    """
    checkpoint = SafetensorsCheckpoint(hf_dir)
    mappings = {m.path: m for m in check_tensors(checkpoint, cfg)}
    _, abstract = abstract_model(cfg)
    shardings = param_shardings(abstract, mesh)
    target = np.dtype(dtype or cfg.param_dtype)
    if target.name == "bfloat16":
        target = np.dtype(ml_dtypes.bfloat16)
    arrays = {}
    for path, var in nnx.to_flat_state(abstract):
        keys = tuple(str(p) for p in path)
        mapping = mappings.get(keys)
        if mapping is None:
            raise ValueError(f"no Hugging Face tensor maps to jaxlm parameter {'/'.join(keys)}")
        sharding = _lookup(shardings, path).get_value()
        arrays[path] = jax.make_array_from_callback(
            var.shape, sharding, _reader(checkpoint, mapping, cfg.n_layers, target)
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
