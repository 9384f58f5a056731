"""A 2-process DPO job (jaxlm launch, 127.0.0.1) equals one process on the same batches.

Each process reads its own shard of the preference pairs; tests/helpers/
both_shards_train.py feeds one process the same global batches. Per-step losses and
the held-out preference numbers must agree to float tolerance (gloo reduces the
gradient across processes in another order than XLA does within one).
"""

import json
import sys

import pytest
from helpers.runs import (
    REPO,
    TINY,
    environment,
    jaxlm,
    losses_by_step,
    make_tokenizer,
    records,
    run,
    tail,
    train_args,
)
from test_posttrain_run import preference_file


# Slow: ~55 s: two processes; test_multihost.py runs two processes by default, and the preference
# step is jitted by the same jit_train_step
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_dpo_equals_one_process(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    data = preference_file(tmp_path / "dpo.jsonl")
    overrides = [
        *TINY,
        f"data.tokenizer={tokenizer}",
        "data.format=preference",
        f"data.sources=jsonl:{data}",
        "data.val_fraction=0.25",
        "model.max_seq_len=64",
        "data.seq_len=64",
        "train.steps=6",
        "optim.lr=0.01",
    ]
    job = tmp_path / "job"
    cmd = jaxlm("launch", "-n", "2", "--", "jaxlm", *train_args(job, overrides))
    assert run(cmd, environment(2), tmp_path / "job.log", timeout=240) == 0, tail(
        tmp_path / "job.log"
    )

    one = tmp_path / "one"
    driver = [sys.executable, str(REPO / "tests/helpers/both_shards_train.py"), str(one)]
    for item in overrides:
        driver += ["--set", item]
    assert run(driver, environment(4), tmp_path / "one.log", timeout=240) == 0, tail(
        tmp_path / "one.log"
    )

    job_losses, one_losses = losses_by_step(job), losses_by_step(one)
    assert sorted(job_losses) == list(range(1, 7))
    for step in range(1, 7):
        assert job_losses[step] == pytest.approx(one_losses[step], rel=1e-5), step
    job_eval, one_eval = records(job, "eval")[-1], records(one, "eval")[-1]
    assert job_eval["pairs"] == one_eval["pairs"] > 0  # every held-out pair, once
    for key in ("loss", "accuracy", "margin"):
        assert job_eval[key] == pytest.approx(one_eval[key], rel=1e-4, abs=1e-6), key
    summary = json.loads((job / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["split"] == "summary" and summary["data_pairs_encoded"] > 0
