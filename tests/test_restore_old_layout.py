"""What the code before the package move wrote still restores, through the command line.

tests/fixtures/pre_packages was written at commit a155ee2, the last commit with the
flat module layout, by tests/fixtures/make_pre_packages.py (its docstring says what
each directory holds). Here today's `jaxlm` commands read it, as a researcher's
existing runs and exports would be read:

  - `jaxlm train` resumes the run from its step-2 checkpoint and trains steps 3 and 4
    to the losses the old code reached resuming the same way;
  - `jaxlm export` of the old workdir writes the very arrays of the old export, and
    `--adapters-only` of the old LoRA run the very arrays of its old adapters export;
  - `jaxlm generate` and `jaxlm eval` on the old export give the old greedy completion
    and held-out loss.

The fixture is copied once per module and the commands run in the copy (the runs
recorded their paths relative to it); nothing is written into tests/fixtures.

The resumed run is a `jaxlm train` process on one CPU device, as the old run was
(this process has eight, tests/conftest.py, and would compute another reduction
order); the other commands run here. XLA may pick other kernels on another CPU or jax
version, so losses agree to 1e-5 relative, as the golden losses do off their recorded
stack (on the stack that wrote the fixture they are bitwise equal). Arrays that are
only stored and read back must agree bit for bit.
"""

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import runs

from jaxlm import cli
from jaxlm.config import ModelConfig

FIXTURE = Path(__file__).parent / "fixtures" / "pre_packages"
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.py"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RTOL = 1e-5


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A copy of the fixture, made the working directory for the module's commands."""
    root = tmp_path_factory.mktemp("old") / "pre_packages"
    shutil.copytree(FIXTURE, root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield root


def jaxlm(*args) -> None:
    status = cli.main([str(arg) for arg in args])
    assert status == 0, f"jaxlm {' '.join(map(str, args))} exited {status}"


def train_losses(workdir: Path) -> dict[str, list[float]]:
    """{step: [loss of every train record of that step]}, in the file's order (a
    retrained step would show twice)."""
    losses: dict[str, list[float]] = {}
    for record in runs.records(workdir):
        losses.setdefault(str(record["step"]), []).append(record["loss"])
    return losses


def stored_params(directory: Path) -> dict[str, np.ndarray]:
    """The arrays of a params directory as stored, read by Orbax alone (no jaxlm code,
    so what is compared does not depend on how jaxlm reads it), by tree path."""
    tree = ocp.PyTreeCheckpointer().restore(directory.resolve() / "params")
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def assert_same_arrays(new: Path, old: Path) -> None:
    a, b = stored_params(new), stored_params(old)
    assert sorted(a) == sorted(b)
    assert b, f"no arrays in {old}"
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} differs"


def test_the_old_run_resumes_from_its_checkpoint_to_the_old_losses(old):
    workdir = old / "resumed"
    shutil.copytree(old / "run", workdir)
    sets = EXPECTED["train_overrides"] + EXPECTED["resume_overrides"]
    # The quickstart trains with Muon since 2026-12; the old run used AdamW, the only
    # optimizer then (its config predates optim.optimizer). Without this the resume is
    # refused as a changed config, which is right for a user's run too. Its scanned
    # layers (scan_layers=true) may become today's "auto" (unrolled on CPU): accepted.
    sets = [*sets, "optim.optimizer=adamw"]
    log = old / "resumed.log"
    cmd = runs.jaxlm("train", str(EXPERIMENT), "--workdir", "resumed")
    cmd += [arg for item in sets for arg in ("--set", item)]
    with log.open("wb") as out:  # in the copy: the run's data source is relative to it
        status = subprocess.run(
            cmd, cwd=old, env=runs.environment(1), stdout=out, stderr=subprocess.STDOUT,
            timeout=600, check=False,
        ).returncode  # fmt: skip
    assert status == 0, runs.tail(log)
    resumed_from = f"resumed from {workdir.resolve() / 'checkpoints' / '2'}"
    assert resumed_from in log.read_text(), runs.tail(log)
    assert "model.scan_layers: True -> 'auto'" in log.read_text(), runs.tail(log)
    losses = train_losses(workdir)
    # Steps 1 and 2 stay the old run's records, logged once: nothing was retrained.
    assert {s: losses[s] for s in ("1", "2")} == {s: [v] for s, v in EXPECTED["losses"].items()}
    for step, expected in EXPECTED["resumed_losses"].items():
        assert len(losses[step]) == 1, (step, losses[step])
        np.testing.assert_allclose(losses[step][0], expected, rtol=RTOL, err_msg=f"step {step}")


def test_exporting_the_old_run_writes_the_old_export(old, tmp_path):
    jaxlm("export", old / "run", tmp_path / "export")
    assert_same_arrays(tmp_path / "export", old / "export")
    model = json.loads((tmp_path / "export" / "config.json").read_text())["model"]
    old_model = json.loads((old / "export" / "config.json").read_text())["model"]
    assert {key: model[key] for key in old_model} == old_model
    # Keys added since the fixture was written take their defaults (what the old code
    # computed), e.g. the yarn_hf options.
    defaults = {field.name: field.default for field in dataclasses.fields(ModelConfig)}
    assert {key: model[key] for key in set(model) - set(old_model)} == {
        key: defaults[key] for key in set(model) - set(old_model)
    }


def test_exporting_the_old_lora_run_writes_its_old_adapters(old, tmp_path):
    jaxlm("export", old / "lora", tmp_path / "adapters", "--adapters-only")
    assert_same_arrays(tmp_path / "adapters", old / "lora_adapters")


def test_the_old_export_generates_the_old_greedy_completion(old, tmp_path):
    out = tmp_path / "generate.json"
    jaxlm(
        "generate", "export", EXPECTED["prompt"], "--max-new-tokens", EXPECTED["new_tokens"],
        "--ignore-eos", "--no-stream", "--json", out,
    )  # fmt: skip
    [result] = json.loads(out.read_text())["results"]
    assert result["new_tokens"] == EXPECTED["new_tokens"]
    assert result["completion"] == EXPECTED["completion"]


def test_the_old_export_evaluates_to_the_old_loss(old, tmp_path):
    out = tmp_path / "eval.json"
    jaxlm("eval", "export", "--data", "jsonl:corpus.jsonl", "--json", out)
    [new] = json.loads(out.read_text())["sources"]
    [expected] = EXPECTED["eval"]["sources"]
    same = ("source", "split", "format", "tokens", "bytes")
    assert {k: new[k] for k in same} == {k: expected[k] for k in same}
    np.testing.assert_allclose(new["loss"], expected["loss"], rtol=RTOL)
