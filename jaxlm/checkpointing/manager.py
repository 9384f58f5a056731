"""Orbax checkpoints of the train state with the data position, config and checksums.

Each step directory `<workdir>/checkpoints/<step>` holds four items:
  state     the TrainState; restored straight into the restoring run's shardings,
            which may be another mesh or device count (arrays are resharded on read)
  data      every process's data-iterator state (JSON; gathered to the primary
            process, which writes it), so a resumed run reads on from the same batch
            instead of re-reading or skipping data
  config    the run's Config as JSON, compared with the new run's on resume
  checksum  a fingerprint of every state array and digests of the JSON items
            (jaxlm.checkpointing.integrity), verified on every restore

Saves are asynchronous: `save` returns once the arrays are off the devices and the
files are written in the background. Orbax writes into `<step>.orbax-checkpoint-tmp-*`
and renames it when complete, so a crash mid-save never leaves a step that looks
finished; a Checkpointer that opens the directory later deletes such leftovers.

A save that fails (a full disk, a read-only directory) raises CheckpointSaveError
naming the step, the path, the OS error and the last finished step, at the latest on
the first `raise_if_failed`, `save` or `wait` after it failed; the step directory is
created synchronously in `save`, so an unwritable directory fails there, before any
background thread exists (a failure in Orbax's directory thread leaves its other
threads waiting out a 20-minute timeout). `wait` polls Orbax from the calling thread
in short slices: a signal handler runs meanwhile, and a bound ends the wait. Since the
error reaches the caller as that one line, Orbax's logged tracebacks of the same OS
error, and TensorStore's reports of callbacks into the event loops that the failed
save closed, are dropped (those only; every other error is still logged).

Retention: the newest `keep` steps, plus every step that is a multiple of
`keep_every` (when > 0) forever. Old steps are deleted only after a newer save has
finished, so a failed save never deletes the last good checkpoint.

Every restore reads the arrays in the dtypes they were saved in, verifies all of
them against the checksums, and only then casts them to the target's dtypes (a
bfloat16 params checkpoint into an fp32 model): no leaf goes unverified.

`restore_latest_good` tries steps newest first. A step that cannot be read back as it
was saved (an unreadable file, a checksum mismatch, a missing `state/_METADATA`, a
missing checksum item) is reported by a warning naming the step and the reason, moved
aside to `<step>.corrupt`, and the step before it is tried. Only a step whose own
Orbax record (`_CHECKPOINT_METADATA`) lists its items without a checksum was written
before jaxlm recorded checksums; it restores unverified, with a warning
(jaxlm.checkpointing.integrity explains the rule). If no step can be restored,
NoRestorableCheckpointError lists every step and reason: a run never silently
starts over. A checkpoint that does not fit the model
(CheckpointMismatchError) or the run's config (the caller's `check_config`) is refused
at once: that is not damage, and an older step would not fit either.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxlm.checkpointing.integrity import (
    describe_mismatch,
    device_fingerprints,
    fingerprints,
    json_digest,
    leaf_names,
    mismatched,
    step_metadata,
)
from jaxlm.checkpointing.shapes import check_fits, saved_dtypes, saved_shapes
from jaxlm.errors import InputError, StorageError

CHECKSUM_VERSION = 1
_REASON_CHARS = 300  # TensorStore errors embed whole specs; the first line says enough


class CorruptCheckpointError(RuntimeError):
    """A finished step that cannot be restored as it was saved."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step = step
        self.reason = reason


class CheckpointSaveError(StorageError):
    """A save did not reach the disk; the message names the step, path and OS error."""


class NoRestorableCheckpointError(InputError):
    """Checkpoints exist but none can be restored; the message names each step and why."""


@dataclasses.dataclass
class Restored:
    """One restored step."""

    step: int
    state: Any
    data: dict[str, Any] | None  # this process's data-iterator state; None for params-only
    config: dict[str, Any]
    verified: bool  # False for checkpoints written before checksums existed


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"jaxlm: warning: {message}", file=sys.stderr, flush=True)


