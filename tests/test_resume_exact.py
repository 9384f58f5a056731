"""Resumed runs are the same run, bitwise.

One straight run of 6 steps (checkpoints at 2, 4, 6; async saves) is the reference.
Every other run here restarts from one of its checkpoints, or from a copy of it that
was killed, damaged or reconfigured, and must reproduce the reference's per-step
losses (exact float equality, from metrics.jsonl with train.log_every=1) and its final
params (bitwise), or fail with a message naming what is wrong.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.checkpoint_damage import swap_state_with, truncate_largest_chunk
from test_train_loop import SMALL

from jaxlm import cli
from jaxlm.checkpointing.params_io import load_init_params, restore_latest_params
from jaxlm.checkpointing.resume_rules import check_resume_config
from jaxlm.checkpointing.shapes import CheckpointMismatchError
from jaxlm.config import Config, ConfigError, apply_overrides, config_from_dict
from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import InputError
from jaxlm.training.loop import train

HELPER = Path(__file__).parent / "helpers" / "train_in_new_process.py"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(overrides, config file, workdir) of the uninterrupted reference run."""
    root = tmp_path_factory.mktemp("resume")
    texts = [read_text(path)[:3000] for path in stdlib_files("train")[:60]]
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tokenizer = train_tokenizer(texts, root / "tok", vocab_size=384, max_chars=200_000)
    overrides = [
        *SMALL,
        f"data.sources=jsonl:{data}",
        f"data.tokenizer={tokenizer.path}",
        "data.val_fraction=0.1",
        "train.steps=6",
        "train.checkpoint_every=2",
        "train.log_every=1",
    ]
    cfg = apply_overrides(Config(), overrides)
    config_file = root / "config.json"
    config_file.write_text(cfg.to_json())
    workdir = root / "straight"
    train(cfg, workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]
    return overrides, config_file, workdir


def losses(workdir: Path) -> dict[int, float]:
    """Per-step loss; a resumed run appends, so the last record of a step wins."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train":
            out[record["step"]] = record["loss"]
    return out


def copy_checkpoints(src: Path, dest: Path, steps) -> Path:
    for step in steps:
        shutil.copytree(src / "checkpoints" / str(step), dest / "checkpoints" / str(step))
    return dest


def assert_same_run(workdir: Path, reference: Path, from_step: int) -> None:
    """Losses after `from_step` equal exactly; final params and all state bitwise."""
    ours, theirs = losses(workdir), losses(reference)
    assert sorted(ours)[-1] == 6 and len(theirs) == 6
    for step in range(from_step + 1, 7):
        assert ours[step] == theirs[step], (step, ours[step], theirs[step])
    params, _, step = restore_latest_params(workdir)
    expected, _, _ = restore_latest_params(reference)
    assert step == 6
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    # Every leaf of the state (optimizer moments, step, loss EMA) by its fingerprint.
    checksum = "checkpoints/6/checksum/metadata"
    ours_sum = json.loads((workdir / checksum).read_text())["state"]
    assert ours_sum == json.loads((reference / checksum).read_text())["state"]


def run_in_new_process(config_file: Path, workdir: Path, *extra: str):
    cmd = [sys.executable, str(HELPER), str(config_file), str(workdir), "8", *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)


# Slow: ~39 s; bitwise resume in a new process is also what the killed-during-save test here and
# test_preemption.py check by default
@pytest.mark.slow
def test_resume_in_a_new_process_is_bitwise(straight, tmp_path):
    """k=2 steps, then a new process restores and runs the other 4."""
    _, config_file, reference = straight
    workdir = copy_checkpoints(reference, tmp_path / "resumed", [2])
    proc = run_in_new_process(config_file, workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resumed from {workdir / 'checkpoints'}/2" in proc.stdout
    assert sorted(losses(workdir)) == [3, 4, 5, 6]  # it did not start over
    assert_same_run(workdir, reference, from_step=2)


def test_killed_during_an_async_save_resumes_from_the_last_finished_step(
    straight, tmp_path, capsys
):
    _, config_file, reference = straight
    workdir = tmp_path / "killed"
    proc = run_in_new_process(config_file, workdir, "4")
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert "killing myself during the save of step 4" in proc.stdout
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2"]
    assert list(checkpoints.glob("4.orbax-checkpoint-tmp*"))  # the half-written save

    cfg = apply_overrides(Config(), straight[0])
    train(cfg, workdir)
    assert f"resumed from {checkpoints}/2" in capsys.readouterr().out
    assert not list(checkpoints.glob("*tmp*"))  # cleaned up
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4", "6"]
    assert_same_run(workdir, reference, from_step=2)


def test_damaged_newest_checkpoint_falls_back_and_the_run_is_still_exact(
    straight, tmp_path, capsys
):
    overrides, _, reference = straight
    workdir = copy_checkpoints(reference, tmp_path / "damaged", [2, 4, 6])
    # Step 2's arrays under step 6: readable, wrong values (checkpoint_damage.py).
    swap_state_with(workdir / "checkpoints" / "6", reference / "checkpoints" / "2")
    train(apply_overrides(Config(), overrides), workdir)
    out, err = capsys.readouterr()
    assert f"checkpoint {workdir / 'checkpoints' / '6'} is unusable (checksum mismatch in" in err, (
        err
    )
    assert f"resumed from {workdir / 'checkpoints'}/4" in out
    assert (workdir / "checkpoints" / "6.corrupt").is_dir()
    assert_same_run(workdir, reference, from_step=4)


def test_nothing_restorable_exits_non_zero_naming_each_step(straight, tmp_path, capsys):
    _, config_file, reference = straight
    workdir = copy_checkpoints(reference, tmp_path / "hopeless", [4, 6])
    swap_state_with(workdir / "checkpoints" / "6", reference / "checkpoints" / "2")
    truncate_largest_chunk(workdir / "checkpoints" / "4")
    experiment = tmp_path / "same_config.py"
    experiment.write_text(
        '"""The reference run\'s config."""\nimport json\n'
        "from jaxlm.config import config_from_dict\n\n\ndef get_config():\n"
        f"    return config_from_dict(json.loads(open({str(config_file)!r}).read()))\n"
    )
    status = cli.main(["train", str(experiment), "--workdir", str(workdir)])
    err = capsys.readouterr().err
    assert status == 2
    assert "no checkpoint can be restored (step 6: checksum mismatch in" in err
    assert (
        "; step 4: ValueError: OUT_OF_RANGE: Error reading" in err
        and "Refusing to start over" in err
    )
    assert not (workdir / "metrics.jsonl").exists() or not losses(workdir)  # nothing trained
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6"]


