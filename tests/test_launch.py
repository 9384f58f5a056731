"""`jaxlm launch`: N children with their process ids, prefixed output, forwarded signals,
and the first failure ending the job with its status. Children here are small Python
scripts (no JAX), so every case takes about a second."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers.runs import child_pids, environment, is_gone, jaxlm, running, tail, wait_until

pytestmark = pytest.mark.timeout(120)


def launch_cmd(n: int, script: str) -> list[str]:
    return jaxlm("launch", "-n", str(n), "--", sys.executable, "-c", script)


def finish(proc: subprocess.Popen, log, timeout: float = 30) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"launcher still running after {timeout}s:\n{tail(log)}") from None


def test_children_get_the_job_environment_and_prefixed_output(tmp_path):
    script = (
        "import os, sys; e = os.environ; "
        "print(e['JAXLM_PROCESS_ID'], e['JAXLM_NUM_PROCESSES'], e['JAXLM_COORDINATOR']); "
        "print('to stderr', file=sys.stderr)"
    )
    log = tmp_path / "out.log"
    with running(launch_cmd(3, script), environment(1), log) as proc:
        assert finish(proc, log) == 0
    lines = log.read_text().splitlines()
    port = re.match(r"\[launch\] 3 processes, coordinator 127\.0\.0\.1:(\d+): ", lines[0])
    assert port, lines[0]
    for i in range(3):
        assert f"[{i}] {i} 3 127.0.0.1:{port.group(1)}" in lines
        assert f"[{i}] to stderr" in lines
    assert lines[-1] == "[launch] all processes exited with status 0"


def test_a_failing_child_ends_the_job_with_its_status(tmp_path):
    script = (
        "import os, sys, time\n"
        "if os.environ['JAXLM_PROCESS_ID'] == '1': sys.exit(3)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "out.log"
    started = time.monotonic()
    with running(launch_cmd(2, script), environment(1), log) as proc:
        assert finish(proc, log) == 3
        pids = child_pids(log)
    assert time.monotonic() - started < 20  # the sleeper was killed, not waited for
    assert is_gone(pids[0])
    assert "[launch] process 1 exited with status 3; killing processes [0]" in log.read_text()


def test_a_child_killed_by_a_signal_gives_128_plus_its_number(tmp_path):
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    log = tmp_path / "out.log"
    with running(launch_cmd(1, script), environment(1), log) as proc:
        assert finish(proc, log) == 128 + signal.SIGKILL


def test_sigterm_to_the_launcher_reaches_every_child_once(tmp_path):
    script = (
        "import signal, sys, time\n"
        "got = []\n"
        "signal.signal(signal.SIGTERM, lambda *a: got.append(1))\n"
        "print('ready', flush=True)\n"
        "deadline = time.time() + 60\n"
        "while not got and time.time() < deadline: time.sleep(0.01)\n"
        "time.sleep(0.5)  # a duplicate signal would arrive meanwhile\n"
        "print('signals', len(got), flush=True)\n"
        "sys.exit(0 if got else 1)\n"
    )
    log = tmp_path / "out.log"
    with running(launch_cmd(2, script), environment(1), log) as proc:
        wait_until(lambda: log.read_text().count("ready") == 2, proc, log, 30, "2 ready children")
        proc.send_signal(signal.SIGTERM)
        assert finish(proc, log) == 0
    text = log.read_text()
    assert "[0] signals 1" in text and "[1] signals 1" in text, text


def test_children_die_with_a_killed_launcher(tmp_path):
    log = tmp_path / "out.log"
    script = "import time; print('ready', flush=True); time.sleep(120)"
    with running(launch_cmd(2, script), environment(1), log) as proc:
        wait_until(lambda: log.read_text().count("ready") == 2, proc, log, 30, "2 ready children")
        pids = child_pids(log)
        proc.kill()  # SIGKILL: the launcher cannot clean up; the kernel must
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not all(map(is_gone, pids.values())) and time.monotonic() < deadline:
            time.sleep(0.05)
    survivors = [pid for pid in pids.values() if not is_gone(pid)]
    for pid in survivors:  # do not leave them behind when the check fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors


def test_no_command_is_an_error(tmp_path):
    proc = subprocess.run(
        jaxlm("launch", "-n", "2"), capture_output=True, text=True, timeout=60, env=environment(1)
    )
    assert proc.returncode == 2 and "no command given" in proc.stderr