def _reason(error: BaseException) -> str:
    """One line: the innermost cause, which names the file (Orbax wraps it generically)."""
    seen = [error]
    while (nxt := seen[-1].__cause__ or seen[-1].__context__) is not None and nxt not in seen:
        seen.append(nxt)
    for candidate in reversed(seen):
        text = str(candidate).split(" See full TensorStore details")[0].strip()
        if text:
            line = text.splitlines()[0][:_REASON_CHARS]
            return f"{type(candidate).__name__}: {line}"
    return type(error).__name__


class _QuietOsErrors(logging.Filter):
    """Drops Orbax's logged tracebacks of an OSError: the failed save they belong to
    reaches the caller as one CheckpointSaveError line. Any other error is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.pathname.find("orbax") >= 0 and _os_error(error) is not None)


class _QuietOrphanedWriteErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" report (with its traceback)
    of an Orbax write task that ended on an OS error (a full disk): when one write of a
    save fails, Orbax's sibling write tasks can fail the same way after nobody awaits
    them any more, and asyncio logs each as it is collected. The failed save reaches
    the caller as one CheckpointSaveError line; any other orphaned error is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        return not (
            message.startswith("Task exception was never retrieved")
            and "orbax" in message
            and _os_error(error) is not None
        )


class _QuietReadOnlyNotices(logging.Filter):
    """Drops the three warnings Orbax logs for every read-only manager (save interval 0,
    no create, "Given directory is read only"): jaxlm opens checkpoints read-only on
    purpose to load them (init_from, generate, eval, export), so they say nothing the
    user can act on and would repeat at every load. Orbax's other warnings pass."""

    NOTICES = (
        "CheckpointManagerOptions.read_only=True, setting",
        "Given directory is read only=",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.find("orbax") >= 0
            and record.levelno == logging.WARNING
            and any(notice in record.getMessage() for notice in self.NOTICES)
        )


def _os_error(error: BaseException | None) -> OSError | None:
    """The OS error that caused `error` (itself, or along its cause chain), if any.

    TensorStore reports one as a ValueError ending in `[os_error_code='28']`."""
    seen = []
    while error is not None and error not in seen:
        if isinstance(error, OSError):
            return error
        code = re.search(r"os_error_code='(\d+)'", str(error))
        if code:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def _closed_loop_aftermath(error: BaseException | None) -> bool:
    """Once one of Orbax's save threads ends on an error its event loop is closed, and
    TensorStore, finishing the writes still queued, reports the RuntimeError of each
    callback into that loop from its own threads (through sys.unraisablehook or
    sys.excepthook). Only that error, off the main thread, is this aftermath."""
    return (
        isinstance(error, RuntimeError)
        and str(error) == "Event loop is closed"
        and threading.current_thread() is not threading.main_thread()
    )


def _quiet_unraisable(previous_hook):
    def hook(unraisable) -> None:
        if not _closed_loop_aftermath(unraisable.exc_value):
            previous_hook(unraisable)

    return hook


def _quiet_excepthook(previous_hook):
    def hook(kind, error, traceback) -> None:
        if not _closed_loop_aftermath(error):
            previous_hook(kind, error, traceback)

    return hook


logging.getLogger("absl").addFilter(_QuietOsErrors())
logging.getLogger("absl").addFilter(_QuietReadOnlyNotices())
logging.getLogger("asyncio").addFilter(_QuietOrphanedWriteErrors())
sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
sys.excepthook = _quiet_excepthook(sys.excepthook)


