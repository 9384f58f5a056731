"""An adapters-only export: LoRA adapters saved apart from their base, and which base that is.

`jaxlm export --adapters-only` writes a params directory (jaxlm.checkpointing.params_io)
whose params are the adapters (config.json: model.lora_rank > 0) and, beside it,

    DIR/lora_base.json   {"fingerprint": ..., "trained_from": ..., "tokenizer_sha256": ...}

Adapters are deltas: applied to any other base than the one they were trained on they
give a model that runs and talks nonsense, with nothing to say so. The record lets a
loader refuse that. `fingerprint` identifies the base params the run trained on (the
checkpoint's frozen base, not whatever train.init_from points at today): SHA-256 over
every base array's name, shape and the integrity fingerprint
(jaxlm.checkpointing.integrity) of its values rounded to bfloat16. The rounding makes a
bfloat16 copy of the same base (an export with --dtype bfloat16, or a load with
model.param_dtype=bfloat16) the same base, since rounding twice changes nothing; any
real difference (another pretrain, another step, a fine-tuned model) changes the
digest. It is computed where the arrays live, so a sharded base is never gathered.
`trained_from` (the run's train.init_from) is for messages only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jaxlm.checkpointing.integrity import device_fingerprints, host_fingerprint, json_digest
from jaxlm.checkpointing.params_io import PARAMS_DIR, load_params, read_params_config
from jaxlm.config import Config
from jaxlm.errors import InputError

BASE_FILE = "lora_base.json"


def _leaf_fingerprint(x: Any) -> int:
    if isinstance(x, np.ndarray):
        return host_fingerprint(x.astype(ml_dtypes.bfloat16))  # nearest even, as XLA rounds
    return next(iter(device_fingerprints([x.astype(jnp.bfloat16)]).values()))


def base_fingerprint(base: nnx.State) -> str:
    """The identity of a base params State (module docstring), as a hex digest.

    One array at a time, so the bfloat16 copies never add up to a second model.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(base)
    return json_digest(
        {
            jax.tree_util.keystr(path, simple=True, separator="."): [
                list(np.shape(x)),
                _leaf_fingerprint(x),
            ]
            for path, x in flat
        }
    )


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_base_record(
    directory: Path, *, fingerprint: str, trained_from: str, tokenizer: Path | None
) -> None:
    record = {
        "fingerprint": fingerprint,
        "trained_from": trained_from,
        "tokenizer_sha256": None if tokenizer is None else file_sha256(tokenizer),
    }
    (directory / BASE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_base_record(directory: Path | str) -> dict[str, Any]:
    """lora_base.json of an adapters-only export, checked to have its fields."""
    path = Path(directory) / BASE_FILE
    if not path.is_file():
        raise InputError(
            f"{directory}: adapters without {BASE_FILE} (exported by an older jaxlm, which "
            "did not record their base); export the LoRA run again with --adapters-only"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
        raise InputError(f"{path}: needs a 'fingerprint' string")
    return record


def read_adapters(directory: Path | str) -> tuple[nnx.State, Config, dict[str, Any]]:
    """(adapters, the LoRA run's Config, lora_base.json) of an adapters-only export."""
    directory = Path(directory).absolute()
    if (directory / "checkpoints").is_dir():
        raise InputError(
            f"{directory}: a training workdir, not exported adapters; export them with "
            f"`jaxlm export {directory} DIR --adapters-only` and give DIR"
        )
    if not (directory / PARAMS_DIR).is_dir():
        raise InputError(
            f"{directory}: not an adapters-only export (no {PARAMS_DIR}/); give the output "
            "of `jaxlm export LORA_RUN DIR --adapters-only`"
        )
    cfg = read_params_config(directory)
    if not cfg.model.lora_rank:
        raise InputError(f"{directory}: a plain model (model.lora_rank=0), not LoRA adapters")
    record = read_base_record(directory)
    adapters, cfg = load_params(directory)
    return adapters, cfg, record
