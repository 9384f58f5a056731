"""Streamed and final text of a generation cut at any token: never a partial character.

A tokenizer trained on English and a little Chinese spells most Chinese characters and
every emoji as 3 or 4 byte-fallback tokens, so cutting the ids at every position cuts
inside characters, which is where a max-tokens stop, a stop token or Ctrl-C lands.
"""

import pytest

from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.inference.streaming import TextStream, complete_text

TRAIN = "The quick brown fox jumps over the lazy dog. 你好，世界！\n" * 50
REPLY = "答：问题很简单。5加3等于8！🙂👍🏽 naïve café\n第二行：好的🚀"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer([TRAIN], tmp_path_factory.mktemp("tok") / "t", vocab_size=300)


def test_the_reply_is_spelt_with_byte_tokens(tokenizer):
    ids = tokenizer.encode(REPLY)
    assert tokenizer.decode(ids) == REPLY
    assert sum(tokenizer.is_byte(i) for i in ids) >= 40  # what the cuts below cut into


def test_every_cut_streams_only_whole_characters_as_soon_as_they_are_whole(tokenizer):
    ids = tokenizer.encode(REPLY)
    for cut in range(len(ids) + 1):
        stream = TextStream(tokenizer)
        printed = ""
        for token in ids[:cut]:
            printed += stream.push(token)
            # A character is printed with its last byte, not held back longer.
            assert printed == tokenizer.decode(stream.ids).rstrip("\ufffd"), cut
        printed += stream.finish()
        assert "\ufffd" not in printed, (cut, printed)
        assert REPLY.startswith(printed), (cut, printed)
        assert printed == stream.text == complete_text(tokenizer, ids[:cut])
    assert complete_text(tokenizer, ids) == REPLY


def test_bytes_that_never_make_a_character_are_printed_as_decoded(tokenizer):
    """A lead byte followed by a normal piece is the model's own invalid output:
    shown (as SentencePiece decodes it) once the next token proves it, not hidden."""
    lead = tokenizer.piece_to_id("<0xE4>")
    ids = [*tokenizer.encode("ok "), lead, *tokenizer.encode("fox")]
    stream = TextStream(tokenizer)
    printed = "".join(stream.push(i) for i in ids) + stream.finish()
    assert printed == tokenizer.decode(ids) == "ok \ufffdfox"
