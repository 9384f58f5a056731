"""Orbax checkpoints of the train state together with the data position and config.

Each step directory holds three items:
  state   - the TrainState, restored straight into the shardings it was trained with
  data    - every process's data-iterator state (JSON), so a resumed run reads on
            from the same batch instead of re-reading or skipping data
  config  - the run's Config as JSON, compared with the new run's on resume

Orbax writes into a temporary directory and renames it when complete, so a crash
mid-save never leaves a half-written step that looks finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm.train_state import TrainState


class Checkpointer:
    """Save and restore (state, data-iterator state, config) under `<workdir>/checkpoints`."""

    def __init__(self, directory: Path, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict[str, Any], config_json: str):
        data = {f"process_{jax.process_index()}": _jsonable(data_state)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data),
                config=ocp.args.JsonSave(json.loads(config_json)),
            ),
        )

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict, dict]:
        """Restore into `abstract_state`'s shapes and shardings (ShapeDtypeStructs)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        data = restored.data.get(f"process_{jax.process_index()}")
        if data is None:
            raise ValueError(
                f"{self.directory / str(step)}: no data-iterator state for process "
                f"{jax.process_index()} (saved with a different process count?)"
            )
        return restored.state, data, restored.config

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _jsonable(data_state: Any) -> Any:
    """Grain iterator states are dicts of str/int; bytes (if any) become latin-1 text."""
    if isinstance(data_state, bytes):
        return {"__bytes__": data_state.decode("latin-1")}
    if isinstance(data_state, dict):
        return {str(k): _jsonable(v) for k, v in data_state.items()}
    if isinstance(data_state, list | tuple):
        return [_jsonable(v) for v in data_state]
    return data_state


def from_jsonable(data: Any) -> Any:
    if isinstance(data, dict):
        if set(data) == {"__bytes__"}:
            return data["__bytes__"].encode("latin-1")
        return {k: from_jsonable(v) for k, v in data.items()}
    if isinstance(data, list):
        return [from_jsonable(v) for v in data]
    return data


def abstract_like(state_shardings: TrainState, abstract_state: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying the shardings: the restore target."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )
