"""When a process of a job dies, the others exit within seconds.

Process 1 (not the coordinator: the slow case, noticed only by missing heartbeats) is
SIGKILLed mid-training; process 0, blocked in a collective that can never finish,
must exit non-zero well before JAX's default heartbeat timeout (100 s) would let it.
The processes are started directly, not by `jaxlm launch`, which would itself kill
the survivor.

Issue 17 item 14: before JAX's abort, the survivor says so in one jaxlm line naming
the lost process and what to do.
"""

import os
import signal
import subprocess
import time

import pytest
from helpers.runs import (
    TINY,
    environment,
    jaxlm,
    make_tokenizer,
    records,
    running,
    tail,
    train_args,
    wait_until,
)

from jaxlm.runtime.distributed import HEARTBEAT_TIMEOUT_S
from jaxlm.runtime.launch import free_port


@pytest.mark.timeout(300)
def test_survivor_of_a_killed_peer_exits_nonzero_within_seconds(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    overrides = [*TINY, f"data.tokenizer={tokenizer}", "train.steps=100000"]
    work = tmp_path / "job"
    coordinator = f"127.0.0.1:{free_port()}"
    cmd = jaxlm(*train_args(work, overrides))
    envs = [
        environment(
            2, JAXLM_COORDINATOR=coordinator, JAXLM_NUM_PROCESSES="2", JAXLM_PROCESS_ID=str(i)
        )
        for i in range(2)
    ]
    log0, log1 = tmp_path / "p0.log", tmp_path / "p1.log"
    with running(cmd, envs[0], log0) as p0, running(cmd, envs[1], log1) as p1:
        wait_until(lambda: len(records(work)) >= 3, p0, log0, 180, "3 logged steps")
        os.killpg(p1.pid, signal.SIGKILL)
        p1.wait(timeout=30)
        killed = time.monotonic()
        try:
            code = p0.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still running 90 s after its peer died:\n{tail(log0)}")
        waited = time.monotonic() - killed
    print(f"process 0 exited ({code}) {waited:.1f}s after its peer was killed")
    assert code != 0, tail(log0)
    # The heartbeat timeout plus time to notice and abort; JAX's default would be ~100 s.
    assert waited < HEARTBEAT_TIMEOUT_S + 20, (waited, tail(log0))
    assert "stopped sending heartbeats" in log0.read_text(), tail(log0)
    said = [line for line in log0.read_text().splitlines() if line.startswith("jaxlm: error:")]
    assert len(said) == 1, tail(log0)
    assert "process 1 of this job has given no sign of life" in said[0], said
    assert "run the same command again" in said[0], said


def test_the_peer_watch_ends_before_the_interpreter_does():
    """At exit the watch thread must be out of the coordination client (a daemon thread
    coming back from C++ during finalisation aborts the process), then say "exited"."""
    import threading

    from jaxlm.runtime.distributed import _PeerWatch

    class Client:  # the coordination service's key-value store, in memory
        def __init__(self):
            self.store, self.calls = {}, 0

        def key_value_set(self, key, value, allow_overwrite):
            self.calls += 1
            self.store[key] = value

        def key_value_dir_get(self, prefix):
            self.calls += 1
            self.store[f"{prefix}1"] = str(self.calls)  # the peer is alive
            return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]

    client = Client()
    watch = _PeerWatch(client, 0, 2, silent_s=60)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    time.sleep(0.2)
    watch.stop(thread, timeout_s=5)
    assert not thread.is_alive()
    assert client.store[f"{_PeerWatch.PREFIX}0"] == _PeerWatch.EXITED
