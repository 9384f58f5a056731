"""A run whose step stops making progress ends with the watchdog's
distinct exit status (75) and a message naming what it waited for and how long."""

import io
import re
import sys
import threading
import time

import pytest
from helpers.runs import REPO, TINY, environment, make_tokenizer, records, run, tail

from jaxlm.runtime.watchdog import EXIT_CODE, StepWatchdog


class Exits:
    """Records the watchdog's exit call instead of ending the test process."""

    def __init__(self):
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def test_watchdog_fires_once_a_budget_runs_out_naming_what_it_waited_for():
    exits, out = Exits(), io.StringIO()
    with StepWatchdog(exit=exits, stream=out) as watchdog:
        watchdog.expect("step 1 (the first)", 0.6)
        for n in range(2, 8):  # steps that keep to their budget
            time.sleep(0.1)
            watchdog.expect(f"step {n}", 0.3)
        assert not exits.called.is_set()
        started = time.monotonic()
        assert exits.called.wait(5)
        assert 0.2 < time.monotonic() - started < 2
    assert exits.codes == [EXIT_CODE] == [75]
    assert re.search(r"watchdog: step 7 has not finished after 0\.\d+s", out.getvalue())


def test_watchdog_stays_quiet_when_stopped_or_disabled():
    exits = Exits()
    with StepWatchdog(exit=exits, stream=io.StringIO()) as watchdog:
        watchdog.expect("step 1", 0.2)
    with StepWatchdog(enabled=False, exit=exits) as watchdog:
        watchdog.expect("step 1", 0.0)
    assert not exits.called.wait(0.5)


# Slow: ~12 s; the watchdog's firing is checked above by default, and a stuck save's
# exit in test_run_failures.py
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hung_data_pipeline_ends_the_run_with_the_watchdog_status(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    overrides = [
        *TINY,
        f"data.tokenizer={tokenizer}",
        "train.steps=1000",
        "train.step_timeout_s=3",
        "train.first_step_timeout_s=120",  # the first step compiles: seconds on this CPU
    ]
    work, log = tmp_path / "run", tmp_path / "run.log"
    cmd = [sys.executable, str(REPO / "tests/helpers/hung_data_train.py"), str(work), "5"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.monotonic()
    assert run(cmd, environment(4), log, timeout=240) == EXIT_CODE, tail(log)
    text = log.read_text()
    hung = re.search(r"watchdog: step (\d+) has not finished after ([\d.]+)s", text)
    assert hung, tail(log)
    # Batch 6 never comes: step 5 ran, but the loop never got past fetching batch 6.
    assert int(hung.group(1)) == 5 and 3 <= float(hung.group(2)) < 10
    assert "data: hanging after the last batch" in text
    assert re.search(r'hung_data_train\.py", line \d+ in __next__', text)  # the stack: where
    assert [r["step"] for r in records(work)] == [1, 2, 3, 4]  # steps before the hang
    assert time.monotonic() - started < 200
