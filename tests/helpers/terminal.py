"""A command on a pseudo-terminal, as a user at a shell runs it: what it printed, the
keys typed, its exit status.

`setsid --ctty` makes the terminal the command's controlling terminal, so a typed
Ctrl-C (b"\\x03") reaches it as SIGINT through the terminal's line discipline, as in
a shell (no fork of this threaded test process, which pty.fork would do). The
command is killed, with its session, when the test closes the terminal.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

LEFT = b"\x1b[D"  # the left-arrow key, as a terminal sends it
BACKSPACE = b"\x7f"
CTRL_C = b"\x03"


class Terminal:
    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path):
        self.fd, tty = pty.openpty()
        self.proc = subprocess.Popen(
            ["setsid", "--ctty", *cmd], cwd=cwd, env=env, stdin=tty, stdout=tty, stderr=tty
        )
        os.close(tty)
        self.output = b""

    def read_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.output):
                return True
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the command exited and closed the terminal
                    chunk = b""
                if not chunk:
                    return condition(self.output)
                self.output += chunk
        return condition(self.output)

    def wait_for(self, needle: bytes, timeout: float, *, after: int = 0) -> int:
        """Waits until `needle` is printed after offset `after`; returns where it ends."""
        found = self.read_until(lambda out: needle in out[after:], timeout)
        assert found, f"no {needle!r} after {timeout} s in:\n{self.text}"
        return self.output.index(needle, after) + len(needle)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_status(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_until(lambda _: False, 0.1)  # keep draining so it never blocks
            if self.proc.poll() is not None:
                return self.proc.returncode
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)  # setsid made it a session (and group) leader
        self.proc.wait(timeout=30)
        os.close(self.fd)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")
