"""`jaxlm train` / `config` / `init` as a new user runs them: from a folder of MiniMind-format
files outside the repository, without writing an experiment file.

Covers: a train from flags alone (preset, data, format, tokenizer) that finishes and
saves; train.epochs turned into exactly ceil(epochs * packed rows / batch) steps,
checked against rows counted here from the data; data.seq_len implied by the model;
train.init_from bringing the model shape (and a conflicting override named);
shipped experiments found from any directory; `jaxlm init` writing a file that
`jaxlm config` and `jaxlm train` accept.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from helpers.runs import environment, make_tokenizer

SEQ_LEN = 64  # the tiny preset's max_seq_len, which data.seq_len follows when unset
BATCH = 8

PRETRAIN = [
    {"text": f"第{i}篇：今天天气很好 🌞，我们去公园散步。Document {i}: hello world. " * (1 + i % 4)}
    for i in range(24)
]
EVAL = [{"text": "评估文本 🧪：模型应当预测下一个词。held-out text."} for _ in range(3)]
SFT = [
    {
        "conversations": [
            {"role": "system", "content": "你是一个乐于助人的助手。"},
            {"role": "user", "content": f"{i}加{i}等于几？"},
            {"role": "assistant", "content": f"{i}加{i}等于{2 * i}。🙂"},
            {"role": "user", "content": "谢谢！"},
            {"role": "assistant", "content": "不客气 👍"},
        ]
    }
    for i in range(12)
]
QUIET = [
    "--set",
    "train.progress_bar=false",
    "--set",
    "train.peak_flops=1e12",  # a number for MFU instead of measuring the CPU
    "--set",
    "train.eval_every=0",
    "--set",
    "train.generate_prompt=",
    "--set",
    f"data.batch_size={BATCH}",
]


def write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")


def jaxlm(cwd: Path, *args: str, timeout: float = 300, **env: str):
    """Runs `python -m jaxlm.cli ARGS` in `cwd` as a user would; returns the process."""
    return subprocess.run(
        [sys.executable, "-m", "jaxlm.cli", *args],
        cwd=cwd,
        env=environment(1, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def config(cwd: Path, *args: str) -> dict:
    proc = jaxlm(cwd, "config", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A user's folder: MiniMind-format files and a tokenizer, nothing from the repo."""
    root = tmp_path_factory.mktemp("user")
    write_jsonl(root / "pretrain_hq.jsonl", PRETRAIN)
    write_jsonl(root / "eval.jsonl", EVAL)
    write_jsonl(root / "sft_mini.jsonl", SFT)
    write_jsonl(root / "sft_eval.jsonl", SFT[:2])
    (root / "tok.model").write_bytes(make_tokenizer(root).read_bytes())
    return root


