"""Inputs that cannot be right end in one `jaxlm: error:` line naming the key or path.

Config values that would train uphill or on NaN, a batch or mesh that does not fit
the devices, tokenizer files that are not SentencePiece models, run names that are
paths. (Ctrl-C in `jaxlm chat`: tests/test_chat_terminal.py.)
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import REPO, TINY, environment, make_tokenizer

from jaxlm import cli
from jaxlm.config import Config, ConfigError, apply_overrides, config_from_dict

QUICKSTART = str(REPO / "experiments" / "quickstart.py")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def train_tiny(workdir: Path | None, overrides: list[str]) -> int:
    """`jaxlm train quickstart` on the tiny model for 2 steps (should it not be refused)."""
    args = ["train", QUICKSTART] + (["--workdir", str(workdir)] if workdir else [])
    for item in [*TINY, "train.steps=2", *overrides]:
        args += ["--set", item]
    return cli.main(args)


def one_error_line(err: str) -> str:
    """The single `jaxlm: error:` line of a refused command (and nothing else)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("jaxlm: error: "), err
    return lines[0]


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "item",
    [
        "optim.lr=-0.01",
        "optim.lr=nan",
        "optim.lr=inf",
        "optim.weight_decay=-0.1",
        "optim.b1=1.5",
        "optim.b2=1",
        "optim.eps=0",
        "optim.clip_norm=-1",
        "optim.z_loss=-1e-4",
        "optim.min_lr_ratio=-0.5",
        "model.rope_theta=nan",
        "model.norm_eps=-1e-5",
        "model.init_std=0",
        "data.eval_max_docs=-1",
        "train.eval_every=-5",
        "train.checkpoint_every=-1",
        "train.peak_flops=-inf",
        "preference.beta=nan",
    ],
)
def test_values_that_cannot_be_right_are_refused_naming_the_key(
    tokenizer_path, tmp_path, capsys, item
):
    assert train_tiny(tmp_path, [f"data.tokenizer={tokenizer_path}", item]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{item.split('=')[0]}=" in line, line


def test_non_finite_values_from_a_file_are_refused():
    data = Config().to_dict()
    data["optim"]["lr"] = float("nan")  # json.loads reads NaN and Infinity
    with pytest.raises(ConfigError, match=r"optim\.lr=nan must be a finite number"):
        config_from_dict(json.loads(json.dumps(data)))


def test_legitimate_edge_values_are_accepted():
    # lr=0 freezes the weights on purpose (throughput, data-pipeline checks); the
    # others are documented "off" values.
    cfg = apply_overrides(
        Config(),
        ["optim.lr=0", "optim.clip_norm=0", "optim.weight_decay=0", "optim.b1=0", "optim.z_loss=0"],
    )
    assert cfg.optim.lr == 0.0


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["../../escaped", "<absolute>", "a/b", "..", "."])
def test_a_name_that_is_a_path_is_refused(tokenizer_path, tmp_path, monkeypatch, capsys, name):
    cwd = tmp_path / "x" / "y"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    name = name.replace("<absolute>", str(tmp_path / "absolute"))
    assert train_tiny(None, [f"data.tokenizer={tokenizer_path}", f"name={name}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"name={name!r}" in line and "--workdir" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # nothing written beside
    assert list(cwd.iterdir()) == []


def test_an_empty_name_is_refused():
    with pytest.raises(ConfigError, match="name='' "):
        apply_overrides(Config(), ["name="])


# ---------------------------------------------------------------- batch and mesh


def test_a_batch_the_mesh_does_not_divide_is_one_line(tokenizer_path, tmp_path, capsys):
    # 8 devices in this process (conftest), data parallel over all of them.
    assert train_tiny(tmp_path, [f"data.tokenizer={tokenizer_path}", "data.batch_size=7"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "data.batch_size=7" in line and "8 devices" in line, line
    assert "data.batch_size=8" in line, line  # what would work


def test_a_mesh_larger_than_the_devices_is_one_line(tokenizer_path, tmp_path, capsys):
    assert train_tiny(tmp_path, [f"data.tokenizer={tokenizer_path}", "mesh.data=16"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "mesh.data=16" in line and "8 devices" in line, line


def test_two_devices_in_one_process_name_the_batch_and_the_mesh(tokenizer_path, tmp_path):
    """The case as reported: 2 devices, batch 7 (was a 37-line IndivisibleError)."""
    cmd = [sys.executable, "-m", "jaxlm.cli", "train", "quickstart", "--workdir", str(tmp_path)]
    for item in [*TINY, f"data.tokenizer={tokenizer_path}", "data.batch_size=7", "train.steps=2"]:
        cmd += ["--set", item]
    done = subprocess.run(
        cmd, cwd=REPO, env=environment(2), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "data.batch_size=7" in line and "2 devices" in line, line


# ---------------------------------------------------------------- tokenizer files


def _bad_tokenizer(case: str, tokenizer_path: Path, directory: Path) -> tuple[Path, str]:
    """(a file of this case, what the message says it looks like)."""
    model = tokenizer_path.read_bytes()
    files = {
        "garbage": (np.random.default_rng(0).bytes(512), "not a SentencePiece model"),
        "text": (b"hello\nthis is a text file\n", "text file"),
        "truncated": (model[: len(model) // 2], "truncated"),
        "hf_json": (
            json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}).encode(),
            "Hugging Face tokenizer.json",
        ),
        "empty": (b"", "empty"),
    }
    content, says = files[case]
    path = directory / ("tokenizer.json" if case == "hf_json" else "given.model")
    path.write_bytes(content)
    return path, says


@pytest.mark.parametrize("case", ["garbage", "text", "truncated", "hf_json", "empty"])
def test_a_bad_tokenizer_file_is_one_line_naming_it(tokenizer_path, tmp_path, capsys, case):
    path, says = _bad_tokenizer(case, tokenizer_path, tmp_path)
    assert train_tiny(tmp_path / "w", [f"data.tokenizer={path}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(path) in line and says in line, line


def test_convert_with_a_tokenizer_json_is_one_line_naming_it(tmp_path, capsys):
    from jaxlm.config import ModelConfig
    from jaxlm.hf.config_map import hf_config_from_model

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    model = ModelConfig(vocab_size=384, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1)
    config = hf_config_from_model(model, bos_id=1, eos_id=2, pad_id=0, dtype="float32")
    (hf_dir / "config.json").write_text(json.dumps(config))
    tok = hf_dir / "tokenizer.json"
    tok.write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    out = tmp_path / "out"
    assert cli.main(["convert", "--from-hf", str(hf_dir), str(out), "--tokenizer", str(tok)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(tok) in line and "Hugging Face tokenizer.json" in line, line
    assert not out.exists()
