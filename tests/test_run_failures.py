"""Runs that cannot go on end promptly, in one line, and leave the workdir as it was.

A save that fails (a read-only checkpoints directory, a full disk), a non-finite loss
with a save still in flight, a signal while a save is stuck, a refused resume: each
ends the `jaxlm train` process within seconds with one `jaxlm: error: ...` line and
the documented exit status, no traceback, and every finished checkpoint intact.

Failure injection. Where this machine lets the test mount (root in a VM), the full
disk is a 5 MB tmpfs and the read-only directory a read-only bind mount, both
unmounted in a `finally`. Where it does not (CI containers), the same OS errors
come from the kernel another way: the training process runs under RLIMIT_FSIZE with
SIGXFSZ ignored, so a write past the limit fails with EFBIG ("File too large"), and
a non-root user gets a read-only directory from chmod. JAXLM_TEST_NO_MOUNT=1 forces
the fallbacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.runs import (
    TINY,
    environment,
    jaxlm,
    make_tokenizer,
    records,
    run,
    running,
    saved_steps,
    tail,
    train_args,
    wait_until,
)

from jaxlm.errors import StorageError
from jaxlm.runtime.distributed import peer_loss_message
from jaxlm.runtime.preemption import StopNow, StopRequest
from jaxlm.training.metrics import MetricsWriter

SAVE_FAILED = 74  # cli.py: a checkpoint or metrics file could not be written
RUN_STOPPED = 3  # cli.py: the run stopped itself (non-finite loss, loss spikes)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/jaxlm-mount-probe-{uuid.uuid4().hex}")
    probe.mkdir()
    try:
        made = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True
        )
        if made.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


# JAXLM_TEST_NO_MOUNT=1 tries the fallbacks on a machine that could mount.
CAN_MOUNT = not os.environ.get("JAXLM_TEST_NO_MOUNT") and _can_mount()


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _with_file_size_limit(cmd: list[str], limit: int) -> list[str]:
    """`cmd` run under RLIMIT_FSIZE: a longer write fails with EFBIG from the kernel."""
    setup = (
        "import os, resource, signal, sys; "
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", setup, *cmd]


@contextlib.contextmanager
def full_disk(workdir: Path, cmd: list[str]):
    """The command to run so that `workdir` fills up after a few MB (with the
    file-size fallback: no file may grow past 64 KB)."""
    workdir.mkdir(parents=True)
    if not CAN_MOUNT:
        yield _with_file_size_limit(cmd, 64 * 1024), r"File too large"
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(workdir)], check=True)
    try:
        yield cmd, r"No space left on device"
    finally:
        _umount(workdir)


@contextlib.contextmanager
def read_only(directory: Path, cmd: list[str]):
    """The command to run so that nothing can be written in `directory` (with the
    file-size fallback: no file past 64 KB anywhere, which a checkpoint of the tiny
    model needs and a metrics line does not)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield cmd, r"Permission denied"
        finally:
            directory.chmod(0o755)
        return
    if not CAN_MOUNT:
        yield _with_file_size_limit(cmd, 64 * 1024), r"File too large"
        return
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)
        yield cmd, r"Read-only file system"
    finally:
        _umount(directory)


def _error_lines(log: Path) -> list[str]:
    return [
        line for line in log.read_text(errors="replace").splitlines() if "jaxlm: error:" in line
    ]


def _assert_one_clear_line(log: Path, *patterns: str) -> str:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, tail(log, 80)
    lines = _error_lines(log)
    assert len(lines) == 1, tail(log, 80)
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


