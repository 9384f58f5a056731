"""Vocabulary extension of Hugging Face BPE tokenizers, and the checkpoint grown to match.

`jaxlm tokenizer extend` on a Llama-2-style BPE with byte fallback (new characters:
text the base knows keeps its ids) and on a byte-level BPE (Qwen2-style: new merges,
`--pieces all` only); transformers loads each extension and encodes as jaxlm does.
`jaxlm checkpoint grow-vocab` then grows an imported Qwen2 model whose embedding has
more rows than its tokenizer has ids: old token rows bit for bit, the padding rows
that now hold new tokens and the appended rows at the mean of the token rows.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from helpers.hf_tokenizers import write_tokenizer_dir

from jaxlm.checkpointing.params_io import load_params
from jaxlm.cli import main
from jaxlm.data.hf_tokenizer_extend import extend_hf_tokenizer
from jaxlm.data.tokenizer_files import load_tokenizer
from jaxlm.errors import InputError

transformers = pytest.importorskip("transformers")

THAI = "".join(chr(c) for c in range(0x0E01, 0x0E0D))  # 12 letters no base has seen
KNOWN = "def main(argv):\n    return 0  # The quick brown fox. 你好，世界！\n"


def thai_texts(n=60, seed=0):
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice(THAI) for _ in range(rng.randint(2, 5)))
    return [" ".join(word() for _ in range(150)) for _ in range(n)]


@pytest.mark.parametrize(("family", "pieces"), [("llama2", "new-chars"), ("qwen2", "all")])
def test_extension_keeps_old_ids_and_transformers_agrees(tmp_path, family, pieces):
    base = load_tokenizer(write_tokenizer_dir(family, tmp_path / "base"))
    texts = thai_texts()
    extended = extend_hf_tokenizer(
        base, texts, tmp_path / "ext", vocab_size=base.vocab_size + 80, pieces=pieces
    )
    tokenizer = extended.tokenizer
    assert tokenizer.vocab_size == base.vocab_size + len(extended.added) == base.vocab_size + 80
    for token_id in range(base.vocab_size):
        assert tokenizer.id_to_piece(token_id) == base.id_to_piece(token_id), token_id
    assert tokenizer.eos_id == base.eos_id and tokenizer.stop_ids == base.stop_ids
    sample = thai_texts(1, seed=1)[0]
    assert len(tokenizer.encode(sample)) < len(base.encode(sample)) / 2
    assert tokenizer.decode(tokenizer.encode(sample)) == sample
    if pieces == "new-chars":  # text of known characters only: the same ids
        assert tokenizer.encode(KNOWN) == base.encode(KNOWN)
    reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ext"))
    for text in (sample, KNOWN, "<|im_end|> and </s> as text"):
        assert reference.encode(text, add_special_tokens=False) == tokenizer.encode(text), text
    # The files beside tokenizer.json are the base's, unchanged.
    for name, content in base.files.items():
        if name != "tokenizer.json":
            assert (tmp_path / "ext" / name).read_bytes() == content, name


def test_a_byte_level_base_refuses_new_chars_naming_why(tmp_path):
    base = load_tokenizer(write_tokenizer_dir("qwen2", tmp_path / "base"))
    with pytest.raises(InputError) as error:
        extend_hf_tokenizer(base, thai_texts(2), tmp_path / "ext", vocab_size=base.vocab_size + 8)
    assert "byte-level" in str(error.value) and "--pieces all" in str(error.value)


@pytest.mark.timeout(300)
def test_extend_then_grow_an_imported_model_with_padding_rows(tmp_path):
    from helpers.hf_models import build_model

    rows = 1280  # more rows than the 1,207 ids of the tokenizer, as Qwen2.5 has
    hf = tmp_path / "hf"
    model = build_model(
        "Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2, "vocab_size": rows}
    )
    model.save_pretrained(hf)
    write_tokenizer_dir("qwen2", hf)
    assert main(["convert", "--from-hf", str(hf), str(tmp_path / "import")]) == 0
    domain = tmp_path / "thai.jsonl"
    domain.write_text("".join(json.dumps({"text": t}) + "\n" for t in thai_texts()))

    extended = tmp_path / "qwen-thai"
    stored = tmp_path / "import" / "hf_tokenizer.json"
    argv = ["tokenizer", "extend", str(stored), f"jsonl:{domain}", "--pieces", "all"]
    assert main([*argv, "--vocab-size", "1300", "--out", str(extended)]) == 0
    assert load_tokenizer(extended).vocab_size == 1300

    grown = tmp_path / "grown"
    argv = ["checkpoint", "grow-vocab", str(tmp_path / "import"), str(grown)]
    assert main([*argv, "--vocab-size", "1344", "--tokenizer", str(extended)]) == 0
    before, _ = load_params(tmp_path / "import")
    after, cfg = load_params(grown)
    old, new = np.asarray(before["embed"].get_value()), np.asarray(after["embed"].get_value())
    assert cfg.model.vocab_size == 1344 and new.shape[0] == 1344
    np.testing.assert_array_equal(new[:1207], old[:1207])  # every token of the import
    mean = old[:1207].astype(np.float32).mean(axis=0)
    np.testing.assert_allclose(new[1207:], np.broadcast_to(mean, (1344 - 1207, mean.size)))
    assert load_tokenizer(grown).vocab_size == 1300
    assert cfg.data.tokenizer == str(grown / "hf_tokenizer.json")


def test_grow_vocab_refuses_a_tokenizer_that_does_not_extend_the_models(tmp_path):
    from helpers.hf_models import build_model

    hf = tmp_path / "hf"
    build_model(
        "Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2, "vocab_size": 1280}
    ).save_pretrained(hf)
    write_tokenizer_dir("qwen2", hf)
    assert main(["convert", "--from-hf", str(hf), str(tmp_path / "import")]) == 0
    other = write_tokenizer_dir("smollm", tmp_path / "other")  # other ids, same kind
    argv = ["checkpoint", "grow-vocab", str(tmp_path / "import"), str(tmp_path / "grown")]
    assert main([*argv, "--vocab-size", "1344", "--tokenizer", str(other)]) == 2
