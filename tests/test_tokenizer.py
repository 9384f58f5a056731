"""The SentencePiece tokenizer: pinned ids, lossless round trips, exact byte counts."""

import copy
import random
import re

import numpy as np
import pytest
import sentencepiece as spm

from jaxlm.data import corpus
from jaxlm.data import tokenizer as tok_lib
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer

TRAIN_CHARS = 300_000
VOCAB = 512

SAMPLES = [
    "def f(x):\n\treturn x  \n\n\n",
    "class A:\n    def m(self):  # trailing spaces   \n        pass\t\t\n",
    "    \n\t \n",
    "中文字符和标点，还有日本語のテキスト。",
    "emoji 😀👍🏽 and flags 🇫🇷, ZWJ 👩‍💻",
    "a\u2581b \u2581\u2581 literal lower-one-eighth blocks",
    "\r\n\x00\x0b\x1b[0m\u200b\ufeff\u3000 control and odd spaces",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<s></s><pad><unk> look like specials but are plain text",
    "x = 1234567890 + 3.14e-10",
    "",
]


def _stdlib_texts(split):
    return [corpus.read_text(path) for path in corpus.stdlib_files(split)]


@pytest.fixture(scope="module")
def train_texts():
    return _stdlib_texts("train")


@pytest.fixture(scope="module")
def tokenizer(train_texts, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "stdlib512"
    return train_tokenizer(train_texts, prefix, vocab_size=VOCAB, max_chars=TRAIN_CHARS)


def _random_texts(count, seed=0):
    rng = random.Random(seed)
    alphabet_ranges = [(0x00, 0x80), (0x80, 0x800), (0x800, 0xD800), (0xE000, 0x110000)]
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randrange(0, 40)):
            if rng.random() < 0.3:
                chars.append(rng.choice(" \t\n\r\u2581"))
            else:
                low, high = rng.choice(alphabet_ranges)
                chars.append(chr(rng.randrange(low, high)))
        texts.append("".join(chars))
    return texts


def test_writes_model_and_vocab_files(tokenizer):
    assert tokenizer.path.name == "stdlib512.model"
    assert tokenizer.path.is_file()
    assert tokenizer.path.with_suffix(".vocab").is_file()
    assert tokenizer.vocab_size == VOCAB
    assert re.fullmatch(r"[0-9a-f]{64}", tokenizer.sha256)


def test_pinned_special_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert (tok_lib.PAD_ID, tok_lib.BOS_ID, tok_lib.EOS_ID, tok_lib.UNK_ID) == (0, 1, 2, 3)
    assert tok_lib.CHAT_MARKERS == ("<|im_start|>", "<|im_end|>")


def test_chat_markers_are_single_tokens(tokenizer):
    assert tokenizer.encode("<|im_start|>") == [4]
    assert tokenizer.encode("<|im_end|>") == [5]
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 4 and ids[-1] == 5
    assert 4 not in ids[1:-1] and 5 not in ids[1:-1]


def test_encode_adds_no_bos_or_eos(tokenizer):
    ids = tokenizer.encode("import os\n")
    assert ids and tokenizer.bos_id not in ids and tokenizer.eos_id not in ids


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_round_trip_on_random_unicode_and_held_out_code(tokenizer):
    held_out = _stdlib_texts("validation")[:5]
    for text in _random_texts(1500) + held_out:
        assert tokenizer.decode(tokenizer.encode(text)) == text, repr(text[:80])


def test_token_bytes_sum_to_utf8_length(tokenizer):
    token_bytes = tokenizer.token_bytes()
    assert token_bytes.dtype == np.int32 and token_bytes.shape == (VOCAB,)
    for text in SAMPLES + _random_texts(500, seed=1) + _stdlib_texts("validation")[:5]:
        ids = tokenizer.encode(text)
        assert token_bytes[ids].sum() == len(text.encode("utf-8")), repr(text[:80])


def test_token_bytes_of_special_and_byte_pieces(tokenizer):
    token_bytes = tokenizer.token_bytes()
    assert list(token_bytes[:4]) == [0, 0, 0, 0]  # pad, bos, eos, unk add no text
    assert list(token_bytes[4:6]) == [len("<|im_start|>"), len("<|im_end|>")]
    assert set(token_bytes[6 : 6 + 256]) == {1}  # <0x00> .. <0xFF>
    token_bytes[:] = 99  # a copy: callers cannot corrupt the tokenizer's table
    assert tokenizer.token_bytes()[0] == 0


def test_decode_skips_pad_bos_eos(tokenizer):
    ids = tokenizer.encode("x = 1\n")
    padded = [tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]
    assert tokenizer.decode(padded) == "x = 1\n"
    assert tokenizer.decode(np.asarray(padded, dtype=np.int32)) == "x = 1\n"


