"""Model parameters without optimizer state: read from a run, written for a new one.

`restore_latest_params(workdir)` reads the params of the newest checkpoint a
training run wrote (jaxlm.checkpoint layout) into host memory as numpy, without
knowing the shardings it was trained with and without reading the optimizer state.

`save_params` / `load_params` write and read a *params directory*, the starting
point of a later run (e.g. continued pretraining after growing the vocabulary):

    DIR/params/          Orbax PyTree checkpoint of the params nnx.State: the tree of
                         TrainState.params, e.g. {"embed": {"value": [V, D]}, ...}
    DIR/config.json      the run Config it belongs to (model.vocab_size included)
    DIR/tokenizer.model  the matching tokenizer, with its tokenizer.json sidecar,
                         when one was given; config.json's data.tokenizer points here

`load_params(DIR)` gives the params as numpy; with `shardings` (a State of
NamedShardings, jaxlm.train_state.param_shardings) each is restored straight into
its shards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxlm.config import Config, config_from_dict
from jaxlm.data.tokenizer_metadata import sidecar_path
from jaxlm.errors import InputError
from jaxlm.train_state import abstract_model

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"


def restore_latest_params(workdir: Path | str) -> tuple[nnx.State, Config, int]:
    """(params as numpy, the run's Config, step) of the newest checkpoint in `workdir`."""
    directory = Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints directory: {directory}")
    json_item = ocp.JsonCheckpointHandler
    manager = ocp.CheckpointManager(
        directory,
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "data": json_item(),
            "config": json_item(),
        },
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise InputError(f"{directory} holds no finished checkpoint")
        saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        cfg = config_from_dict(saved["config"])
        # The params subtree only (partial restore), shaped by the saved config.
        _, abstract = abstract_model(cfg.model)
        item = {"params": abstract}
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=True)
            ),
        )
    finally:
        manager.close()
    return restored["state"]["params"], cfg, step


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
        tokenizer = Path(tokenizer)
        shutil.copyfile(tokenizer, directory / TOKENIZER_FILE)
        if sidecar_path(tokenizer).is_file():
            shutil.copyfile(sidecar_path(tokenizer), sidecar_path(directory / TOKENIZER_FILE))
    checkpointer = ocp.PyTreeCheckpointer()
    checkpointer.save(directory / PARAMS_DIR, params)
    # The config last: a directory with config.json is complete.
    (directory / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
    return directory


def load_params(
    directory: Path | str, *, shardings: nnx.State | None = None
) -> tuple[nnx.State, Config]:
    """(params, Config) of a params directory; numpy unless `shardings` are given."""
    directory = Path(directory).absolute()
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"not a params directory (no {CONFIG_FILE}): {directory}")
    try:
        cfg = config_from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as error:
        raise InputError(f"{config_path}: not valid JSON ({error})") from None
    _, abstract = abstract_model(cfg.model)
    if shardings is None:
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    else:
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        restore_args = jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape), abstract
        )
    params = ocp.PyTreeCheckpointer().restore(
        directory / PARAMS_DIR,
        args=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args),
    )
    return params, cfg
