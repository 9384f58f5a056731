"""`jaxlm generate` as a user runs it: stops at the end of the turn, prints whole characters.

The model is a chain model (tests/helpers/chain_model.py): after the prompt it writes
"dog问🙂<|im_end|> way</s>" token by token, the Chinese character and the emoji as
byte-fallback tokens, so where generation stops and what is printed are exact.
"""

import json
import os
import subprocess
import sys

import pytest
from helpers.chain_model import save_chain_model
from helpers.runs import REPO

from jaxlm.data.tokenizer import EOS_ID, IM_END_ID, train_tokenizer

PROMPT = "你好，世界！The quick"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    text = "The quick brown fox jumps over the lazy dog. 你好，世界！\n" * 50
    tok = train_tokenizer([text], root / "tok", vocab_size=300)
    reply = [*tok.encode("dog问🙂"), IM_END_ID, *tok.encode(" way"), EOS_ID]
    assert sum(tok.is_byte(i) for i in reply) == 7  # 问 and 🙂 are spelt in bytes
    return save_chain_model(root, tok, [tok.encode(PROMPT)[-1], *reply])


def generate(export, cwd, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "jaxlm.cli", "generate", str(export), PROMPT, *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return done


def test_generation_stops_at_the_end_of_the_turn_unless_told_not_to(export, tmp_path):
    default = generate(export, tmp_path, "--max-new-tokens", "30")
    assert default.stdout.decode() == PROMPT + "dog问🙂\n"
    on = generate(
        export, tmp_path, "--max-new-tokens", "30", "--ignore-end-of-turn", "--json", "out.json"
    )
    # Past the end of the turn, up to EOS, which still stops it.
    assert on.stdout.decode() == PROMPT + "dog问🙂<|im_end|> way\n"
    (result,) = json.loads((tmp_path / "out.json").read_text())["results"]
    assert result["completion"] == "dog问🙂<|im_end|> way" and result["stopped"]


def test_a_cut_inside_a_character_prints_no_replacement_character(export, tmp_path):
    # 3 letters + 2 of the 3 bytes of 问, streamed; 3 of the 4 bytes of 🙂, printed at the end.
    for new_tokens, extra, shown in (("5", [], "dog"), ("9", ["--no-stream"], "dog问")):
        out = generate(export, tmp_path, "--max-new-tokens", new_tokens, "--json", "o.json", *extra)
        printed = out.stdout.decode()
        assert "\ufffd" not in printed, printed
        assert printed.startswith(PROMPT + shown + "\n"), printed
        (result,) = json.loads((tmp_path / "o.json").read_text())["results"]
        assert result["completion"] == shown and not result["stopped"]