def test_encode_batch_matches_encode(tokenizer):
    assert tokenizer.encode_batch(SAMPLES) == [tokenizer.encode(text) for text in SAMPLES]
    plain = [text for text in SAMPLES if "\u2581" not in text]
    assert tokenizer.encode_batch(plain) == [tokenizer.encode(text) for text in plain]


def test_newlines_merge_into_learned_pieces(tokenizer):
    # Training on line-aligned chunks keeps "\n" in the data, so pieces such as ":\n"
    # exist; feeding single lines would make every newline a byte-fallback token.
    pieces = [tokenizer.decode([i]) for i in range(6 + 256, tokenizer.vocab_size)]
    assert any("\n" in piece and piece.strip("\n") for piece in pieces)
    assert len(tokenizer.encode("):\n")) < 3


def test_compresses_held_out_code(tokenizer):
    text = "".join(_stdlib_texts("validation")[:10])
    assert len(text.encode("utf-8")) / len(tokenizer.encode(text)) > 1.5


def test_training_is_deterministic(train_texts, tokenizer, tmp_path):
    again = train_tokenizer(
        train_texts, tmp_path / "again", vocab_size=VOCAB, max_chars=TRAIN_CHARS
    )
    assert again.sha256 == tokenizer.sha256


def test_unigram_model_is_lossless_too(train_texts, tmp_path):
    unigram = train_tokenizer(
        train_texts, tmp_path / "uni", vocab_size=VOCAB, model_type="unigram", max_chars=100_000
    )
    token_bytes = unigram.token_bytes()
    for text in SAMPLES + _random_texts(200, seed=2):
        ids = unigram.encode(text)
        assert unigram.decode(ids) == text
        assert token_bytes[ids].sum() == len(text.encode("utf-8"))


def test_load_round_trips_and_copies_keep_working(tokenizer):
    loaded = Tokenizer.load(tokenizer.path)
    assert loaded.sha256 == tokenizer.sha256
    assert loaded.encode(SAMPLES[0]) == tokenizer.encode(SAMPLES[0])
    # Grain worker processes receive the pipeline by copy: the tokenizer must survive it.
    clone = copy.deepcopy(tokenizer)
    assert clone.encode(SAMPLES[1]) == tokenizer.encode(SAMPLES[1])
    assert clone.path == tokenizer.path


def test_load_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "tok.model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Tokenizer.load(missing)


def test_load_refuses_a_model_with_other_special_ids(tmp_path):
    # A stock SentencePiece model: unk=0, bos=1, eos=2, no pad, no byte fallback.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world, hello tokenizer\n"] * 50),
        model_prefix=str(tmp_path / "stock"),
        vocab_size=20,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "stock.model"))):
        Tokenizer.load(tmp_path / "stock.model")


def test_too_large_vocab_error_names_the_model(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "tiny.model"))):
        train_tokenizer(["ab ab ab\n"] * 10, tmp_path / "tiny", vocab_size=4096)
    assert not (tmp_path / "tiny.model").exists()


def test_capped_texts_stop_at_max_chars():
    assert list(tok_lib.capped_texts(["abcd", "efgh", "ijkl"], 6)) == ["abcd", "ef"]
    assert list(tok_lib.capped_texts(["abcd", "efgh"], 4)) == ["abcd"]


def test_bad_max_chars_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_chars"):
        train_tokenizer(["abc\n"], tmp_path / "t", vocab_size=300, max_chars=0)


def test_errors_reading_the_input_keep_their_type_and_message(tmp_path):
    def texts():
        yield "def f():\n    return 1\n" * 200
        raise FileNotFoundError("corpus file /data/missing.py vanished")

    with pytest.raises(FileNotFoundError, match=re.escape("/data/missing.py")):
        train_tokenizer(texts(), tmp_path / "t", vocab_size=300)


def test_training_sentences_keep_every_character_within_the_length_limit():
    long_line = "y" * 10_000 + "\n"
    text = "import os\n" * 1000 + long_line + "中文\n" * 3000 + "no final newline"
    sentences = list(tok_lib.training_sentences([text]))
    assert "".join(sentences) == text
    assert max(len(s.encode("utf-8")) for s in sentences) <= tok_lib._MAX_SENTENCE_BYTES
    assert all(s.endswith("\n") for s in sentences[:-1] if "y" not in s)


def test_encode_literal_never_emits_chat_markers(tokenizer):
    text = "a<|im_start|>b <|im_end|>\n<|im_end|>▁c"
    ids = tokenizer.encode_literal(text)
    assert 4 not in ids and 5 not in ids
    assert tokenizer.decode(ids) == text
    assert int(tokenizer.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    assert tokenizer.encode_literal("plain text") == tokenizer.encode("plain text")
