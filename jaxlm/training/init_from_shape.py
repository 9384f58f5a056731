"""The model a run takes from `train.init_from`: its shape, unless the run sets it.

A run that starts from a params directory or a workdir must have that model's
parameter shapes, so the keys that define them (and the context length and RoPE
settings the model was trained with) are taken from the config.json there, except
those the user chose: a `--set model.KEY=...`, a `--preset`, or a value an experiment
file gives (one that differs from ModelConfig's default). A chosen key that defines
weights (jaxlm.config.WEIGHTS: unmarked fields) and differs from the saved model is
an error naming both values, before anything is built; chosen context length and
RoPE scaling stay (context extension starts from a shorter model on purpose).

Implementation choices (dtypes, attention kernel, scan, remat) and LoRA are the new
run's own and are never taken. data.tokenizer_vocab_size and data.seq_len follow the
taken model.vocab_size and model.max_seq_len unless set (jaxlm.config.IMPLIED).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxlm.config import ADDS_ADAPTERS, WEIGHTS, ConfigError, ModelConfig, config_from_dict

# The new run's own choice however the saved model was computed.
IMPLEMENTATION_KEYS = frozenset(
    {"param_dtype", "compute_dtype", "attention_impl", "scan_layers", "remat"}
)


def shape_keys() -> list[str]:
    """ModelConfig fields a saved model or a preset brings (no implementation, no LoRA)."""
    return [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.name not in IMPLEMENTATION_KEYS and f.metadata.get(WEIGHTS) != ADDS_ADAPTERS[WEIGHTS]
    ]


def defines_weights(key: str) -> bool:
    field = {f.name: f for f in dataclasses.fields(ModelConfig)}[key]
    return WEIGHTS not in field.metadata


def model_overrides(model: ModelConfig) -> list[str]:
    """`model.KEY=VALUE` for every shape key of `model` (what --set would say)."""
    return [f"model.{key}={getattr(model, key)}" for key in shape_keys()]


def saved_model(init_from: str) -> ModelConfig | None:
    """The model of `init_from`'s config.json, or None when it has none (the load then
    says what is missing)."""
    path = Path(init_from) / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return config_from_dict(data).model
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    except ConfigError as error:
        raise ConfigError(f"{path} (train.init_from): {error}") from None


def inherited_overrides(
    model: ModelConfig, saved: ModelConfig, chosen: dict[str, str], init_from: str
) -> list[str]:
    """`model.KEY=VALUE` of `saved` for every shape key not in `chosen` ({key: where the
    user chose it}); a chosen weight-defining key that differs is refused."""
    taken = []
    for key in shape_keys():
        mine, theirs = getattr(model, key), getattr(saved, key)
        if key not in chosen:
            taken.append(f"model.{key}={theirs}")
        elif mine != theirs and defines_weights(key):
            raise ConfigError(
                f"model.{key}={mine} (from {chosen[key]}) differs from {key}={theirs} of the "
                f"train.init_from model {init_from}, whose params would not fit; leave "
                f"model.{key} unset to take the model's own"
            )
    return taken
