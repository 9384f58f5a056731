"""`jaxlm data inspect` on chat and preference data, run as a user runs it.

From a folder outside the repository, on MiniMind files the test writes (Chinese,
emoji, system prompts, multi-turn), the printed batch shows which tokens carry loss:
only assistant turns for chat, only each side's final response for pairs, and
`<think>` spans with their weight under `data.think_loss_weight`.
"""

import ast
import json
import re
import subprocess
import sys

import pytest
from helpers.runs import REPO, environment, make_tokenizer

EXPERIMENT = '''"""A user's own experiment: the data come from --set."""

from jaxlm.config import Config


def get_config():
    return Config(name="mine")
'''

SYSTEM, USER1, USER2 = "你是一个乐于助人的助手 🙂", "你好，5加3等于几？", "谢谢！再见"
THINK = "<think>\n5+3=8 🤔\n</think>"
ANSWER1, ANSWER2 = "\n等于 8。😀", "再见 👋"


def _messages(*turns):
    return [{"role": role, "content": content} for role, content in turns]


CONVERSATION = _messages(
    ("system", SYSTEM),
    ("user", USER1),
    ("assistant", THINK + ANSWER1),
    ("user", USER2),
    ("assistant", ANSWER2),
)


@pytest.fixture
def folder(tmp_path):
    """A user's folder: an experiment file, a tokenizer and MiniMind jsonl files."""
    (tmp_path / "mine.py").write_text(EXPERIMENT, encoding="utf-8")
    make_tokenizer(tmp_path)
    sft = json.dumps({"conversations": CONVERSATION}, ensure_ascii=False)
    (tmp_path / "sft.jsonl").write_text((sft + "\n") * 8, encoding="utf-8")
    identity = {"conversations": _messages(("user", "你是谁？"), ("assistant", "我是 jaxlm 🤖"))}
    line = json.dumps(identity, ensure_ascii=False)
    (tmp_path / "identity.jsonl").write_text((line + "\n") * 3, encoding="utf-8")
    prompt = _messages(
        ("system", "简短回答"), ("user", "1+1?"), ("assistant", "2"), ("user", "2+2?")
    )
    pair = {
        "chosen": [*prompt, *_messages(("assistant", "<think>算一下</think>4 ✅"))],
        "rejected": [*prompt, *_messages(("assistant", "5 ❌"))],
    }
    (tmp_path / "dpo.jsonl").write_text(
        (json.dumps(pair, ensure_ascii=False) + "\n") * 8, encoding="utf-8"
    )
    return tmp_path


def _inspect(folder, *settings: str, rows: int = 1) -> str:
    args = [sys.executable, "-m", "jaxlm.cli", "data", "inspect", "mine.py", "--rows", str(rows)]
    for item in ("data.tokenizer=tok.model", "model.vocab_size=384", "data.batch_size=2",
                 *settings):  # fmt: skip
        args += ["--set", item]
    env = environment(1, PYTHONPATH=str(REPO))
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def _segment_texts(out: str, label: str = "") -> list[str]:
    """The decoded text of every printed segment (after `label`, e.g. "chosen")."""
    pattern = rf"{label}\s*seg \d+ cols \d+-\d+ pos \d+-\d+ trained \d+/\d+: ('.*')$"
    return [ast.literal_eval(m) for m in re.findall(pattern, out, flags=re.M)]


def _trained(text: str) -> str:
    """What the text shows as carrying loss: everything outside ⟦…⟧."""
    return re.sub(r"⟦.*?⟧", "", text, flags=re.S)


def test_chat_batches_show_that_only_assistant_tokens_carry_loss(folder):
    out = _inspect(folder, "data.format=chat", "data.sources=jsonl:sft.jsonl", "data.seq_len=256")
    assert "⟦…⟧ = no loss" in out
    texts = _segment_texts(out)
    assert texts and all(text == texts[0] for text in texts)
    full = texts[0]
    # The whole conversation is there; the system and user turns and role headers are
    # masked; the assistant content and the <|im_end|> closing it carry loss.
    assert f"⟦<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER1}" in full
    assert _trained(full) == f"{THINK}{ANSWER1}<|im_end|>{ANSWER2}<|im_end|>"


def test_think_spans_show_their_weight(folder):
    chat = ("data.format=chat", "data.sources=jsonl:sft.jsonl", "data.seq_len=256")
    half = _inspect(folder, *chat, "data.think_loss_weight=0.5")
    assert "⟨…⟩×w = loss weight w" in half
    assert f"assistant\n⟧⟨{THINK}⟩×0.5{ANSWER1}<|im_end|>⟦" in _segment_texts(half)[0]
    excluded = _segment_texts(_inspect(folder, *chat, "data.think_loss_weight=0"))[0]
    assert f"assistant\n{THINK}⟧{ANSWER1}<|im_end|>⟦" in excluded  # tags included
    assert _trained(excluded) == f"{ANSWER1}<|im_end|>{ANSWER2}<|im_end|>"


def test_a_weighted_chat_mixture_is_inspected(folder):
    out = _inspect(
        folder,
        "data.format=chat",
        "data.sources=jsonl:sft.jsonl@1,jsonl:identity.jsonl@1",
        "data.seq_len=256",
        "data.val_fraction=0.01",
        rows=2,
    )
    trained = {_trained(text) for text in _segment_texts(out)}
    assert "我是 jaxlm 🤖<|im_end|>" in trained, out


def test_preference_batches_show_chosen_and_rejected_with_their_masks(folder):
    out = _inspect(folder, "data.format=preference", "data.sources=jsonl:dpo.jsonl",
                   "data.seq_len=96")  # fmt: skip
    assert "only the final assistant response carries loss" in out
    assert re.search(r"^pair 0 \(dpo\.jsonl:\d+\):$", out, flags=re.M), out
    chosen, rejected = _segment_texts(out, "chosen")[0], _segment_texts(out, "rejected")[0]
    # The earlier assistant turn ("2") belongs to the prompt: masked like the user's.
    assert "<|im_start|>assistant\n2<|im_end|>" in chosen.split("⟧")[0]
    assert _trained(chosen) == "<think>算一下</think>4 ✅<|im_end|>"
    assert _trained(rejected) == "5 ❌<|im_end|>"
