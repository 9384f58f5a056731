"""Reinforcement learning runs (data.format=rl) end to end, on a random tiny model.

What a user of `jaxlm train --set data.format=rl` relies on: the reward goes up, a
resumed run is the uninterrupted one bitwise, a reward function of their own that
fails stops the run with one line naming it, LoRA runs start at KL 0 to their
reference, bad configs and prompt files are refused before any step, `jaxlm compare`
draws RL metrics, and (slow) two processes train like one.

The runs share one prompt file, tokenizer and model shape, so the XLA programs that
tests/conftest.py caches in-process are compiled once for the whole file.
"""

import json
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.runs import (
    REPO,
    TINY,
    environment,
    jaxlm,
    make_tokenizer,
    records,
    run,
    tail,
    train_args,
)

from jaxlm import cli
from jaxlm.checkpointing.params_io import restore_latest_params
from jaxlm.config import Config, ConfigError, apply_overrides
from jaxlm.data import arithmetic_task as at
from jaxlm.errors import InputError
from jaxlm.training.loop import train
from jaxlm.training.rewards import RewardError

# Reward functions of a user's own, imported by rl.rewards as "rl_run_rewards:NAME".
REWARDS_MODULE = "rl_run_rewards"
REWARDS_SOURCE = '''
def digits(completion, example):
    """The share of the completion's characters that are digits: a random model gets
    some (20 of the 384 pieces are digits), so every step has a signal to climb."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def boom(completion, example):
    raise ValueError(f"cannot score the answer to {example['problem']}")


def not_a_number(completion, example):
    return float("nan")
'''
DIGITS = f"{REWARDS_MODULE}:digits"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(root, tokenizer, prompts): a directory holding the reward module, the
    384-piece test tokenizer and 64 arithmetic prompts ({"prompt": "12+34=", ...})."""
    root = tmp_path_factory.mktemp("rl_run")
    (root / f"{REWARDS_MODULE}.py").write_text(REWARDS_SOURCE)
    tokenizer = make_tokenizer(root)
    prompts = root / "prompts.jsonl"
    examples = at.examples("train", 64, seed=0, max_digits=2)
    prompts.write_text("".join(json.dumps(at.prompt_record(e)) + "\n" for e in examples))
    return root, tokenizer, prompts


@pytest.fixture
def rewards_importable(inputs, monkeypatch):
    monkeypatch.syspath_prepend(str(inputs[0]))


def overrides(inputs, *more: str) -> list[str]:
    """The tiny model learning from the digits reward: 8 prompts x 4 responses of at
    most 8 tokens per step, full fine-tuning without KL, a constant learning rate
    high enough to move in a few steps."""
    _, tokenizer, prompts = inputs
    return [
        *TINY,
        f"data.tokenizer={tokenizer}",
        "data.format=rl",
        f"data.sources=jsonl:{prompts}",
        "data.val_fraction=0.2",
        "rl.group_size=4",
        "rl.max_response_tokens=8",
        f"rl.rewards={DIGITS}",
        "rl.kl_weight=0",
        "optim.lr=0.03",
        "optim.schedule=constant",
        "train.checkpoint_every=0",
        *more,
    ]


def config(inputs, *more: str) -> Config:
    return apply_overrides(Config(), overrides(inputs, *more))


def state_groups(workdir: Path, step: int) -> dict[str, list[str]]:
    """{"params": [leaf names], "frozen": [...], ...} of a checkpoint's train state."""
    checksums = json.loads((workdir / f"checkpoints/{step}/checksum/metadata").read_text())
    groups: dict[str, list[str]] = {}
    for name in checksums["state"]:
        group, _, leaf = name.partition(".")
        groups.setdefault(group, []).append(leaf)
    return groups


def cli_train(workdir: Path, overrides: list[str]) -> int:
    """`jaxlm train --workdir WORKDIR --set ...` in this process (no experiment: the
    same Config as `config`, so the same compiled programs)."""
    argv = ["train", "--workdir", str(workdir)]
    for item in overrides:
        argv += ["--set", item]
    return cli.main(argv)


