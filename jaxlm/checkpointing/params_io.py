"""Model parameters without optimizer state: read from a run, written for a new one.

`restore_params(workdir)` reads the params of a training run's newest good
checkpoint (jaxlm.checkpointing.manager layout; a damaged newer step is skipped with a
warning) without reading the optimizer state, verified against the checkpoint's
checksums: into host memory as numpy, or with `shardings` straight into them.

`save_params` / `load_params` write and read a *params directory*, the starting
point of a later run (`train.init_from`) or the result of `jaxlm export`:

    DIR/params/          Orbax PyTree checkpoint of the params nnx.State: the tree of
                         TrainState.params, e.g. {"embed": {"value": [V, D]}, ...}
    DIR/config.json      the run Config it belongs to (model.vocab_size included)
    DIR/checksum.json    a fingerprint of every array as stored and the digest of the
                         config (jaxlm.checkpointing.integrity), verified on every load
    DIR/tokenizer.model  the matching tokenizer, with its tokenizer.json sidecar,
                         when one was given; config.json's data.tokenizer points here
                         (hf_tokenizer.json instead for a Hugging Face tokenizer)

Every reader (`load_params`, hence `train.init_from`, generate, chat, eval and
`convert --to-hf`; `read_params_config` for the config alone) verifies what it reads
and refuses damage with DamagedParamsError, one line naming the directory and the
arrays (or file) that differ. params/_CHECKPOINT_METADATA (Orbax's record, committed
with the arrays) carries jaxlm's marker in its custom metadata: a directory with the
marker and no checksum.json is damaged. One without the marker, whose record is
readable, was written before params directories had checksums: it loads unverified
with a warning. A directory whose record and checksum.json are both gone is damaged:
nothing shows it is old.

The arrays may be stored in another dtype than config.json's model.param_dtype (a
bfloat16 export of an fp32 run): every load casts them to the dtype of the model it
loads into, so a bfloat16 export starts an fp32-param run (the widening cast is
exact; the precision lost in the export stays lost). The cast comes after the
verification: arrays are read in the dtype they were stored in, checked against the
fingerprints of what was stored, then cast.

`load_init_params(path, model)` is what `train.init_from` calls: `path` is a params
directory or a training workdir.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxlm.checkpointing.integrity import (
    describe_mismatch,
    fingerprints,
    json_digest,
    mismatched,
    step_metadata,
)
from jaxlm.checkpointing.manager import (
    CHECKSUM_VERSION,
    Checkpointer,
    _reason,
    _warn,
    as_saved,
    cast_like,
    restore_args_for,
)
from jaxlm.checkpointing.shapes import check_fits, saved_shapes
from jaxlm.config import Config, ModelConfig, config_differences, config_from_dict
from jaxlm.data.workdir_tokenizer import adopt_tokenizer
from jaxlm.errors import InputError
from jaxlm.models.lora import merge_lora, plain_config
from jaxlm.models.params import abstract_lora, abstract_model, keys_keeping_weights

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
CHECKSUM_FILE = "checksum.json"
# Key of jaxlm's marker in params/_CHECKPOINT_METADATA's custom metadata.
_MARKER = "jaxlm_checksum_file"


class DamagedParamsError(InputError):
    """A params directory whose files are not what was saved."""

    def __init__(self, directory: Path, reason: str):
        super().__init__(
            f"{directory}: damaged params directory: {reason}; export or copy it again"
        )


# Model keys a saved model may differ in and still give `train.init_from` its params:
# those that keep the weights (jaxlm.config.KEEPS_WEIGHTS) and LoRA's, since a LoRA
# run's params are restored merged (restore_params), i.e. as the plain model's, and
# plain params become a LoRA run's base.
_SAME_PARAMS = keys_keeping_weights(adapters=True)


def _target(model: ModelConfig, shardings: nnx.State | None) -> nnx.State:
    """Abstract params of `model`, carrying `shardings` when given."""
    _, abstract = abstract_model(model)
    if shardings is None:
        return abstract
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def restore_params(
    workdir: Path | str,
    *,
    step: int | None = None,
    model: ModelConfig | None = None,
    shardings: nnx.State | None = None,
    check_config=None,
) -> tuple[nnx.State, Config, int]:
    """(params, the run's Config, step) of a training run's checkpoint.

    The newest good step, or exactly `step`. Params take the shapes and dtypes of
    `model` (default: the checkpoint's own model) and, with `shardings`, are restored
    into them; otherwise they are numpy. `check_config(saved_config_dict, where)` may
    refuse the checkpoint before any array is read.
    """
    workdir = Path(workdir).absolute()
    if not workdir.is_dir():
        raise FileNotFoundError(f"no such workdir: {workdir}")
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        steps = checkpointer.all_steps()
        if step is not None and step not in steps:
            raise InputError(f"{checkpointer.directory}: no finished step {step} (have {steps})")

        def target(saved: dict) -> dict:
            saved_model = config_from_dict(saved).model
            if saved_model.lora_rank:  # adapters (params) on a frozen base (frozen)
                _, adapters, _ = abstract_lora(saved_model)
                plain = plain_config(model or saved_model)
                return {"params": adapters, "frozen": _target(plain, shardings)}
            return {"params": _target(model or saved_model, shardings)}

        restored = checkpointer.restore_latest_good(
            target,
            check_config=check_config,
            partial=True,
            steps=None if step is None else [step],
        )
    finally:
        checkpointer.close()
    if restored is None:
        raise InputError(f"{checkpointer.directory} holds no finished checkpoint")
    cfg = config_from_dict(restored.config)
    if "frozen" in restored.state:  # a LoRA run: W + (alpha / r) A B, the plain model's params
        params = merge_lora(cfg.model, restored.state["params"], restored.state["frozen"])
        cfg = dataclasses.replace(cfg, model=plain_config(cfg.model))
        return params, cfg, restored.step
    return restored.state["params"], cfg, restored.step


def restore_latest_params(workdir: Path | str) -> tuple[nnx.State, Config, int]:
    """(params as numpy, the run's Config, step) of the newest good checkpoint."""
    return restore_params(workdir)


def save_params(
    directory: Path | str,
    params: nnx.State,
    config: Config,
    *,
    tokenizer: Path | str | None = None,
) -> Path:
    """Writes a params directory (layout above); refuses an existing non-empty one."""
    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory} exists and is not empty; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        adopt_tokenizer(Path(tokenizer), directory)  # either kind, under its stored name
    config_text = config.to_json()
    checksum = {
        "version": CHECKSUM_VERSION,
        "params": fingerprints(params),  # of the arrays as stored, before any load casts
        "config": json_digest(json.loads(config_text)),
    }
    ocp.PyTreeCheckpointer().save(
        directory / PARAMS_DIR, params, custom_metadata={_MARKER: CHECKSUM_FILE}
    )
    (directory / CHECKSUM_FILE).write_text(json.dumps(checksum, indent=1) + "\n", "utf-8")
    # The config last: a directory with config.json is complete.
    (directory / CONFIG_FILE).write_text(config_text + "\n", encoding="utf-8")
    return directory


def _read_checksum(directory: Path) -> dict | None:
    """checksum.json of a params directory; None for a directory written before them."""
    path = directory / CHECKSUM_FILE
    if not path.is_file():
        record = step_metadata(directory / PARAMS_DIR)
        if record is None or _MARKER in (record.get("custom_metadata") or {}):
            raise DamagedParamsError(directory, f"{CHECKSUM_FILE} is missing")
        return None
    try:
        checksum = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedParamsError(
            directory, f"{CHECKSUM_FILE} is not valid JSON ({error})"
        ) from None
    if not isinstance(checksum, dict) or not isinstance(checksum.get("params"), dict):
        raise DamagedParamsError(directory, f"{CHECKSUM_FILE} has no params fingerprints")
    return checksum


def _read_config(directory: Path) -> tuple[Config, dict | None]:
    """(Config, checksum.json or None when written before checksums), config verified."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file() or not (directory / PARAMS_DIR).is_dir():
        raise FileNotFoundError(
            f"not a params directory (no {CONFIG_FILE} and {PARAMS_DIR}/): {directory}"
        )
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{config_path}: not valid JSON ({error})") from None
    checksum = _read_checksum(directory)
    if checksum is not None and json_digest(data) != checksum.get("config"):
        raise DamagedParamsError(
            directory, f"{CONFIG_FILE} does not match its checksum (changed after saving)"
        )
    return config_from_dict(data), checksum


def read_params_config(directory: Path | str) -> Config:
    """The Config of a params directory, verified (FileNotFoundError if it is not one)."""
    return _read_config(Path(directory).absolute())[0]


def load_params(
    directory: Path | str,
    *,
    shardings: nnx.State | None = None,
    model: ModelConfig | None = None,
) -> tuple[nnx.State, Config]:
    """(params, Config) of a params directory; numpy unless `shardings` are given.

    Arrays are verified against checksum.json as stored, then cast to the dtypes of
    `model` (default: config.json's model). A directory of LoRA adapters alone
    (`jaxlm export --adapters-only`: config.json has model.lora_rank > 0) gives the
    adapters. Raises DamagedParamsError when the files are not what was saved.
    """
    directory = Path(directory).absolute()
    cfg, checksum = _read_config(directory)
    if (model or cfg.model).lora_rank:
        target = abstract_lora(model or cfg.model)[1]
    else:
        target = _target(model or cfg.model, shardings)
    params = _read_as_stored(directory, target)
    if checksum is None:
        _warn(
            f"{directory} has no checksums (written before jaxlm recorded them): "
            "loaded without verification"
        )
    elif bad := mismatched(checksum["params"], fingerprints(params)):
        raise DamagedParamsError(directory, describe_mismatch(bad))
    return cast_like(params, target), cfg


def _read_as_stored(directory: Path, target: nnx.State) -> nnx.State:
    """The params of `directory` in `target`'s shapes and shardings, as stored (dtypes)."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            metadata = checkpointer.metadata(directory / PARAMS_DIR).item_metadata
        except Exception as error:  # any failure to read it back means unusable
            raise DamagedParamsError(directory, _reason(error)) from error
        metadata = getattr(metadata, "tree", metadata)
        if not saved_shapes(metadata):  # Orbax reports a missing _METADATA as no arrays
            raise DamagedParamsError(directory, f"{PARAMS_DIR}/_METADATA is missing or unreadable")
        check_fits(metadata, target, str(directory / PARAMS_DIR))
        stored = as_saved(target, metadata)
        try:
            return checkpointer.restore(
                directory / PARAMS_DIR,
                args=ocp.args.PyTreeRestore(item=stored, restore_args=restore_args_for(stored)),
            )
        except Exception as error:
            raise DamagedParamsError(directory, _reason(error)) from error


def _refuse_other_model(saved: ModelConfig, model: ModelConfig, source: str) -> None:
    changed = [
        change
        for change in config_differences(
            dataclasses.asdict(saved), dataclasses.asdict(model), "model."
        )
        if change.split(":")[0].removeprefix("model.") not in _SAME_PARAMS
    ]
    if changed:
        raise InputError(f"{source}: its params do not fit this model (" + "; ".join(changed) + ")")


def saved_score_head(path: Path | str) -> bool:
    """Whether the model saved at `path` (a params directory or a workdir) has a score
    head (model.score_head); a workdir is asked through its config.json."""
    path = Path(path).absolute()
    if (path / PARAMS_DIR).is_dir():
        return read_params_config(path).model.score_head
    config = path / "config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8"))["model"]["score_head"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return False
    return False


def load_init_params(
    path: Path | str, model: ModelConfig, *, shardings: nnx.State | None = None
) -> tuple[nnx.State, str]:
    """Params for `train.init_from`: (params cast to `model`'s dtypes, a description).

    `path` is a params directory (DIR/params + DIR/config.json) or a training workdir
    (DIR/checkpoints: the params of its newest good checkpoint). Either way its model
    must have the same parameter shapes as `model`; dtypes may differ (cast on load).
    """
    path = Path(path).absolute()
    if (path / PARAMS_DIR).is_dir():
        _refuse_other_model(read_params_config(path).model, model, str(path))
        params, _ = load_params(path, shardings=shardings, model=model)
        return params, f"params directory {path}"
    if (path / "checkpoints").is_dir():

        def check(saved: dict, where: str) -> None:
            _refuse_other_model(config_from_dict(saved).model, model, where)

        params, _, step = restore_params(path, model=model, shardings=shardings, check_config=check)
        return params, f"{path / 'checkpoints' / str(step)} (params only)"
    raise FileNotFoundError(
        f"train.init_from: {path} is neither a params directory (no {PARAMS_DIR}/) nor a "
        "training workdir (no checkpoints/)"
    )