@pytest.fixture(scope="module")
def pretrained(folder: Path):
    """`jaxlm train` from flags alone, 2 epochs, concat_then_split packing."""
    proc = jaxlm(
        folder,
        "train",
        "--preset", "tiny",
        "--data", "jsonl:pretrain_hq.jsonl",
        "--eval-data", "jsonl:eval.jsonl",
        "--format", "text",
        "--tokenizer", "tok.model",
        "--workdir", "runs/pre",
        "--set", "train.epochs=2",
        "--set", "data.packer=concat_then_split",
        *QUIET,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder / "runs" / "pre", proc.stdout


def expected_rows(folder: Path) -> int:
    """Packed rows of one pass, counted here: concat_then_split fills rows completely,
    so one epoch is ceil(tokens / seq_len), each document being BOS + ids + EOS."""
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tok.model"))
    tokens = sum(len(sp.encode(record["text"])) + 2 for record in PRETRAIN)
    return math.ceil(tokens / SEQ_LEN)


def test_train_from_flags_alone_finishes_saves_and_counts_epochs_exactly(folder, pretrained):
    workdir, stdout = pretrained
    rows = expected_rows(folder)
    steps = math.ceil(2 * rows / BATCH)
    assert f"one epoch is {rows} packed sequences of {SEQ_LEN} tokens" in stdout
    assert f"rounded up: {steps} steps" in stdout
    assert f"finished {steps} steps" in stdout
    assert (workdir / "checkpoints" / str(steps)).is_dir()
    summary = [json.loads(line) for line in (workdir / "metrics.jsonl").open()][-1]
    assert summary["steps"] == steps and summary["epoch_sequences"] == rows
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["name"] == "pre"  # the workdir's name
    assert saved["model"]["d_model"] == 48  # the tiny preset
    assert saved["model"]["vocab_size"] == 384  # the given tokenizer's size, not tiny's 320
    assert saved["data"]["seq_len"] == SEQ_LEN  # implied by model.max_seq_len
    assert (saved["train"]["epochs"], saved["train"]["steps"]) == (2.0, 0)


def test_init_from_brings_the_model_shape_and_a_conflict_names_both_values(folder, pretrained):
    cfg = config(folder, "--init-from", "runs/pre", "--format", "chat", "--data", "jsonl:x.jsonl")
    assert (cfg["model"]["d_model"], cfg["model"]["n_layers"], cfg["model"]["vocab_size"]) == (
        48, 3, 384
    )  # fmt: skip
    assert cfg["data"]["seq_len"] == SEQ_LEN and cfg["data"]["tokenizer_vocab_size"] == 384
    # Context length may be chosen (extension); shapes may not.
    longer = config(folder, "--init-from", "runs/pre", "--set", "model.max_seq_len=128")
    assert longer["data"]["seq_len"] == 128 and longer["model"]["d_model"] == 48
    proc = jaxlm(folder, "config", "--init-from", "runs/pre", "--set", "model.d_model=64")
    assert proc.returncode == 2
    assert proc.stderr.startswith("jaxlm: error: model.d_model=64 (from --set) differs from ")
    assert "d_model=48 of the train.init_from model runs/pre" in proc.stderr


def test_seq_len_follows_the_model_unless_set_and_may_not_exceed_it(folder):
    assert config(folder, "--preset", "tiny")["data"]["seq_len"] == 64
    cfg = config(folder, "--preset", "tiny", "--set", "model.max_seq_len=32")
    assert cfg["data"]["seq_len"] == 32
    cfg = config(folder, "--preset", "tiny", "--set", "data.seq_len=16")
    assert cfg["data"]["seq_len"] == 16
    proc = jaxlm(folder, "config", "--preset", "tiny", "--set", "data.seq_len=128")
    assert proc.returncode == 2
    assert "data.seq_len=128 exceeds model.max_seq_len=64" in proc.stderr


def test_steps_and_epochs_are_exclusive_and_typos_are_named(folder):
    proc = jaxlm(folder, "config", "--set", "train.steps=3", "--set", "train.epochs=1")
    assert proc.returncode == 2 and "mutually exclusive" in proc.stderr
    proc = jaxlm(folder, "config", "--set", "train.epoch=1")
    assert "did you mean 'train.epochs'?" in proc.stderr
    proc = jaxlm(folder, "config", "--preset", "minimind-2")
    assert proc.returncode == 2 and "did you mean 'minimind-26m'?" in proc.stderr
    # The shipped experiment's steps are replaced by an epochs override, not refused.
    cfg = config(folder, "quickstart", "--set", "train.epochs=1")
    assert (cfg["train"]["steps"], cfg["train"]["epochs"]) == (0, 1.0)


def test_shipped_experiments_are_found_from_any_directory(tmp_path):
    assert config(tmp_path, "quickstart")["name"] == "quickstart"
    own = tmp_path / "mine"
    own.mkdir()
    (own / "mine_exp.py").write_text(
        '"""Mine."""\nfrom jaxlm.config import Config\n\n\n'
        'def get_config():\n    return Config(name="mine_exp")\n'
    )
    proc = jaxlm(tmp_path, "config", "mine_exp", JAXLM_EXPERIMENTS=str(own))
    assert proc.returncode == 0 and json.loads(proc.stdout)["name"] == "mine_exp"
    proc = jaxlm(tmp_path, "config", "quikstart", JAXLM_EXPERIMENTS=str(own))
    assert proc.returncode == 2
    line = proc.stderr
    assert f"{own} ($JAXLM_EXPERIMENTS)" in line
    assert f"{tmp_path / 'experiments'} (the working directory, absent)" in line
    assert "(shipped with jaxlm)" in line
    assert "'mine_exp'" in line and "'quickstart'" in line and "did you mean 'quickstart'?" in line


def test_init_writes_a_starter_file_that_config_resolves(folder, tmp_path):
    for name in ("pretrain_hq.jsonl", "tok.model"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    args = ["init", "mine.py", "--data", "jsonl:pretrain_hq.jsonl", "--tokenizer", "tok.model"]
    proc = jaxlm(tmp_path, *args, "--preset", "tiny", "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert "jaxlm train ./mine.py --workdir runs/mine" in proc.stdout
    cfg = config(tmp_path, "./mine.py")
    assert cfg["name"] == "mine" and cfg["data"]["sources"] == "jsonl:pretrain_hq.jsonl"
    assert (cfg["model"]["d_model"], cfg["train"]["epochs"]) == (48, 3.0)
    assert cfg["model"]["vocab_size"] == 384  # written into the file from the tokenizer
    assert cfg["data"]["tokenizer"] == "tok.model"
    again = jaxlm(tmp_path, *args)
    assert again.returncode == 2 and "mine.py exists" in again.stderr
    bad = jaxlm(tmp_path, "init", "bad.py", "--data", "jsnl:x.jsonl")
    assert bad.returncode == 2 and "unknown source kind 'jsnl'" in bad.stderr
    assert not (tmp_path / "bad.py").exists()


# A second training run. Default coverage: the written file resolves
# (test_init_writes_a_starter_file_that_config_resolves) and init_from brings the shape
# (test_init_from_brings_the_model_shape_and_a_conflict_names_both_values).
@pytest.mark.slow
def test_init_file_trains_sft_from_the_pretrained_run(folder, pretrained):
    proc = jaxlm(
        folder, "init", "sft.py", "--data", "jsonl:sft_mini.jsonl", "--format", "chat",
        "--eval-data", "jsonl:sft_eval.jsonl", "--init-from", "runs/pre",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = jaxlm(
        folder,
        "train",
        "./sft.py",
        "--workdir",
        "runs/sft",
        "--set",
        "train.steps=2",
        # Byte-level Chinese needs longer rows than the pretraining's 64; the context
        # length is not a shape, so it may differ from the init_from model's.
        "--set",
        "model.max_seq_len=256",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "params initialised from" in proc.stdout and "finished 2 steps" in proc.stdout
    saved = json.loads((folder / "runs" / "sft" / "config.json").read_text())
    assert saved["model"]["d_model"] == 48 and saved["data"]["format"] == "chat"
    assert saved["data"]["seq_len"] == 256
    assert (folder / "runs" / "sft" / "checkpoints" / "2").is_dir()
