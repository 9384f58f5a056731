"""Inputs that cannot be right end in one `jaxlm: error:` line naming the key or path.

Config values that would train uphill or on NaN, a batch or mesh that does not fit
the devices, tokenizer files that are not SentencePiece models, run names that are
paths; and Ctrl-C in `jaxlm chat`, which stops the reply being streamed and, at the
prompt, leaves without a traceback.
"""

import dataclasses
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.runs import REPO, TINY, environment, make_tokenizer

from jaxlm import cli
from jaxlm.config import Config, ConfigError, DataConfig, apply_overrides, config_from_dict

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


# ---------------------------------------------------------------- Ctrl-C in chat


@pytest.fixture(scope="module")
def long_reply_export(tmp_path_factory):
    """A random tiny model with room for a long reply (Ctrl-C must land mid-stream)."""
    from jaxlm.checkpointing.params_io import save_params
    from jaxlm.data.tokenizer import train_tokenizer
    from jaxlm.models.params import init_params
    from jaxlm.presets import get_preset

    root = tmp_path_factory.mktemp("chat")
    vocab = 320
    model = dataclasses.replace(get_preset("tiny"), vocab_size=vocab, max_seq_len=2048)
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40
    tokenizer = train_tokenizer([text], root / "tok", vocab_size=vocab)
    cfg = Config(model=model, data=DataConfig(tokenizer_vocab_size=vocab, seq_len=32))
    # Random weights of the right shapes, without running init_params (tens of seconds
    # on a loaded 2-core machine); unit norm scales, so the logits are not flat.
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(3)))
    rng = np.random.default_rng(3)

    def random_like(path, shape):
        if "norm" in jax.tree_util.keystr(path):
            return np.ones(shape.shape, shape.dtype)
        return (0.02 * rng.standard_normal(shape.shape)).astype(shape.dtype)

    params = jax.tree_util.tree_map_with_path(random_like, shapes)
    return save_params(root / "export", params, cfg, tokenizer=tokenizer.path)


class Terminal:
    """A command on a pseudo-terminal: what it printed, keys typed, its exit status."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.fd, tty = pty.openpty()
        # `setsid --ctty`: the terminal becomes the command's controlling terminal, so a
        # typed Ctrl-C reaches it as SIGINT, as in a shell (no fork of this threaded
        # process, which pty.fork would do).
        self.proc = subprocess.Popen(
            ["setsid", "--ctty", *cmd], cwd=REPO, env=env, stdin=tty, stdout=tty, stderr=tty
        )
        os.close(tty)
        self.output = b""

    def read_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.output):
                return True
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the command exited and closed the terminal
                    chunk = b""
                if not chunk:
                    return condition(self.output)
                self.output += chunk
        return condition(self.output)

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_status(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_until(lambda _: False, 0.1)  # keep draining so it never blocks
            if self.proc.poll() is not None:
                return self.proc.returncode
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self.fd)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


def test_ctrl_c_stops_a_streaming_reply_and_then_leaves_cleanly(long_reply_export):
    cmd = [sys.executable, "-m", "jaxlm.cli", "chat", str(long_reply_export)]
    terminal = Terminal([*cmd, "--max-new-tokens", "1900"], environment(1))
    try:
        assert terminal.read_until(lambda out: b"\n> " in out, 120), terminal.text
        terminal.type(b"hello there\r")
        prompt_end = len(terminal.output)
        # A few characters of the reply are on screen: it is streaming.
        assert terminal.read_until(lambda out: len(out) > prompt_end + 30, 60), terminal.text
        terminal.type(b"\x03")
        assert terminal.read_until(lambda out: b"[reply interrupted]" in out, 30), terminal.text
        assert terminal.read_until(lambda out: out.rstrip().endswith(b">"), 30), terminal.text
        terminal.type(b"\x03")  # at the prompt: leave
        status = terminal.exit_status(30)
        assert status == 0, terminal.text
        assert "Traceback" not in terminal.text and "KeyboardInterrupt" not in terminal.text
    finally:
        terminal.close()