def _leftover_tmp(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").glob("*tmp*"))


# ------------------------------------------------------------------ item 1: failed saves


@pytest.mark.slow  # two runs: ~40 s on 2 idle cores
@pytest.mark.timeout(400)
def test_read_only_checkpoints_stop_the_run_at_once_and_keep_the_saved_steps(tmp_path, tokenizer):
    overrides = [*TINY, f"data.tokenizer={tokenizer}", "train.checkpoint_every=2"]
    work = tmp_path / "run"
    env = environment(2)
    first = [*overrides, "train.steps=4"]
    assert run(jaxlm(*train_args(work, first)), env, tmp_path / "first.log", 120) == 0
    assert saved_steps(work) == [2, 4]

    log = tmp_path / "rerun.log"
    longer = [*overrides, "train.steps=200", "train.allow_config_change=train.steps"]
    cmd = jaxlm(*train_args(work, longer))
    with read_only(work / "checkpoints", cmd) as (cmd, os_error):
        code = run(cmd, env, log, 150)  # today: Orbax waits out its timeout (~300 s+)
    assert code == SAVE_FAILED, tail(log, 80)
    checkpoints = re.escape(str(work / "checkpoints"))
    _assert_one_clear_line(log, r"step 6", checkpoints, os_error, r"step 4")
    assert saved_steps(work) == [2, 4]  # the good steps were neither deleted nor changed
    assert max(r["step"] for r in records(work)) < 10  # stopped at once, not steps later


@pytest.mark.timeout(240)
def test_a_full_disk_stops_the_run_with_one_line(tmp_path, tokenizer):
    overrides = [
        *TINY,
        f"data.tokenizer={tokenizer}",
        "train.steps=100000",
        "train.checkpoint_every=5",
        "train.keep_checkpoints=100000",  # nothing deleted: the disk must fill up
    ]
    work = tmp_path / "run"
    log = tmp_path / "run.log"
    with full_disk(work, jaxlm(*train_args(work, overrides))) as (cmd, os_error):
        # Today the TensorBoard writer thread dies and the loop blocks forever on its
        # full queue, deaf to SIGTERM: the wait below times out.
        code = run(cmd, environment(2), log, 120)
        assert code == SAVE_FAILED, tail(log, 80)
        _assert_one_clear_line(log, re.escape(str(work)), os_error)
        steps = saved_steps(work)
    assert all(step % 5 == 0 for step in steps)


# --------------------------------------------------- item 1: signals while a save is stuck


@pytest.mark.timeout(240)
def test_a_second_sigterm_ends_a_run_whose_save_is_stuck(tmp_path, tokenizer):
    # tests/helpers/stuck_save_train.py blocks the second save inside Orbax, as a
    # hung filesystem would; the first SIGTERM asks for a save, which cannot finish.
    overrides = [*TINY, f"data.tokenizer={tokenizer}", "train.checkpoint_every=2"]
    work = tmp_path / "run"
    log = tmp_path / "run.log"
    args = train_args(work, [*overrides, "train.steps=100"])
    cmd = [sys.executable, str(Path(__file__).parent / "helpers" / "stuck_save_train.py"), *args]
    with running(cmd, environment(2), log) as proc:
        wait_until(lambda: "save is stuck" in log.read_text(), proc, log, 120, "a stuck save")
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)  # the first signal waits for the save in flight
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)  # today: the second SIGTERM is swallowed too
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after a second SIGTERM:\n{tail(log)}")
    assert code == 128 + signal.SIGTERM, tail(log, 80)
    _assert_one_clear_line(log, r"second SIGTERM", r"step 4 is not saved", r"step 2")
    assert saved_steps(work) == [2]


# ----------------------------------------------------------- item 9: errors mid-run


@pytest.mark.timeout(240)
def test_a_non_finite_stop_waits_for_the_save_in_flight_and_names_it(tmp_path, tokenizer):
    # lr=1e3 diverges within a few steps, right after the step-2 save has started.
    overrides = [
        *TINY,
        f"data.tokenizer={tokenizer}",
        "train.steps=30",
        "train.checkpoint_every=2",
        "optim.lr=1e3",
        "optim.schedule=constant",
        "optim.clip_norm=0",
    ]
    work = tmp_path / "run"
    log = tmp_path / "run.log"
    code = run(jaxlm(*train_args(work, overrides)), environment(2), log, 120)
    assert code == RUN_STOPPED, tail(log, 80)
    # Today: 3 tracebacks and "last checkpoint: step 2" while step 2 is a tmp directory.
    line = _assert_one_clear_line(log, r"non-finite loss, gradient or update at step \d+")
    assert _leftover_tmp(work) == []
    steps = saved_steps(work)
    assert steps, tail(log, 80)
    assert f"last checkpoint: step {steps[-1]} " in line, line


