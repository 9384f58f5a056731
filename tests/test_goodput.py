"""Per-step step time and data wait, checkpoint and eval time kept
apart from step time, and a productive-vs-total summary whose parts add up."""

import time

import pytest
from helpers.runs import TINY, make_tokenizer

import jaxlm.training.loop
import jaxlm.training.tasks.next_token
from jaxlm.analysis.metrics_file import read_metrics
from jaxlm.config import Config, apply_overrides
from jaxlm.runtime.goodput import TimeLedger, format_summary

PARTS = (
    "startup_s",
    "compile_s",
    "productive_step_s",
    "data_wait_s",
    "eval_s",
    "checkpoint_blocking_s",
    "finish_s",
)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_ledger_books_every_second_once():
    clock = FakeClock()
    ledger = TimeLedger(clock)
    clock.advance(5)  # init, tokenizer, restore
    ledger.loop_starts()
    for step, (work, fetch) in enumerate([(3.0, 0.5), (1.0, 0.25), (1.0, 0.0)]):
        with ledger.data_wait():
            clock.advance(fetch)
        clock.advance(work)
        interval, data = ledger.step_done()
        assert (interval, data) == (work + fetch, fetch), step
        if step == 1:
            with ledger.phase("eval"):
                clock.advance(7)
            assert ledger.last_phase_s == 7
    with ledger.phase("checkpoint"):
        clock.advance(2)
    clock.advance(0.5)
    ledger.lap("finish")
    s = ledger.summary()
    assert (s["startup_s"], s["compile_s"], s["productive_step_s"]) == (5, 3, 2)
    assert (s["data_wait_s"], s["eval_s"], s["checkpoint_blocking_s"]) == (0.75, 7, 2)
    assert s["finish_s"] == 0.5 and s["unaccounted_s"] == 0
    assert s["wall_s"] == 20.25 and s["goodput"] == pytest.approx(2 / 20.25)


# Slow: ~17 s: a run with slowed evals and saves; the ledger's accounting tests here run by
# default
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tiny_run_accounts_for_its_wall_time(tmp_path, monkeypatch):
    # Slow evaluations and saves down so that leaking them into step time would show.
    pause = 0.4
    real_bpb, real_save = (
        jaxlm.training.tasks.next_token.bits_per_byte,
        jaxlm.training.loop.Checkpointer.save,
    )

    def slow_bpb(*args):
        time.sleep(pause)
        return real_bpb(*args)

    def slow_save(self, *args, **kwargs):
        time.sleep(pause)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(jaxlm.training.tasks.next_token, "bits_per_byte", slow_bpb)  # in every eval
    monkeypatch.setattr(jaxlm.training.loop.Checkpointer, "save", slow_save)
    tokenizer = make_tokenizer(tmp_path)
    overrides = [
        *TINY,
        f"data.tokenizer={tokenizer}",
        "train.steps=8",
        "train.eval_every=3",
        "train.checkpoint_every=2",
    ]
    result = jaxlm.training.loop.train(apply_overrides(Config(), overrides), tmp_path / "run")

    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r["split"] == "train"]
    summary = next(r for r in records if r["split"] == "summary")
    assert result.timing == {k: summary[k] for k in result.timing}

    # The parts add up to the wall time; what no part claims is only bookkeeping.
    parts = sum(summary[k] for k in PARTS)
    assert parts + summary["unaccounted_s"] == pytest.approx(summary["wall_s"], abs=1e-9)
    assert 0 <= summary["unaccounted_s"] < 0.05
    assert summary["goodput"] == pytest.approx(summary["productive_step_s"] / summary["wall_s"])

    # One record per step (log_every=1); their intervals are the loop's step time.
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert sum(r["data_wait_s"] for r in steps) == pytest.approx(summary["data_wait_s"])
    loop = summary["compile_s"] + summary["productive_step_s"] + summary["data_wait_s"]
    assert sum(r["step_time_s"] for r in steps) == pytest.approx(loop, abs=0.05)
    # Evaluations (2 + final) and saves (4) are timed apart, never inside a step.
    assert summary["eval_s"] >= 3 * pause and summary["checkpoint_blocking_s"] >= 4 * pause
    assert max(r["step_time_s"] for r in steps[1:]) < pause, [r["step_time_s"] for r in steps]
    evals = [r for r in records if r["split"] == "eval"]
    saves = [r for r in records if r["split"] == "checkpoint"]
    assert [r["step"] for r in evals] == [3, 6, 8] and all(r["eval_s"] >= pause for r in evals)
    assert [r["step"] for r in saves] == [2, 4, 6, 8]
    assert all(r["blocking_s"] >= pause for r in saves)
    assert sum(r["eval_s"] for r in evals) <= summary["eval_s"]
    assert sum(r["blocking_s"] for r in saves) <= summary["checkpoint_blocking_s"]

    printed = format_summary(result.timing)
    for name in ("goodput", "steps", "compile", "startup", "data wait", "eval", "checkpoint"):
        assert name in printed