def test_config_changes_are_refused_unless_allowed_by_key(straight, tmp_path, capsys):
    overrides, _, reference = straight
    workdir = copy_checkpoints(reference, tmp_path / "longer", [6])
    saved = json.loads((workdir / "checkpoints" / "6" / "config" / "metadata").read_text())
    longer = [*overrides, "train.steps=8"]
    with pytest.raises(InputError, match=r"\(train.steps: 6 -> 8\); .*train.allow_config_change"):
        check_resume_config(saved, apply_overrides(Config(), longer), "here")
    typo = apply_overrides(Config(), [*longer, "train.allow_config_change=train.stepz"])
    unknown = "train.allow_config_change: unknown config key 'train.stepz'; did you mean"
    with pytest.raises(ConfigError, match=unknown):
        check_resume_config(saved, typo, "here")

    allowed = [*longer, "train.allow_config_change=train.steps"]
    other = apply_overrides(Config(), [*allowed, "optim.lr=0.001"])
    with pytest.raises(InputError, match=r"checkpoint's \(optim.lr: 0.003 -> 0.001\); "):
        train(other, workdir)  # only what is listed may differ

    # Operational keys (logging, saving, watchdog, mesh) need no permission.
    operational = ["train.log_every=2", "train.step_timeout_s=600", "mesh.data=2", "mesh.fsdp=4"]
    assert check_resume_config(saved, apply_overrides(Config(), [*allowed, *operational]), "") == [
        "mesh.data: -1 -> 2",
        "mesh.fsdp: 1 -> 4",
        "train.log_every: 1 -> 2",
        "train.step_timeout_s: 0.0 -> 600.0",
        "train.steps: 6 -> 8",
    ]

    result = train(apply_overrides(Config(), allowed), workdir)
    out = capsys.readouterr().out
    assert "config changes accepted on resume: train.steps: 6 -> 8" in out
    assert f"resumed from {workdir / 'checkpoints'}/6" in out
    assert result.steps == 8 and sorted(losses(workdir)) == [7, 8]