def test_reward_rises_from_a_random_model(inputs, rewards_importable, tmp_path, capsys):
    """`jaxlm train` on a reward a random model can already earn a little of (the share
    of digits in its answers) earns clearly more within 12 steps; every component is
    logged as reward_<name> (a weight of 0 reports one without training on it), and
    the console summary gives the held-out reward, greedy accuracy and pass@k."""
    workdir = tmp_path / "run"
    spec = f"rl.rewards={DIGITS},length=0,answer=0"
    assert cli_train(workdir, overrides(inputs, "train.steps=12", spec)) == 0
    logged = records(workdir)
    assert [r["step"] for r in logged] == list(range(1, 13))
    rewards = np.array([r["reward"] for r in logged])
    assert rewards.tolist() == [r[f"reward_{DIGITS}"] for r in logged]  # the others weigh 0
    assert all(-1 <= r["reward_length"] < 0 for r in logged)  # reported all the same
    assert all(r["reward_answer"] == 0 for r in logged)
    # Untrained, ~4% of the characters are digits; the mean of 32 responses hardly
    # moves by chance (std ~0.02). Over train.seed 0-7 the first 3 steps average
    # 0.04-0.06 and the last 3 0.37-0.79 (0.54 with the seed here).
    first, last = rewards[:3].mean(), rewards[-3:].mean()
    assert first < 0.15 and last > first + 0.2, rewards.round(2).tolist()
    assert all(r["groups_with_signal"] > 0 for r in logged)
    final = records(workdir, "eval")[-1]
    assert final["step"] == 12 and final["prompts"] == 10  # data.val_fraction=0.2 of 64
    assert {"accuracy", "pass_at_4", f"reward_{DIGITS}"} <= set(final)
    out = capsys.readouterr().out
    assert f"held-out reward      {final['reward']:.4f} over 10 prompts" in out, out
    assert "greedy accuracy      0.0000   pass_at_4 " in out, out
    # Full fine-tuning with kl_weight=0 keeps no frozen reference copy.
    assert sorted(state_groups(workdir, 12)) == ["loss_ema", "opt_state", "params", "step"]


@pytest.fixture(scope="module")
def resumed_pair(inputs, tmp_path_factory):
    """(straight, resumed) workdirs: 4 RL steps in one go, and 2 steps then the same
    command with train.steps=4; 2 epochs x 2 minibatches = 4 updates per step."""
    root = tmp_path_factory.mktemp("rl_resume")
    sys.path.insert(0, str(inputs[0]))  # module scope: monkeypatch is per test
    try:
        more = ("rl.epochs=2", "rl.minibatches=2", "rl.kl_weight=0.1")
        straight, resumed = root / "straight", root / "resumed"
        train(config(inputs, "train.steps=4", *more), straight)
        train(config(inputs, "train.steps=2", *more), resumed)
        allow = "train.allow_config_change=train.steps"
        result = train(config(inputs, "train.steps=4", allow, *more), resumed)
        assert result.steps == 4
    finally:
        sys.path.remove(str(inputs[0]))
    return straight, resumed