def test_an_input_error_is_one_line_with_status_2(tmp_path, tokenizer):
    work = tmp_path / "run"
    log = tmp_path / "run.log"
    overrides = [*TINY, f"data.tokenizer={tmp_path / 'missing.model'}", "train.steps=2"]
    code = run(jaxlm(*train_args(work, overrides)), environment(2), log, 120)
    assert code == 2, tail(log)
    _assert_one_clear_line(log, re.escape(str(tmp_path / "missing.model")))


# ------------------------------------------------------- item 10: refused resume


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


def test_a_refused_resume_leaves_the_workdir_byte_identical(tmp_path, tokenizer):
    work = tmp_path / "run"
    overrides = [*TINY, f"data.tokenizer={tokenizer}", "train.steps=2"]
    assert run(jaxlm(*train_args(work, overrides)), environment(1), tmp_path / "a.log", 120) == 0
    before = _tree_digest(work)
    log = tmp_path / "refused.log"
    changed = [*overrides, "model.d_ff=48"]
    assert run(jaxlm(*train_args(work, changed)), environment(1), log, 120) == 2, tail(log)
    _assert_one_clear_line(log, r"model\.d_ff")
    assert _tree_digest(work) == before  # today: config.json now holds the refused config


def test_a_second_sigterm_raises_stop_now_wherever_the_loop_is():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reached(1)  # the first asks for a save and a stop
        with pytest.raises(StopNow) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)  # today: swallowed like the first
    assert stopped.value.exit_status == 128 + signal.SIGTERM


def test_a_metrics_write_on_a_full_disk_raises_at_once(tmp_path):
    # /dev/full fails every write with ENOSPC: the kernel's full disk, without a mount.
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    writer = MetricsWriter(tmp_path, tensorboard=False)
    with pytest.raises(StorageError, match=r"metrics\.jsonl: OSError: \[Errno 28\] No space"):
        writer.write(1, "train", {"loss": 1.0})


# ----------------------------------------------------------- item 14: a lost peer


def test_the_peer_loss_line_names_the_lost_process_and_what_to_do():
    # The two-process case (a peer SIGKILLed mid-run) is tests/test_dead_peer.py.
    line = peer_loss_message(1, 12.2)
    assert line.startswith("process 1 of this job has given no sign of life for 12s")
    assert "run the same command again on every process" in line


def test_an_orphaned_orbax_write_error_is_not_logged_with_a_traceback():
    """What CI once printed on a full disk: asyncio's report of an Orbax write task whose
    OS error nobody awaited (the save itself already failed with one jaxlm line). It is
    dropped; the same report for any other task, or any other error, still logs."""
    import logging

    from jaxlm.checkpointing.manager import _QuietOrphanedWriteErrors

    full = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "opt_state" in OCDBT database: No space left '
        "on device [os_error_code='28']"
    )
    orbax_task = (
        "Task exception was never retrieved\nfuture: <Task finished name='Task-2085' "
        "coro=<async_serialize_from_host.<locals>.write_fragment() done, defined at "
        "/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py:188>"
    )

    def record(message, error):
        return logging.LogRecord(
            "asyncio", logging.ERROR, "base_events.py", 1, message, None, (type(error), error, None)
        )

    quiet = _QuietOrphanedWriteErrors()
    assert not quiet.filter(record(orbax_task, full))
    assert quiet.filter(record(orbax_task, RuntimeError("a bug")))
    assert quiet.filter(record(orbax_task.replace("orbax", "elsewhere"), full))
    assert _QuietOrphanedWriteErrors in {type(f) for f in logging.getLogger("asyncio").filters}
