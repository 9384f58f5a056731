"""Load a trained model for inference: from an export directory or a training workdir.

    model = load_model("exports/quickstart")                # jaxlm export's output
    model = load_model("runs/quickstart")                   # newest good checkpoint
    model = load_model(path, overrides=["model.rope_scaling=yarn",
                                        "model.rope_scaling_factor=4"])
    model = load_model("exports/base", adapters="exports/sft-adapters")  # LoRA, merged
    model = load_model(path, quantize="int8")               # int8 weights (quantize.py)

Overrides may change only model settings that leave the saved weights alone (those
marked jaxlm.config.KEEPS_WEIGHTS: dtypes, attention implementation, layer scan and
remat, maximum length, RoPE settings): anything else would not fit the saved weights
and is refused with the key named. With a
`mesh`, params are restored straight into their shardings (jaxlm.sharding's logical
rules), so a model larger than one device loads without passing through one.
The tokenizer is the directory's own tokenizer.model or hf_tokenizer.json (a Hugging
Face tokenizer; jaxlm.data.tokenizer_files) (jaxlm.data.workdir_tokenizer), found
from the directory, never from the current one. `adapters` names an adapters-only
export to apply to the base at `path` (jaxlm.inference.adapters checks it is their base).
`quantize="int8"` stores the matmul weights as int8 with per-channel scales
(jaxlm.inference.quantize), after any adapters are merged, on `mesh` if given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxlm.checkpointing.params_io import (
    PARAMS_DIR,
    load_params,
    read_params_config,
    restore_params,
)
from jaxlm.config import Config, apply_overrides, config_differences
from jaxlm.data.tokenizer_files import load_tokenizer
from jaxlm.data.workdir_tokenizer import require_owned_tokenizer
from jaxlm.errors import InputError
from jaxlm.inference.adapters import apply_adapters
from jaxlm.inference.quantize import QUANTIZE_CHOICES, quantize_params
from jaxlm.models.params import abstract_model, keys_keeping_weights, param_shardings

# Model keys an inference override may change: none of them changes a weight's shape.
# LoRA's keys are not among them: a model loaded here is always plain.
_INFERENCE_KEYS = keys_keeping_weights(adapters=False)


@dataclasses.dataclass
class LoadedModel:
    cfg: Config
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Any  # jaxlm.data.tokenizer.Tokenizer or jaxlm.data.hf_tokenizer.HFTokenizer
    source: str  # what was read, for messages
    mesh: Mesh | None = None
    quantize: str | None = None  # "int8": weight-only int8 (jaxlm.inference.quantize)

    def module(self) -> nnx.Module:
        """The NNX model (params bound), for notebooks and one-off forward passes."""
        return nnx.merge(self.graphdef, self.params)


def _check_overrides(saved: Config, new: Config, source: str) -> None:
    refused = []
    for change in config_differences(saved.to_dict(), new.to_dict()):
        key = change.split(":")[0]
        name = key.removeprefix("model.")
        if not (key.startswith("model.") and name in _INFERENCE_KEYS):
            refused.append(change)
    if refused:
        raise InputError(
            f"{source}: overrides may only change model settings that keep the weights' "
            f"shapes ({', '.join(sorted(_INFERENCE_KEYS))}); refused: " + "; ".join(refused)
        )


def load_model(
    path: Path | str,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    mesh: Mesh | None = None,
    adapters: Path | str | None = None,
    quantize: str | None = None,
) -> LoadedModel:
    """The model stored at `path` (export directory or training workdir), ready to run;
    with `adapters` (an adapters-only export), that base with the adapters merged in;
    with `quantize="int8"`, its weights then quantized (None or "none": as stored)."""
    if quantize not in (None, *QUANTIZE_CHOICES):
        raise InputError(f"quantize={quantize!r}: expected one of {', '.join(QUANTIZE_CHOICES)}")
    quantize = None if quantize == "none" else quantize
    path = Path(path).absolute()
    if (path / PARAMS_DIR).is_dir():
        saved = read_params_config(path)
        if saved.model.lora_rank:
            raise InputError(
                f"{path}: holds LoRA adapters alone (model.lora_rank={saved.model.lora_rank}); "
                f"give their base as MODEL and these with --adapters {path}, or export the "
                "run without --adapters-only to get a merged model"
            )
        kind = "export"
    elif (path / "checkpoints").is_dir():
        kind = "workdir"
    else:
        raise FileNotFoundError(
            f"{path} is neither an export (no {PARAMS_DIR}/) nor a training workdir "
            "(no checkpoints/)"
        )

    def configure(saved: Config) -> tuple[Config, nnx.State | None]:
        cfg = apply_overrides(saved, list(overrides))
        _check_overrides(saved, cfg, str(path))
        shardings = None
        if mesh is not None:
            shardings = param_shardings(abstract_model(cfg.model)[1], mesh)
        return cfg, shardings

    if kind == "export":
        cfg, shardings = configure(saved)
        params, _ = load_params(path, shardings=shardings, model=cfg.model)
        source = str(path)
    else:
        # The config is known only once the checkpoint is chosen: restore as saved
        # (merging LoRA), then apply overrides, which never change shapes.
        params, saved, step = restore_params(path)
        cfg, shardings = configure(saved)
        params = _cast_and_place(params, cfg, shardings)
        source = f"{path / 'checkpoints' / str(step)}"
    graphdef, _ = abstract_model(cfg.model)
    # The directory's own copy, never data.tokenizer resolved against the cwd.
    tokenizer_path = require_owned_tokenizer(path, cfg.data.tokenizer)
    if adapters is not None:
        params = apply_adapters(
            cfg,
            params,
            base_source=source,
            tokenizer=tokenizer_path,
            adapters_dir=adapters,
            shardings=shardings,
        )
        source = f"{source} + adapters {Path(adapters).absolute()}"
    if quantize == "int8":
        graphdef, params = quantize_params(cfg.model, graphdef, params, mesh=mesh, source=source)
        source = f"{source} (int8 weights)"
    tokenizer = load_tokenizer(tokenizer_path)
    return LoadedModel(cfg, graphdef, params, tokenizer, source, mesh, quantize)


def _cast_and_place(params: nnx.State, cfg: Config, shardings: nnx.State | None) -> nnx.State:
    dtypes = abstract_model(cfg.model)[1]
    cast = jax.tree.map(lambda x, a: np.asarray(x).astype(a.dtype), params, dtypes)
    if shardings is None:
        return cast
    return jax.device_put(cast, shardings)