def test_resumed_rl_run_equals_the_uninterrupted_one(resumed_pair):
    """Stopping an RL run halfway and running it on to the same length gives the
    uninterrupted run bitwise: the same responses (their random key comes from the
    checkpointed data position), rewards, losses, and final state."""
    straight, resumed = resumed_pair
    ours, theirs = records(resumed), records(straight)
    assert [r["step"] for r in ours] == [1, 2, 3, 4] == [r["step"] for r in theirs]
    keys = ("reward", "loss", "kl", "entropy", "response_tokens", "grad_norm", "lr")
    for a, b in zip(ours, theirs, strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, a["step"]
    assert ours[0]["reward"] != ours[-1]["reward"]  # the runs did train
    params, _, step = restore_latest_params(resumed)
    expected, _, _ = restore_latest_params(straight)
    assert step == 4
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    # Every leaf of the state (optimizer moments, update count, frozen reference).
    checksum = "checkpoints/4/checksum/metadata"
    ours_sum = json.loads((resumed / checksum).read_text())["state"]
    assert ours_sum == json.loads((straight / checksum).read_text())["state"]
    assert "frozen" in state_groups(straight, 4)  # kl_weight > 0: the reference is saved


@pytest.mark.parametrize(
    ("function", "problem"),
    [
        ("boom", r"raised ValueError: cannot score the answer to \d+[-+*]\d+"),
        ("not_a_number", "returned nan"),
    ],
)
def test_failing_reward_function_stops_the_run_naming_it(
    inputs, rewards_importable, tmp_path, capsys, function, problem
):
    """A reward function of the user's that raises (or returns NaN) stops the run at
    its first step with one line naming the function, what it did, and the example
    (its index in the batch, the start of its prompt and completion)."""
    name = f"{REWARDS_MODULE}:{function}"
    with pytest.raises(RewardError) as error:
        train(config(inputs, "train.steps=2", f"rl.rewards={name}"), tmp_path / "run")
    message = str(error.value)
    assert re.search(f"reward '{name}' {problem} on example 0 of the batch", message), message
    assert "(prompt '" in message and "completion '" in message
    assert "\n" not in message
    assert not records(tmp_path / "run")  # no step was logged

    # The command line prints that one line, no traceback, and exits 2.
    argv = overrides(inputs, "train.steps=2", f"rl.rewards={name}")
    assert cli_train(tmp_path / "cli", argv) == 2
    err = capsys.readouterr().err
    assert f"reward '{name}'" in err and "Traceback" not in err, err


def test_lora_rl_starts_at_kl_zero(inputs, rewards_importable, tmp_path):
    """LoRA RL with a KL penalty: the reference is the base model with the adapters
    off, which the policy equals at the start (the adapters' B matrices are 0), so the
    first step's KL is 0; the checkpoint trains only adapters and keeps the base as
    the frozen part, not a second copy."""
    workdir = tmp_path / "lora"
    train(config(inputs, "train.steps=3", "model.lora_rank=4", "rl.kl_weight=0.1"), workdir)
    logged = records(workdir)
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert logged[-1]["kl"] > 1e-6  # the adapters moved the policy off its reference
    groups = state_groups(workdir, 3)
    assert groups["params"] and all("lora" in leaf for leaf in groups["params"]), groups
    assert not any("lora" in leaf for leaf in groups["frozen"])


def test_response_budget_must_leave_room_for_the_prompt(inputs):
    """rl.max_response_tokens >= data.seq_len is refused, naming both keys."""
    with pytest.raises(ConfigError) as error:
        config(inputs, "rl.max_response_tokens=32")
    assert "rl.max_response_tokens=32" in str(error.value)
    assert "data.seq_len=32" in str(error.value)


def test_minibatches_must_divide_the_responses(inputs, rewards_importable, tmp_path):
    """rl.minibatches x optim.grad_accum must split a step's responses evenly: refused
    before the run starts, naming the keys (not a reshape error from inside jit)."""
    with pytest.raises(ConfigError) as error:
        train(config(inputs, "train.steps=2", "rl.minibatches=3"), tmp_path / "run")
    message = str(error.value)
    assert "rl.minibatches=3 x optim.grad_accum=1 must divide the 32 responses" in message
    assert "data.batch_size=8 x rl.group_size=4" in message


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"question": "12+34=", "answer": "46"}, "needs 'prompt' (text) or 'messages'"),
        ({"prompt": "12+34=" * 20, "answer": "46"}, "tokens; at most 24 fit"),
    ],
)
def test_bad_prompt_record_is_refused_naming_file_and_line(
    inputs, rewards_importable, tmp_path, record, problem
):
    """A prompt record without 'prompt'/'messages', or a prompt longer than data.seq_len
    - rl.max_response_tokens, stops the run before its first step with an error
    naming the file and line."""
    _, _, prompts = inputs
    lines = prompts.read_text().splitlines()
    bad = tmp_path / "prompts.jsonl"
    bad.write_text("\n".join([*lines[:4], json.dumps(record), *lines[4:]]) + "\n")
    cfg = config(inputs, "train.steps=2", f"data.sources=jsonl:{bad}")
    with pytest.raises(InputError, match=re.escape(f"{bad}:5: ") + ".*" + re.escape(problem)):
        train(cfg, tmp_path / "run")
    assert not records(tmp_path / "run")


