"""`--think show|hide`: a reasoning model's <think>...</think> on screen or not.

The filter is checked on every way a streamed reply can be cut into pieces (a tag
split anywhere); the commands on a chain model whose reply is
"<think>why</think> ok<|im_end|>" (each tag one token), run as a user runs them.
"""

import json
import subprocess
import sys

import pytest
from helpers.chain_model import save_chain_model
from helpers.runs import REPO, environment

from jaxlm.data.chat import Message, encode_chat_prompt
from jaxlm.data.tokenizer import IM_END_ID, train_tokenizer
from jaxlm.inference.think import ThinkFilter, split_think

REASONING = "\n用户问5加3，答案是8 🤔 <b>\n"
REPLY = f"<think>{REASONING}</think>\n\n5加3等于8。🙂 (a < b, <thin)"
ANSWER = "5加3等于8。🙂 (a < b, <thin)"


def pieces_of(text: str):
    """Every cut of `text` into two pieces, and one piece per character."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)


@pytest.mark.parametrize("before", ["", "  "])
def test_hide_never_shows_reasoning_however_the_reply_is_cut(before):
    reply, expected = before + REPLY, before + ANSWER
    for pieces in pieces_of(reply):
        think, shown = ThinkFilter("hide"), ""
        for piece in pieces:
            shown += think.push(piece)
            # Only ever a prefix of the answer: no reasoning, not a tag's first "<".
            assert expected.startswith(shown), (pieces, shown)
        shown += think.finish()
        assert (shown, think.hidden) == (expected, REASONING), pieces


def test_show_passes_the_reply_unchanged_and_text_without_tags_is_untouched():
    assert split_think(REPLY, "show") == (REPLY, "")
    assert split_think("a <b> and <thinking", "hide") == ("a <b> and <thinking", "")


def test_a_reply_cut_inside_the_reasoning_shows_nothing():
    think = ThinkFilter("hide")
    assert think.push("<think>still thinking") + think.finish() == ""
    assert think.inside and think.hidden == "still thinking"


@pytest.fixture(scope="module")
def thinking_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("think")
    text = "The quick brown fox jumps over the lazy dog. 你好，世界！\n" * 50
    tags = ("<think>", "</think>")
    tok = train_tokenizer([text], root / "tok", vocab_size=300, user_symbols=tags)
    prompt_end = encode_chat_prompt([Message("user", "hi")], tok)[-1]
    assert tok.encode("问：你好🙂\n")[-1] == prompt_end  # generate's prompt ends alike
    reply = [tok.piece_to_id("<think>"), *tok.encode("why"), tok.piece_to_id("</think>")]
    reply += [*tok.encode(" ok"), IM_END_ID]
    return save_chain_model(root, tok, [prompt_end, *reply])


def run(cmd: list[str], cwd, stdin: str = "") -> str:
    env = environment(1, PYTHONPATH=str(REPO))
    full = [sys.executable, "-m", "jaxlm.cli", *cmd, "--max-new-tokens", "16"]
    done = subprocess.run(full, cwd=cwd, env=env, input=stdin.encode(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_chat_and_generate_hide_or_show_the_reasoning(thinking_export, tmp_path):
    export = str(thinking_export)
    messages = "你好🙂\n第二个问题\n"
    assert run(["chat", export, "--think", "hide"], tmp_path, messages) == "ok\n" * 2
    assert run(["chat", export], tmp_path, messages) == "<think>why</think> ok\n" * 2
    prompt = "问：你好🙂\n"
    args = ["generate", export, prompt, "--think", "hide", "--json", "out.json"]
    assert run(args, tmp_path).startswith(prompt + "ok\n")
    (result,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert (result["completion"], result["reasoning"]) == ("ok", "why")
