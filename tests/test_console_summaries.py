"""What a user reads on the console after pretrain -> SFT -> DPO -> eval, run as a user
runs them: the `jaxlm` command in a folder outside the repository, on MiniMind-format
files (Chinese, emoji, system prompts, multi-turn) written here, stdout and stderr
captured to files (as `nohup` or a batch scheduler would).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

EXPERIMENT = '''"""A tiny model for console tests."""

from jaxlm.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="tiny",
        model=ModelConfig(
            vocab_size=512, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64
        ),
        data=DataConfig(
            sources="jsonl:pretrain.jsonl", tokenizer_vocab_size=512, seq_len=64, val_fraction=0.2,
            batch_size=8, eval_max_docs=8,
        ),
        train=TrainConfig(steps=4, eval_every=4, log_every=2, generate_prompt="1加2"),
    )
'''


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def minimind_files(folder: Path) -> None:
    facts = ["天空是蓝色的。", "熊猫🐼吃竹子。", "Rain 🌧️ falls from clouds.", "水在一百度沸腾。"]
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "with", "from", "that"]
    # 150 common characters: enough for a 512-piece tokenizer to have pieces to merge
    chars = (
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着"
        "去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主"
        "行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二"
        "理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最"
    )
    rng = random.Random(0)
    texts = [
        "".join(rng.choice(chars) for _ in range(40)) + f"{facts[i % 4]}{i % 10}加{i % 7}等于"
        f"{i % 10 + i % 7}。" + " ".join(rng.choice(words) for _ in range(12))
        for i in range(400)
    ]
    write_jsonl(folder / "pretrain.jsonl", [{"text": t} for t in texts])
    sft = []
    for i in range(120):
        turns = [{"role": "system", "content": "你是一个乐于助人的助手。"}] if i % 3 == 0 else []
        for j in range(1 + i % 2):
            turns += [
                {"role": "user", "content": f"{i}加{j}等于几？"},
                {"role": "assistant", "content": f"{i}加{j}等于{i + j}。🎉"},
            ]
        # every fourth conversation's first prompt fills the whole row: truncated to nothing
        if i % 4 == 1:
            first_prompt = next(t for t in turns if t["role"] == "user")
            first_prompt["content"] = "请详细地解释一下这个问题。" * 20
        sft.append({"conversations": turns})
    write_jsonl(folder / "sft.jsonl", sft)
    pairs = []
    for i in range(80):
        prompt = [{"role": "user", "content": f"{i % 10}加{i % 7}等于几？"}]
        right, wrong = f"等于{i % 10 + i % 7}。", f"等于{i % 10 + i % 7 + 1}。😀"
        pairs.append(
            {
                "chosen": [*prompt, {"role": "assistant", "content": right}],
                "rejected": [*prompt, {"role": "assistant", "content": wrong}],
            }
        )
    write_jsonl(folder / "dpo.jsonl", pairs)


def jaxlm(folder: Path, *args: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAXLM_COMPILATION_CACHE": "off"}
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with out.open("w") as o, err.open("w") as e:  # files, not a terminal
        done = subprocess.run(
            [sys.executable, "-m", "jaxlm.cli", *args], cwd=folder, env=env, stdout=o, stderr=e
        )
    stdout, stderr = out.read_text("utf-8"), err.read_text("utf-8")
    assert done.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return stdout, stderr


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    assert REPO not in folder.parents
    minimind_files(folder)
    (folder / "tiny.py").write_text(EXPERIMENT)
    outputs = {"pretrain": jaxlm(folder, "train", "./tiny.py", "--workdir", "runs/pre")}
    chat = ["--set", "data.format=chat", "--set", "data.sources=jsonl:sft.jsonl"]
    outputs["sft"] = jaxlm(
        folder, "train", "./tiny.py", "--workdir", "runs/sft", *chat,
        "--set", "train.init_from=runs/pre",
    )  # fmt: skip
    pref = ["--set", "data.format=preference", "--set", "data.sources=jsonl:dpo.jsonl"]
    outputs["dpo"] = jaxlm(
        folder, "train", "./tiny.py", "--workdir", "runs/dpo", *pref,
        "--set", "train.init_from=runs/sft", "--set", "train.eval_at_start=true",
    )  # fmt: skip
    outputs["eval"] = jaxlm(
        folder, "eval", "runs/dpo", "--pairs", "dpo.jsonl", "--reference", "runs/sft"
    )
    return folder, outputs


def test_a_chat_run_says_why_it_has_no_gzip_baseline_instead_of_nan(chain):
    folder, outputs = chain
    stdout, _ = outputs["sft"]
    assert "nan" not in stdout.lower()
    assert "no gzip baseline: loss on assistant tokens only" in stdout
    summary = [json.loads(x) for x in (folder / "runs/sft/metrics.jsonl").read_text().splitlines()]
    assert '"nan"' not in json.dumps(summary)
    assert "gzip_bits_per_byte" not in summary[-1]
    pre_summary = json.loads((folder / "runs/pre/metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < pre_summary["gzip_bits_per_byte"] < 8  # a text run keeps its baseline
    # ... and the stronger compressors beside it, in the summary and on the console.
    assert 0 < pre_summary["bz2_bits_per_byte"] < 8 and 0 < pre_summary["xz_bits_per_byte"] < 8
    assert f"xz -9e {pre_summary['xz_bits_per_byte']:.4f}" in outputs["pretrain"][0]
    assert f"bz2 -9 {pre_summary['bz2_bits_per_byte']:.4f}" in outputs["pretrain"][0]


def test_compressor_baselines_are_the_compressed_sizes():
    import bz2
    import lzma
    import pathlib

    from jaxlm.training.metrics import stronger_compressors_bits_per_byte

    texts = [pathlib.Path(json.__file__).read_text(), "héllo\n"]  # the stdlib, and UTF-8
    raw = "".join(texts).encode("utf-8")
    got = stronger_compressors_bits_per_byte(texts)
    assert got["bz2_bits_per_byte"] == 8 * len(bz2.compress(raw, 9)) / len(raw)
    xz = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    assert got["xz_bits_per_byte"] == 8 * len(xz) / len(raw)
    assert stronger_compressors_bits_per_byte([]) == {}


def test_truncation_counts_reach_the_console(chain):
    folder, outputs = chain
    stdout, _ = outputs["sft"]
    summary = json.loads((folder / "runs/sft/metrics.jsonl").read_text().splitlines()[-1])
    lost = summary["data_chat_skipped_truncated_to_nothing"]
    assert lost > 0
    assert f"data: {lost:,} conversations truncated to nothing" in stdout
    assert "raise data.seq_len" in stdout


def test_dpo_at_step_0_counts_ties_as_ties_and_prints_the_reference_free_accuracy(chain):
    folder, outputs = chain
    stdout, _ = outputs["dpo"]
    first = next(line for line in stdout.splitlines() if line.startswith("step 0: eval"))
    # the policy is its reference: every implied reward is 0, every pair a tie
    assert "preference accuracy 0.5000 (100% ties, counted half)" in first, first
    evals = [
        json.loads(x)
        for x in (folder / "runs/dpo/metrics.jsonl").read_text().splitlines()
        if '"eval"' in x
    ]
    assert f"log-prob ranking accuracy {evals[0]['logp_accuracy']:.4f}" in first
    assert f"log-prob ranking accuracy    {evals[-1]['logp_accuracy']:.4f}" in stdout


def test_eval_scores_a_pairs_file(chain):
    _, outputs = chain
    line = outputs["eval"][0].splitlines()[-1]
    assert line.startswith("dpo.jsonl: 80 pairs, log-prob ranking accuracy "), line
    assert "; against the reference: accuracy " in line and "DPO loss" in line, line
    assert "nan" not in line


def test_loads_print_no_library_warnings(chain):
    _, outputs = chain
    for name in ("sft", "dpo", "eval"):
        _, stderr = outputs[name]
        assert "WARNING:absl" not in stderr and "read only" not in stderr, (name, stderr)


def test_progress_in_a_log_file_is_plain_lines(chain):
    _, outputs = chain
    _, stderr = outputs["pretrain"]
    assert "\r" not in stderr
    assert "step 4/4 (100%): loss" in stderr