def test_epochs_are_refused_for_rl(inputs, rewards_importable, tmp_path):
    """train.epochs means nothing for sampled prompts: refused, pointing to train.steps."""
    cfg = config(inputs, "train.epochs=1")
    with pytest.raises(
        InputError, match=re.escape("data.format=rl: train.epochs is not supported")
    ):
        train(cfg, tmp_path / "run")


def test_compare_draws_rl_metrics(resumed_pair, tmp_path):
    """`jaxlm compare --metrics reward,kl,...` on two RL workdirs (one of them resumed)
    draws the metrics and tabulates the runs."""
    straight, resumed = resumed_pair
    out = tmp_path / "compare"
    metrics = f"reward,kl,entropy,response_tokens,reward_{DIGITS}"
    argv = ["compare", str(straight), str(resumed), "--out", str(out), "--metrics", metrics]
    assert cli.main(argv) == 0
    for name in ("loss_curves.png", "metrics.png", "final_metrics.md", "final_metrics.csv"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "final_metrics.md").read_text()
    assert "straight" in table and "resumed" in table


# Slow: ~55-75 s: a two-process job and a one-process run, each compiling its own programs;
# nothing else runs the RL task's cross-process gathers (process_allgather) and rebuilt arrays.
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_process_rl_equals_one_process(inputs, tmp_path):
    """A 2-process RL job (jaxlm launch, 127.0.0.1, gloo) trains like one process fed
    the same global prompt batches: the same rewards and responses per step, losses
    and final params to float tolerance, the same greedy held-out rewards; and the
    `jaxlm train` command ends with its summary (exit 0)."""
    root = inputs[0]
    spec = f"rl.rewards={DIGITS},answer=0"  # "answer": the eval samples pass@k too
    common = overrides(inputs, "train.steps=4", "rl.kl_weight=0.1", spec)
    env = {"PYTHONPATH": f"{root}:{REPO}"}
    job = tmp_path / "job"
    cmd = jaxlm("launch", "-n", "2", "--", "jaxlm", *train_args(job, common))
    log = tmp_path / "job.log"
    assert run(cmd, environment(2, **env), log, timeout=300) == 0, tail(log)

    one = tmp_path / "one"
    driver = [sys.executable, str(REPO / "tests/helpers/rl_both_shards_train.py"), str(one)]
    for item in common:
        driver += ["--set", item]
    log = tmp_path / "one.log"
    assert run(driver, environment(4, **env), log, timeout=300) == 0, tail(log)

    ours, theirs = records(job), records(one)
    assert [r["step"] for r in ours] == [1, 2, 3, 4] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        for key in ("reward", "response_tokens", "truncated", "groups_with_signal"):
            assert a[key] == b[key], (a["step"], key)
        for key in ("loss", "kl", "entropy", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    params, _, _ = restore_latest_params(job)
    expected, _, _ = restore_latest_params(one)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    job_eval, one_eval = records(job, "eval")[-1], records(one, "eval")[-1]
    assert job_eval["prompts"] == one_eval["prompts"] > 0  # every held-out prompt, once
    for key in ("reward", "accuracy"):  # greedy; pass@k draws per held-out batch
        assert job_eval[key] == pytest.approx(one_eval[key], abs=1e-6), key
    assert "pass_at_4" in job_eval
