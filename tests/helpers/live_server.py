"""`jaxlm serve` in a subprocess for tests: started on a free port, stopped on exit.

    with live_server(export_dir, "--slots", "4") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
        ...
        server.proc.send_signal(signal.SIGTERM)    # a test may stop it itself

The server is asked for port 0 (the OS picks a free one) and reports the port it got
in its "listening on http://HOST:PORT" line; waits are bounded, and the whole process
session is killed when the block ends, whatever happened in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
from pathlib import Path

from tests.helpers.runs import environment, jaxlm, running, tail, wait_until

_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@dataclasses.dataclass
class LiveServer:
    proc: subprocess.Popen
    log: Path
    root_url: str  # http://127.0.0.1:PORT

    @property
    def base_url(self) -> str:
        """What the openai client takes as base_url."""
        return self.root_url + "/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


@contextlib.contextmanager
def live_server(model: Path | str, *args: str, log: Path | None = None, devices: int = 1):
    """A running `jaxlm serve MODEL --port 0 ARGS...`; yields a LiveServer once it listens."""
    log = log or Path(model).parent / "serve.log"
    cmd = jaxlm("serve", str(model), "--port", "0", *args)
    with running(cmd, environment(devices), log) as proc:

        def listening():
            found = _LISTENING.search(log.read_text(errors="replace"))
            return found.group(1) if found else None

        url = wait_until(listening, proc, log, timeout=240, what="the server listening")
        yield LiveServer(proc, log, url)
