"""`jaxlm chat` on a pseudo-terminal, as a user types: line editing, history, Ctrl-C.

The model is a chain model (tests/helpers/chain_model.py) whose reply to anything is
"fox fox fox ..." until --max-new-tokens: long enough that Ctrl-C lands mid-reply.
The command runs from a temporary directory outside the repository. (Piped input:
tests/test_think.py runs chat with messages on stdin.)
"""

import sys

import pytest
from helpers.chain_model import save_chain_model
from helpers.runs import REPO, environment
from helpers.terminal import BACKSPACE, CTRL_C, LEFT, Terminal

from jaxlm.data.chat import Message, encode_chat_prompt
from jaxlm.data.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def fox_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("fox")
    text = "The quick brown fox jumps over the lazy dog. 你好，世界！\n" * 50
    tok = train_tokenizer([text], root / "tok", vocab_size=300)
    prompt_end = encode_chat_prompt([Message("user", "hi")], tok)[-1]
    fox = tok.encode("fox ")
    return save_chain_model(root, tok, [prompt_end, *fox, fox[0]], max_seq_len=2048)


def chat(export, cwd, *args: str) -> Terminal:
    cmd = [sys.executable, "-m", "jaxlm.cli", "chat", str(export), *args]
    env = environment(1, PYTHONPATH=str(REPO), HOME=str(cwd))
    return Terminal(cmd, env, cwd)


def test_ctrl_c_stops_the_reply_then_twice_at_the_prompt_leaves_with_130(fox_export, tmp_path):
    terminal = chat(fox_export, tmp_path, "--max-new-tokens", "1900", "--system", "简短回答。")
    try:
        terminal.wait_for(b"\n> ", 120)
        terminal.type("你好 there 🙂\r".encode())
        # The reply is streaming: some foxes are on the screen.
        start = terminal.wait_for(b"fox fox fox fox", 60)
        terminal.type(CTRL_C)
        end = terminal.wait_for(b"[reply interrupted]", 30, after=start)
        end = terminal.wait_for(b"\n> ", 30, after=end)
        # Ctrl-C at the prompt asks for a second one: the chat goes on.
        terminal.type(CTRL_C)
        end = terminal.wait_for(b"[Ctrl-C again, Ctrl-D or /quit leaves]", 30, after=end)
        terminal.wait_for(b"\n> ", 30, after=end)
        assert terminal.proc.poll() is None, terminal.text
        terminal.type(CTRL_C)
        assert terminal.exit_status(30) == 130, terminal.text
        assert "Traceback" not in terminal.text and "KeyboardInterrupt" not in terminal.text
        assert "fox fox" in terminal.text.split("[reply interrupted]")[0]
        # The history file has the line, written on the way out.
        history = (tmp_path / ".jaxlm_chat_history").read_text(encoding="utf-8")
        assert history.splitlines() == ["你好 there 🙂"]
    finally:
        terminal.close()


def test_arrows_and_backspace_edit_the_line_including_chinese(fox_export, tmp_path):
    history = tmp_path / "state" / "history"
    history.parent.mkdir()
    history.write_text("an earlier question\n", encoding="utf-8")
    terminal = chat(fox_export, tmp_path, "--max-new-tokens", "4", "--history", str(history))
    try:
        end = terminal.wait_for(b"\n> ", 120)
        terminal.type(b"hello wrld" + LEFT * 3 + b"o\r")
        end = terminal.wait_for(b"fox", 60, after=end)
        end = terminal.wait_for(b"\n> ", 30, after=end)
        # Two characters left, delete the one before the cursor, type another.
        terminal.type("你好世界".encode() + LEFT * 2 + BACKSPACE + "大".encode() + b"\r")
        end = terminal.wait_for(b"fox", 60, after=end)
        end = terminal.wait_for(b"\n> ", 30, after=end)
        # Up arrow twice brings back the first line of this session; Enter sends it again.
        terminal.type(b"\x1b[A\x1b[A\r")
        end = terminal.wait_for(b"fox", 60, after=end)
        end = terminal.wait_for(b"\n> ", 30, after=end)
        terminal.type(b"/quit\r")
        assert terminal.exit_status(30) == 0, terminal.text
        assert "\x1b[D" not in terminal.text and "^[[D" not in terminal.text
        lines = history.read_text(encoding="utf-8").splitlines()
        assert lines == [
            "an earlier question",
            "hello world",
            "你大世界",
            "hello world",
            "/quit",
        ], terminal.text
    finally:
        terminal.close()
