"""In one process, SIGTERM finishes the step, saves it and exits 0; the
rerun continues at that step and data position with an uninterrupted run's losses.

The two-process form (SIGTERM to one process of a job) is
tests/test_multihost_preemption.py.
"""

import os
import re
import signal

import pytest
from helpers.runs import (
    TINY,
    environment,
    jaxlm,
    losses_by_step,
    make_tokenizer,
    records,
    run,
    running,
    saved_steps,
    tail,
    train_args,
    wait_until,
)

from jaxlm.runtime.preemption import StopRequest

STEPS = 600  # ~6 ms a step: the signal, sent after step 3, lands seconds before the end


def test_first_signal_requests_a_stop_and_a_second_ctrl_c_aborts():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM" and stop.reached(2)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored after the run
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGINT" and stop.reached(1)


@pytest.mark.timeout(400)
def test_sigterm_saves_the_step_reached_and_the_rerun_matches_an_uninterrupted_run(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    overrides = [*TINY, f"data.tokenizer={tokenizer}", f"train.steps={STEPS}"]
    env = environment(4)
    ref = tmp_path / "ref"
    assert run(jaxlm(*train_args(ref, overrides)), env, tmp_path / "ref.log", 300) == 0

    work = tmp_path / "run"
    log = tmp_path / "first.log"
    with running(jaxlm(*train_args(work, overrides)), env, log) as proc:
        wait_until(lambda: len(records(work)) >= 3, proc, log, 120, "3 logged steps")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, tail(log)
    said = re.search(r"SIGTERM received: saved step (\d+)", log.read_text())
    assert said, tail(log)
    stopped = int(said.group(1))
    assert 3 <= stopped < STEPS
    assert saved_steps(work) == [stopped]
    assert max(losses_by_step(work)) == stopped  # the step saved is the last one taken
    summary = records(work, "summary")[-1]
    assert summary["preempted"] == 1 and summary["steps"] == stopped
    assert "stopped by a signal after step" in log.read_text()

    log = tmp_path / "rerun.log"
    assert run(jaxlm(*train_args(work, overrides)), env, log, 300) == 0, tail(log)
    assert f"resumed from {work / 'checkpoints'}/{stopped}" in log.read_text()
    assert records(work, "summary")[-1]["preempted"] == 0
    # Same process layout, same data position: bitwise the uninterrupted run's losses.
    assert losses_by_step(work) == losses_by_step(ref)
    assert sorted(losses_by_step(ref)) == list(range(1, STEPS + 1))
