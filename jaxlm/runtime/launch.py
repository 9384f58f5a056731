"""Run N copies of a command as one multi-process JAX job on this machine.

    jaxlm launch -n 2 -- jaxlm train quickstart --set train.steps=100

Each copy gets JAXLM_COORDINATOR=127.0.0.1:PORT, JAXLM_NUM_PROCESSES=N and
JAXLM_PROCESS_ID=i (read by jaxlm.runtime.distributed); a leading `jaxlm` runs as
`python -m jaxlm.cli` under this interpreter, any other command runs as given. This is
how to try multi-host behaviour (sharded data, collectives, preemption, failures) on
one machine; on a real cluster the scheduler starts one process per host instead.

- Output: every line a child writes (stdout and stderr) is printed prefixed `[i] `.
- Signals: SIGTERM and SIGINT to the launcher are forwarded to every child, once. The
  children run in process groups of their own so a terminal's Ctrl-C (sent to the
  foreground group) does not reach them twice.
- Failure: when a child exits non-zero, the others are killed (they would wait in a
  collective for it) and the launcher exits with that child's status (128 + N when
  it died of signal N). All children exiting 0 gives 0.
- If the launcher itself is killed (even SIGKILL), the kernel kills the children
  (Linux PR_SET_PDEATHSIG), so no orphan keeps the port or the GPU.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

PREFIX = "[launch]"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_command(command: Sequence[str]) -> list[str]:
    """`jaxlm ...` runs under this interpreter, so children use the same environment."""
    if command and command[0] == "jaxlm":
        return [sys.executable, "-m", "jaxlm.cli", *command[1:]]
    return list(command)


def _die_with_parent(parent_pid: int):
    """A preexec_fn: SIGKILL this child when the launcher dies (Linux only)."""

    def set_death_signal() -> None:
        if sys.platform != "linux":
            return
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os._exit(1)

    return set_death_signal


def exit_status(returncode: int) -> int:
    """A shell-style status: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Launcher:
    """Starts, watches and stops the children; `run()` returns the job's exit status."""

    def __init__(self, command: Sequence[str], num_processes: int, port: int = 0, out=None):
        if num_processes < 1:
            raise ValueError(f"-n must be at least 1, got {num_processes}")
        self.command = child_command(command)
        self.num_processes = num_processes
        self.coordinator = f"127.0.0.1:{port or free_port()}"
        self.out = out or sys.stdout.buffer
        self.procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        self._write(f"{PREFIX} {text}\n".encode())

    def _write(self, data: bytes) -> None:
        with self._lock:
            self.out.write(data)
            self.out.flush()

    def _start(self) -> None:
        parent = os.getpid()
        for i in range(self.num_processes):
            env = dict(os.environ)
            env.update(
                JAXLM_COORDINATOR=self.coordinator,
                JAXLM_NUM_PROCESSES=str(self.num_processes),
                JAXLM_PROCESS_ID=str(i),
                PYTHONUNBUFFERED="1",  # lines reach the prefixer as they are written
            )
            # Every child is started before any thread: preexec_fn is unsafe with threads.
            self.procs.append(
                subprocess.Popen(
                    self.command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    process_group=0,
                    preexec_fn=_die_with_parent(parent),
                )
            )

    def _pump(self, i: int, stream) -> None:
        prefix = f"[{i}] ".encode()
        for line in iter(stream.readline, b""):
            self._write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        stream.close()

    def _forward(self, signum, frame) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def _kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()

    def run(self) -> int:
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                self._start()
            except BaseException:
                self._kill_all()
                raise
            pids = ", ".join(f"process {i} pid {p.pid}" for i, p in enumerate(self.procs))
            self.say(f"{self.num_processes} processes, coordinator {self.coordinator}: {pids}")
            pumps = [
                threading.Thread(target=self._pump, args=(i, p.stdout), daemon=True)
                for i, p in enumerate(self.procs)
            ]
            for t in pumps:
                t.start()
            status = self._wait()
            for t in pumps:
                t.join(timeout=10)
            return status
        finally:
            self._kill_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _wait(self) -> int:
        """Waits for every child; on the first failure kills the rest."""
        remaining = set(range(len(self.procs)))
        while remaining:
            for i in sorted(remaining):
                code = self.procs[i].poll()
                if code is None:
                    continue
                remaining.discard(i)
                if code != 0:
                    status = exit_status(code)
                    others = sorted(remaining)
                    self.say(
                        f"process {i} exited with status {status}"
                        + (f"; killing processes {others}" if others else "")
                    )
                    self._kill_all()
                    for j in others:
                        self.procs[j].wait()
                    return status
            time.sleep(0.05)
        self.say("all processes exited with status 0")
        return 0


def launch(command: Sequence[str], num_processes: int, port: int = 0) -> int:
    """Runs `command` as `num_processes` processes; returns the job's exit status."""
    return Launcher(command, num_processes, port).run()