def _everywhere(ok: bool) -> bool:
    """True only if `ok` on every process: all processes must pick the same step."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def restore_args_for(target: Any) -> Any:
    """Into the target's shardings when it has them, else into host numpy arrays.

    Arrays are read in the target's dtypes; restore `as_saved(target, ...)` and then
    `cast_like` so that the checksums see the values as saved.
    """

    def one(leaf):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
        return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape, dtype=leaf.dtype)

    return jax.tree.map(one, target)


def as_saved(target: Any, metadata_tree: Any) -> Any:
    """`target` with each leaf in the dtype it was saved in (shape and sharding kept).

    Restoring this and casting afterwards (`cast_like`) lets the checksums, which are
    of the saved values, verify every leaf, also those the model holds in another
    dtype (a bfloat16 export loaded into fp32 params).
    """
    dtypes = saved_dtypes(metadata_tree)
    leaves, treedef = jax.tree.flatten(target)
    stored = [
        jax.ShapeDtypeStruct(
            leaf.shape, dtypes.get(name, leaf.dtype), sharding=getattr(leaf, "sharding", None)
        )
        for name, leaf in zip(leaf_names(target), leaves, strict=True)
    ]
    return treedef.unflatten(stored)


@functools.partial(jax.jit, static_argnums=1)
def _cast(x: jax.Array, dtype: Any) -> jax.Array:
    return x.astype(dtype)  # elementwise: the result keeps x's sharding


def cast_like(tree: Any, target: Any) -> Any:
    """`tree`'s arrays in `target`'s dtypes (numpy stays numpy, jax.Arrays stay put)."""

    def one(x, want):
        if x.dtype == want.dtype:
            return x
        if isinstance(x, np.ndarray):
            return x.astype(want.dtype)
        return _cast(x, np.dtype(want.dtype))

    return jax.tree.map(one, tree, target)


class Checkpointer:
    """Save and restore (state, data-iterator state, config) under `directory`."""

    def __init__(
        self,
        directory: Path | str,
        *,
        keep: int = 3,
        keep_every: int = 0,
        async_save: bool = True,
        read_only: bool = False,
        warn: Callable[[str], None] = _warn,
    ):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.warn = warn
        self._in_flight: int | None = None  # the step being saved in the background
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoints directory: {self.directory}")
        policies = ocp.checkpoint_managers
        policy = policies.LatestN(n=keep)
        if keep_every:
            policy = policies.AnyPreservationPolicy(
                [policy, policies.EveryNSteps(interval_steps=keep_every)]
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=None if read_only else policy,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        )
        json_item = ocp.JsonCheckpointHandler
        self.manager = ocp.CheckpointManager(
            self.directory,
            # The PyTree handler for the state, so params can be read on their own.
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "data": json_item(),
                "config": json_item(),
                "checksum": json_item(),
            },
            options=options,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # ------------------------------------------------------------------------ save

    def save(self, step: int, state: Any, data_state: dict[str, Any], config_json: str) -> None:
        """Start an asynchronous save of `state` (jax.Arrays) at `step`."""
        data = _every_process(_jsonable(data_state))
        config = json.loads(config_json)
        # Computed on the devices before the arrays are copied off them; the one
        # synchronous cost jaxlm adds to Orbax's (benchmarks/checkpoint_save.py).
        checksum = {
            "version": CHECKSUM_VERSION,
            "state": device_fingerprints(state),
            "data": json_digest(data),
            "config": json_digest(config),
        }
        self.wait()  # the previous save: Orbax would wait for it, unbounded
        self._in_flight = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(state),
                    data=ocp.args.JsonSave(data),
                    config=ocp.args.JsonSave(config),
                    checksum=ocp.args.JsonSave(checksum),
                ),
            )
        except Exception as error:
            self._in_flight = None
            self._raise_save_error(step, error)

    @property
    def in_flight(self) -> int | None:
        """The step being saved, until a `wait` for it returned or raised."""
        return self._in_flight

    def raise_if_failed(self) -> None:
        """Raises CheckpointSaveError if the save in flight has failed; never blocks."""
        if self._in_flight is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the save in flight is on disk, for at most `timeout` seconds.

        Raises CheckpointSaveError if it failed or did not finish in time. The wait
        runs in a helper thread and this one polls it, so signal handlers run (a
        second SIGTERM can end a wait on a hung filesystem).
        """
        step, self._in_flight = self._in_flight, None
        if step is None:
            return
        outcome: list[BaseException] = []

        def wait_for_orbax() -> None:
            try:
                self.manager.wait_until_finished()
            except BaseException as error:  # handed to the waiting thread
                outcome.append(error)

        waiter = threading.Thread(target=wait_for_orbax, name="jaxlm-save-wait", daemon=True)
        waiter.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiter.is_alive():
            if deadline is not None and time.monotonic() > deadline:
                self._raise_save_error(step, TimeoutError(f"not finished after {timeout:g}s"))
            waiter.join(0.1)
        if outcome:
            self._raise_save_error(step, outcome[0])

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def finished_steps(self) -> list[int]:
        """Steps on disk now that a save completed (Orbax renames a step when done)."""
        if not self.directory.is_dir():
            return []
        names = (p.name for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(name) for name in names if name.isdigit())

    def last_saved(self) -> str:
        """Where a resumed run would start, in words."""
        steps = self.finished_steps()
        if not steps:
            return "no checkpoint yet"
        return f"last checkpoint: step {steps[-1]} in {self.directory}"

    def _raise_save_error(self, step: int, error: BaseException) -> None:
        """CheckpointSaveError for an OS error or a timeout; anything else is a bug
        and raised as it is, with its traceback."""
        cause = _os_error(error) or (error if isinstance(error, TimeoutError) else None)
        if cause is None:
            raise error
        raise CheckpointSaveError(
            f"could not save step {step} to {self.step_dir(step)}: "
            f"{type(cause).__name__}: {cause}; {self.last_saved()} (kept). Make room or "
            "make the directory writable, then run the same command again to resume"
        ) from error

    # --------------------------------------------------------------------- restore

    def restore(
        self,
        step: int,
        target: Any | Callable[[dict[str, Any]], Any],
        *,
        check_config: Callable[[dict[str, Any], str], None] | None = None,
        partial: bool = False,
    ) -> Restored:
        """Restore `step` into `target`, verified against its checksums.

        `target` is a pytree of ShapeDtypeStructs (with shardings: restored as sharded
        jax.Arrays; without: as numpy), or a function of the saved config returning one.
        `partial` restores a subtree of the state (e.g. `{"params": ...}`) and skips
        the data item. Raises CorruptCheckpointError when the step cannot be read back
        as saved, CheckpointMismatchError when it does not fit `target`, and whatever
        `check_config(saved_config, where)` raises.
        """
        where = str(self.step_dir(step))
        has_checksum = (self.step_dir(step) / "checksum").is_dir()
        if not has_checksum and not _predates_checksums(self.step_dir(step)):
            raise CorruptCheckpointError(
                step,
                "the checksum item is missing (only steps written before jaxlm recorded "
                "checksums may lack it)",
            )
        head_args = {"config": ocp.args.JsonRestore()}
        if has_checksum:
            head_args["checksum"] = ocp.args.JsonRestore()
        try:
            head = self.manager.restore(step, args=ocp.args.Composite(**head_args))
        except Exception as error:  # any failure to read it back means unusable
            raise CorruptCheckpointError(step, _reason(error)) from error
        config = head["config"]
        checksum = head["checksum"] if has_checksum else None
        if checksum is not None and json_digest(config) != checksum.get("config"):
            raise CorruptCheckpointError(step, "the config item does not match its checksum")
        if check_config is not None:
            check_config(config, where)
        if callable(target):
            target = target(config)

        try:
            metadata = self.manager.item_metadata(step)["state"]
            metadata = getattr(metadata, "tree", metadata)
        except Exception as error:
            raise CorruptCheckpointError(step, _reason(error)) from error
        if not saved_shapes(metadata):  # Orbax reports a missing _METADATA as no arrays
            raise CorruptCheckpointError(
                step, "the state item's metadata (state/_METADATA) is missing or unreadable"
            )
        check_fits(metadata, target, where, partial=partial)

        stored = as_saved(target, metadata)
        args = {
            "state": ocp.args.PyTreeRestore(
                item=stored, restore_args=restore_args_for(stored), partial_restore=partial
            )
        }
        if not partial:
            args["data"] = ocp.args.JsonRestore()
        try:
            body = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as error:
            raise CorruptCheckpointError(step, _reason(error)) from error
        state = body["state"]

        data = None
        if not partial:
            if checksum is not None and json_digest(body["data"]) != checksum.get("data"):
                raise CorruptCheckpointError(step, "the data item does not match its checksum")
            data = self._data_of_this_process(body["data"], where)
        if checksum is not None:
            bad = mismatched(checksum["state"], fingerprints(state))
            if bad:
                raise CorruptCheckpointError(step, describe_mismatch(bad))
        state = cast_like(state, target)
        return Restored(step, state, data, config, verified=checksum is not None)

    @staticmethod
    def _data_of_this_process(data: dict[str, Any], where: str) -> dict[str, Any]:
        """This process's data position; refuses a checkpoint of another process count.

        Each process reads its own shard of the data, so N saved positions do not map
        onto M processes: resuming would re-read or skip documents.
        The model state would restore onto any device count; the data position not.
        """
        saved, now = len(data), jax.process_count()
        if saved != now:
            raise InputError(
                f"{where}: saved by {saved} process(es), this run has {now}. Each process's "
                "data position is part of the checkpoint and cannot be split or merged; "
                f"resume with {saved} process(es), or start a new run from its params with "
                f"train.init_from={Path(where).parent.parent} (fresh optimizer and data order)"
            )
        return data[f"process_{jax.process_index()}"]

    def restore_latest_good(
        self,
        target: Any | Callable[[dict[str, Any]], Any],
        *,
        check_config: Callable[[dict[str, Any], str], None] | None = None,
        partial: bool = False,
        steps: list[int] | None = None,
    ) -> Restored | None:
        """The newest step that restores and verifies; None when there is no checkpoint.

        Unusable newer steps are warned about and, when writable, moved aside so a
        resumed run can save those step numbers again. Raises
        NoRestorableCheckpointError when checkpoints exist but none is usable.
        """
        candidates = sorted(self.manager.all_steps() if steps is None else steps, reverse=True)
        failures: list[CorruptCheckpointError] = []
        for step in candidates:
            error = None
            try:
                restored = self.restore(step, target, check_config=check_config, partial=partial)
            except CorruptCheckpointError as e:
                error = e
            if not _everywhere(error is None) and error is None:
                error = CorruptCheckpointError(step, "could not be restored on another process")
            if error is not None:
                failures.append(error)
                self.warn(
                    f"checkpoint {self.step_dir(step)} is unusable ({error.reason}); "
                    "trying the step before it"
                )
                continue
            if not restored.verified:
                self.warn(
                    f"checkpoint {self.step_dir(step)} has no checksums (written before jaxlm "
                    "recorded them): restored without verification"
                )
            if failures:
                moved = self._set_aside([f.step for f in failures])
                self.warn(
                    f"restored step {step} instead of the newest "
                    f"{', '.join(str(f.step) for f in failures)}"
                    + (f"; unusable steps moved to {', '.join(moved)}" if moved else "")
                )
            return restored
        if failures:
            listed = "; ".join(str(f) for f in failures)
            raise NoRestorableCheckpointError(
                f"{self.directory}: no checkpoint can be restored ({listed}). Refusing to "
                "start over from scratch: repair or remove these steps, or use a new workdir"
            )
        return None

    def _set_aside(self, steps: list[int]) -> list[str]:
        """Rename unusable steps to `<step>.corrupt` (kept for inspection, not reused)."""
        if self.read_only:
            return []
        moved = []
        for step in steps:
            source = self.step_dir(step)
            dest = self.directory / f"{step}.corrupt"
            n = 1
            while dest.exists():
                n += 1
                dest = self.directory / f"{step}.corrupt.{n}"
            if jax.process_index() == 0 and source.exists():
                source.rename(dest)
            moved.append(str(dest))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("jaxlm_checkpoint_set_aside")
        self.manager.reload()
        return moved


def _predates_checksums(step_dir: Path) -> bool:
    """True when Orbax's record of the step's items shows it was saved without checksums.

    jaxlm has saved a `checksum` item in every step since it recorded checksums; a
    step whose record is gone proves nothing (jaxlm.checkpointing.integrity).
    """
    record = step_metadata(step_dir) or {}
    items = record.get("item_handlers")
    return isinstance(items, dict) and "state" in items and "checksum" not in items


def _every_process(mine: Any) -> dict[str, Any]:
    """{"process_<i>": data state of process i} for all processes, on every process.

    Orbax writes JSON items from the primary process only, so each process's own
    iterator position must reach it first (a collective: every process calls save).
    """
    if jax.process_count() == 1:
        return {"process_0": mine}
    text = np.frombuffer(json.dumps(mine).encode("utf-8"), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(text.size)))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: text.size] = text
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return {
        f"process_{i}": json.loads(bytes(rows[i, :n]).decode("utf-8"))
        for i, n in enumerate(lengths.tolist())
    }


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


def abstract_like(state_shardings: Any, abstract_state: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings: the restore target."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        abstract_state,
        state_shardings,
    )
