"""The quickstart end to end, shrunk: every artefact it promises exists and is sane.

Runs the real experiment module in a subprocess (as a user would, with its own JAX
runtime) on a small model and a few steps, then checks the printed report and the
files in the workdir. A second invocation resumes from the finished checkpoint.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SHRINK = [
    "model.d_model=64",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.n_kv_heads=1",
    "model.vocab_size=512",
    "model.max_seq_len=64",
    "data.tokenizer_vocab_size=512",
    "data.tokenizer_max_chars=300000",
    "data.seq_len=64",
    "data.batch_size=8",
    "data.eval_max_docs=3",
    "train.steps=6",
    "train.eval_every=3",
    "train.log_every=2",
    "train.generate_tokens=8",
    "optim.warmup_steps=2",
]


def run_quickstart(workdir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "experiments.quickstart", "--workdir", str(workdir)]
    for item in SHRINK:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart")
    proc = run_quickstart(workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir, proc


def test_quickstart_reports_bits_per_byte_against_gzip(quickstart_run):
    _, proc = quickstart_run
    out = proc.stdout
    assert "finished 6 steps" in out
    line = next(x for x in out.splitlines() if x.startswith("held-out bits/byte"))
    ours = float(line.split()[2])
    # "(gzip -9 on the same bytes: G, bz2 -9 B, xz -9e X)"
    found = re.search(r"same bytes: ([\d.]+), bz2 -9 ([\d.]+), xz -9e ([\d.]+)\)", line)
    assert found, line
    gzip_bpb, bz2_bpb, xz_bpb = (float(x) for x in found.groups())
    assert 0.5 < ours < 20, line
    assert 1.0 < gzip_bpb < 4.0, line  # gzip on Python source: about 2 bits/byte
    assert 1.0 < bz2_bpb < 4.0 and 1.0 < xz_bpb < 4.0, line
    assert "greedy completion" in out and "def fibonacci(n):" in out


def test_quickstart_writes_every_artefact(quickstart_run):
    workdir, proc = quickstart_run
    for name in ("config.json", "tokenizer.model", "metrics.jsonl", "loss_curve.png"):
        path = workdir / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert str(path) in proc.stdout, f"{name} location not printed"
    assert (workdir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "6").is_dir()

    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["d_model"] == 64 and config["train"]["steps"] == 6

    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in evals] == [3, 6]
    for r in train:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["data_wait_s"] >= 0
        assert 0.5 < r["real_token_fraction"] <= 1.0
    assert all(r["bits_per_byte"] > 0 for r in evals)
    summary = next(r for r in records if r["split"] == "summary")
    assert summary["productive_step_s"] <= summary["wall_s"]


# Slow: ~23 s; resume is covered by test_resume_exact.py and test_restore_old_layout.py by default
@pytest.mark.slow
def test_quickstart_rerun_resumes_from_checkpoint(quickstart_run):
    workdir, _ = quickstart_run
    proc = run_quickstart(workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resumed from {workdir / 'checkpoints'}/6" in proc.stdout
