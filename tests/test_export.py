"""`jaxlm export WORKDIR OUT`: params (optionally bfloat16), tokenizer and config.

The workdir is built with the Checkpointer directly (two steps of the tiny preset's
TrainState and a tokenizer), so no training is needed to check what is exported.
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import cli
from jaxlm.checkpointing.manager import Checkpointer
from jaxlm.checkpointing.params_io import load_params
from jaxlm.config import Config, DataConfig, OptimConfig
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.models.params import abstract_model, param_shardings
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.optim import make_optimizer
from jaxlm.training.state import create_train_state

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run's workdir: tokenizer.model (+ .json) and checkpoints 3 and 5."""
    root = tmp_path_factory.mktemp("export")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V)
    workdir = root / "run"
    workdir.mkdir()
    shutil.copyfile(tokenizer.path, workdir / "tokenizer.model")
    shutil.copyfile(tokenizer.path.with_suffix(".json"), workdir / "tokenizer.json")
    cfg = Config(model=MODEL, data=DataConfig(tokenizer_vocab_size=V, seq_len=32))
    mesh = make_mesh((2, 1, 2), jax.devices()[:4])
    optimizer = make_optimizer(OptimConfig(), 10)
    checkpointer = Checkpointer(workdir / "checkpoints")
    state, _ = create_train_state(MODEL, optimizer, mesh, jax.random.key(1))
    params = {}
    for step in (3, 5):
        checkpointer.save(step, state, {"iterator": {}}, cfg.to_json())
        params[step] = jax.tree.map(np.asarray, state.params)
        state = state.replace(params=jax.tree.map(lambda x: x * 1.5, state.params))
    checkpointer.wait()
    checkpointer.close()
    return workdir, params, tokenizer


def export(*args) -> int:
    return cli.main(["export", *map(str, args)])


def leaves(params):
    return jax.tree.leaves(params)


def test_export_round_trips_through_load_params(workdir, tmp_path, capsys):
    run, params, tokenizer = workdir
    out = tmp_path / "fp32"
    assert export(run, out) == 0
    assert f"exported {run / 'checkpoints' / '5'} -> {out}" in capsys.readouterr().out
    loaded, cfg = load_params(out)
    for a, b in zip(leaves(loaded), leaves(params[5]), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    # Self-contained: the config names the copied tokenizer, with its sidecar.
    assert cfg.data.tokenizer == str(out / "tokenizer.model") and cfg.model == MODEL
    assert Tokenizer.load(cfg.data.tokenizer).sha256 == tokenizer.sha256
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["model"]["param_dtype"] == "float32"


def test_bfloat16_export_stores_half_and_loads_as_the_fp32_cast(workdir, tmp_path):
    run, params, _ = workdir
    assert export(run, tmp_path / "bf16", "--dtype", "bfloat16", "--step", 3) == 0
    assert export(run, tmp_path / "fp32", "--step", 3) == 0
    size = {d: sum(p.stat().st_size for p in (tmp_path / d).rglob("*")) for d in ("bf16", "fp32")}
    assert size["bf16"] < 0.75 * size["fp32"], size
    # Stored as bfloat16 ...
    stored, _ = load_params(
        tmp_path / "bf16", model=dataclasses.replace(MODEL, param_dtype="bfloat16")
    )
    assert all(x.dtype == jnp.bfloat16 for x in leaves(stored))
    # ... and cast to the fp32 model's dtype on load (--step 3: the older checkpoint).
    loaded, _ = load_params(tmp_path / "bf16")
    for a, b in zip(leaves(loaded), leaves(params[3]), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(jnp.bfloat16).astype(np.float32))
    assert not np.array_equal(loaded["embed"][...], params[3]["embed"][...])  # really rounded
    # Straight into shardings, cast on the way.
    mesh = make_mesh((1, 2, 2), jax.devices()[:4])
    shardings = param_shardings(abstract_model(MODEL)[1], mesh)
    sharded, _ = load_params(tmp_path / "bf16", shardings=shardings)
    assert sharded["embed"][...].dtype == jnp.float32
    assert sharded["embed"][...].sharding == shardings["embed"].get_value()
    np.testing.assert_array_equal(np.asarray(sharded["embed"][...]), loaded["embed"][...])


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing-workdir", "no such workdir: {tmp}/nowhere"),
        ("missing-step", "no finished step 4 (have [3, 5])"),
        ("not-empty", "exists and is not empty"),
    ],
)
def test_export_refusals_exit_2_naming_the_problem(case, needle, workdir, tmp_path, capsys):
    run, _, _ = workdir
    args = {
        "missing-workdir": (tmp_path / "nowhere", tmp_path / "out"),
        "missing-step": (run, tmp_path / "out", "--step", 4),
        "not-empty": (run, run),
    }[case]
    assert export(*args) == 2
    assert needle.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "out" / "config.json").exists()


def test_export_skips_a_damaged_newest_step_with_a_warning(workdir, tmp_path, capsys):
    run, params, _ = workdir
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = copy / "checkpoints" / "5" / "state" / "_METADATA"
    meta.write_text(meta.read_text()[:100])  # truncated
    assert export(copy, tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert f"{copy / 'checkpoints' / '5'} is unusable" in captured.err
    assert f"exported {copy / 'checkpoints' / '3'}" in captured.out
    loaded, _ = load_params(tmp_path / "out")
    np.testing.assert_array_equal(loaded["embed"][...], params[3]["embed"][...])
    assert (copy / "checkpoints" / "5").is_dir()  # read-only: nothing moved
