"""LoRA adapters applied to their base for inference: `--adapters DIR` on a base MODEL.

    model = load_model("exports/base", adapters="exports/sft-adapters")

DIR is an adapters-only export (`jaxlm export RUN DIR --adapters-only`;
jaxlm.checkpointing.adapters_io). Before anything is merged the base is checked to be
the one the adapters were trained on, most telling check first:

  1. the model's shape: the adapters' run, without its adapters, must have the
     base's weight shapes (d_model, layers, heads, vocab, ...);
  2. the tokenizer: the same file bytes as the run's (a base loads its own);
  3. the base params' fingerprint equals the one recorded at export (a bfloat16 copy of
     the right base passes; anything else is refused).

Then each adapted weight becomes W + (alpha / r) A B (jaxlm.models.lora.merge_lora,
the merge `jaxlm export` does), so what runs is a plain model: generation, chat and
evaluation are the merged export's, token for token.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from jaxlm.checkpointing.adapters_io import base_fingerprint, file_sha256, read_adapters
from jaxlm.config import Config, config_differences
from jaxlm.errors import InputError
from jaxlm.models.lora import merge_lora, plain_config
from jaxlm.models.params import keys_keeping_weights

_SAME_SHAPES = keys_keeping_weights(adapters=True)


def _shape_changes(adapters_model, base_model) -> list[str]:
    return [
        change
        for change in config_differences(
            dataclasses.asdict(plain_config(adapters_model)),
            dataclasses.asdict(base_model),
            "model.",
        )
        if change.split(":")[0].removeprefix("model.") not in _SAME_SHAPES
    ]


def apply_adapters(
    cfg: Config,
    params: nnx.State,
    *,
    base_source: str,
    tokenizer: Path,
    adapters_dir: Path | str,
    shardings: nnx.State | None = None,
) -> nnx.State:
    """The base `params` (of `cfg`, from `base_source`) with the adapters of
    `adapters_dir` merged in; InputError (module docstring) for another base."""
    adapters_dir = Path(adapters_dir).absolute()
    adapters, lora_cfg, record = read_adapters(adapters_dir)
    trained = record.get("trained_from") or "a random one (the run had no train.init_from)"
    wrong = f"--adapters {adapters_dir} were trained on another base than {base_source}"
    if changes := _shape_changes(lora_cfg.model, cfg.model):
        raise InputError(f"{wrong} (" + "; ".join(changes) + f"); their base: {trained}")
    recorded_tokenizer = record.get("tokenizer_sha256")
    if recorded_tokenizer and recorded_tokenizer != file_sha256(tokenizer):
        raise InputError(f"{wrong}: its tokenizer {tokenizer} differs; their base: {trained}")
    if base_fingerprint(params) != record["fingerprint"]:
        raise InputError(
            f"{wrong}: its params' fingerprint differs from the one recorded in "
            f"{adapters_dir / 'lora_base.json'}; their base: {trained}"
        )
    model = dataclasses.replace(
        cfg.model,
        lora_rank=lora_cfg.model.lora_rank,
        lora_alpha=lora_cfg.model.lora_alpha,
        lora_targets=lora_cfg.model.lora_targets,
    )
    merged = merge_lora(model, adapters, params)
    if shardings is not None:
        merged = jax.device_put(merged, shardings)
    return merged