def test_another_model_shape_is_refused_naming_parameter_and_shapes(straight, tmp_path):
    overrides, _, reference = straight
    workdir = copy_checkpoints(reference, tmp_path / "reshaped", [6])
    reshaped = [*overrides, "model.d_ff=64", "train.allow_config_change=model.d_ff"]
    with pytest.raises(CheckpointMismatchError) as info:
        train(apply_overrides(Config(), reshaped), workdir)
    message = str(info.value)
    assert f"{workdir / 'checkpoints' / '6'} does not fit this model" in message
    assert "params/layers/w_up: checkpoint (1, 32, 128) vs model (1, 32, 64)" in message
    assert not (workdir / "checkpoints" / "6.corrupt").exists()  # a mismatch is not damage


def test_init_from_a_workdir_or_its_bfloat16_export_starts_from_its_params(
    straight, tmp_path, capsys
):
    """`train.init_from`: params only, fresh optimizer (lr 0 keeps them exactly)."""
    overrides, _, reference = straight
    expected, _, _ = restore_latest_params(reference)
    fresh = [*overrides, "train.steps=1", "optim.lr=0"]
    train(apply_overrides(Config(), [*fresh, f"train.init_from={reference}"]), tmp_path / "a")
    source = f"params initialised from {reference / 'checkpoints' / '6'} (params only)"
    assert source in capsys.readouterr().out
    after, _, _ = restore_latest_params(tmp_path / "a")
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))

    # A bfloat16 export loads into the fp32 model, cast (the same call train makes).
    export = tmp_path / "bf16"
    assert cli.main(["export", str(reference), str(export), "--dtype", "bfloat16"]) == 0
    cfg = apply_overrides(Config(), fresh)
    loaded, source = load_init_params(export, cfg.model)
    assert source == f"params directory {export}"
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(jax.numpy.bfloat16).astype(np.float32))

    other = apply_overrides(Config(), [*fresh, "model.d_ff=64", f"train.init_from={reference}"])
    with pytest.raises(InputError, match=r"do not fit this model \(model.d_ff: 0 -> 64\)"):
        train(other, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="is neither a params directory"):
        load_init_params(tmp_path / "nowhere", cfg.model)


def test_records_carry_tokens_flops_and_a_clock_that_resumes(straight, tmp_path):
    """The progress axes `jaxlm compare` plots: exact tokens and FLOPs per step, and a
    wall clock that a resumed run continues instead of restarting at 0."""
    from jaxlm.models.flops import flops_per_token

    _, config_file, reference = straight
    cfg = config_from_dict(json.loads(config_file.read_text()))
    per_step = cfg.data.batch_size * cfg.data.seq_len
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    for r in train_records:
        assert r["tokens_seen"] == r["step"] * per_step
        per_token = flops_per_token(cfg.model, cfg.data.seq_len)
        assert r["flops"] == pytest.approx(r["tokens_seen"] * per_token)
    clock = [r["elapsed_s"] for r in train_records]
    assert clock == sorted(clock) and clock[0] > 0

    workdir = copy_checkpoints(reference, tmp_path / "resumed", [2])
    kept = [
        line
        for line in (reference / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["step"] <= 2
    ]
    torn = '{"step": 3, "spl'  # a record cut short by a kill
    (workdir / "metrics.jsonl").write_text("\n".join(kept) + "\n" + torn)
    train(cfg, workdir)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert lines[: len(kept)] == kept
    assert (workdir / "metrics.jsonl.torn").read_text() == torn + "\n"
    resumed = [json.loads(line) for line in lines[len(kept) :]]
    at_2 = max(json.loads(line).get("elapsed_s", 0) for line in kept)
    first = next(r for r in resumed if r["split"] == "train")
    assert first["step"] == 3 and first["elapsed_s"] > at_2
    assert first["tokens_seen"] == 3 * per_step
    # An eval record keeps its own `tokens`: the held-out count, the same at every eval.
    (final_eval,) = [r for r in records if r["split"] == "eval"]
    (summary,) = [r for r in records if r["split"] == "summary"]
    assert final_eval["tokens"] == summary["eval_tokens"] != final_eval["tokens_seen"]
