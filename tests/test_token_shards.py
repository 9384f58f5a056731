"""Pre-tokenized shards: write -> read equality, manifest, integrity checks, atomic output, CLI."""

import json
import os
import re

import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.data import corpus
from jaxlm.data.packing import document_tokens
from jaxlm.data.sources import TokenShards, TokenShardsError, open_source
from jaxlm.data.sources.token_shard_writer import TokenShardWriter
from jaxlm.data.sources.token_shards import file_sha256, token_dtype
from jaxlm.data.sources.tokenize import tokenize_sources
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import InputError
from jaxlm.source_spec import SourceSpec, parse_sources

TEXTS = [f"def f{i}(x):\n    return x * {i} + {'y' * (i % 5)}\n" * (1 + i % 9) for i in range(60)]
TEXTS[3], TEXTS[17] = "", "  \n\t "  # blank: dropped and counted


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small real SentencePiece model, trained on a slice of the stdlib."""
    files = corpus.stdlib_files("validation")[:20]
    texts = (corpus.read_text(path) for path in files)
    prefix = tmp_path_factory.mktemp("tok") / "small"
    return train_tokenizer(texts, prefix, vocab_size=400, max_chars=300_000)


@pytest.fixture
def data(tmp_path):
    """TEXTS[:40] in one jsonl file, TEXTS[40:] as text files; specs for both."""
    jsonl = tmp_path / "in" / "part.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS[:40]))
    for i, text in enumerate(TEXTS[40:]):
        (tmp_path / "in" / f"t{i:02d}.txt").write_text(text)
    return parse_sources(f"jsonl:{jsonl},text:{tmp_path}/in/*.txt")


def tokenize(specs, tokenizer, out, **kwargs):
    kwargs = {"text_field": "body", "shard_tokens": 500, **kwargs}
    return tokenize_sources(specs, tokenizer, out, **kwargs)


def expected_documents(tokenizer, texts):
    return [document_tokens(t, tokenizer).tolist() for t in texts if t.strip()]


def test_shards_read_back_as_on_the_fly_tokenization(data, tokenizer, tmp_path):
    summary = tokenize(data, tokenizer, tmp_path / "out")
    shards = TokenShards(tmp_path / "out", tokenizer_sha256=tokenizer.sha256)
    assert len(shards.manifest["shards"]) > 1
    assert [shards[i].tolist() for i in range(len(shards))] == expected_documents(tokenizer, TEXTS)
    assert shards[0].dtype == np.int32
    assert (summary.documents, summary.empty_documents, summary.skipped_records) == (58, 2, 0)
    assert summary.text_bytes == sum(len(t.encode()) for t in TEXTS if t.strip())
    shards.verify()


def test_manifest_describes_the_shards(data, tokenizer, tmp_path):
    out = tmp_path / "out"
    tokenize(data, tokenizer, out, split="train", val_fraction=0.25)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"]) == ("jaxlm-token-shards", 1)
    assert manifest["tokenizer"] == {
        "sha256": tokenizer.sha256,
        "vocab_size": 400,
        "bos_id": 1,
        "eos_id": 2,
        "model": "small.model",
    }
    assert manifest["token_dtype"] == "uint16"
    assert manifest["sources"] == [str(spec) for spec in data]
    assert (manifest["text_field"], manifest["split"], manifest["val_fraction"]) == (
        "body",
        "train",
        0.25,
    )
    total_documents = total_tokens = 0
    for shard in manifest["shards"]:
        files = shard["files"]
        for entry in files.values():
            assert (out / entry["name"]).stat().st_size == entry["bytes"]
            assert file_sha256(out / entry["name"]) == entry["sha256"]
        tokens = np.fromfile(out / files["tokens"]["name"], dtype="<u2")
        offsets = np.load(out / files["offsets"]["name"], allow_pickle=False)
        assert offsets.dtype == np.int64 and len(offsets) == shard["documents"] + 1
        assert offsets[-1] == len(tokens) == shard["tokens"]
        assert (tokens[offsets[:-1]] == 1).all() and (tokens[offsets[1:] - 1] == 2).all()
        total_documents += shard["documents"]
        total_tokens += shard["tokens"]
    assert (manifest["documents"], manifest["tokens"]) == (total_documents, total_tokens)
    assert 0 < total_documents < 58  # the train split only


def test_shards_split_exactly_like_their_text(data, tokenizer, tmp_path):
    tokenize(data, tokenizer, tmp_path / "out")
    tokens = SourceSpec("tokens", str(tmp_path / "out"))
    for split in ("train", "validation"):
        from_shards = open_source(tokens, split=split, val_fraction=0.3)
        texts = [
            t
            for spec in data
            for t in open_source(spec, text_field="body", split=split, val_fraction=0.3)
        ]
        assert [d.tolist() for d in from_shards] == expected_documents(tokenizer, texts)


def test_a_different_tokenizer_is_refused(data, tokenizer, tmp_path):
    out = tmp_path / "out"
    tokenize(data, tokenizer, out)
    other = "0" * 64
    message = f"{out / 'manifest.json'}: shards were tokenized with tokenizer sha256 " + (
        f"{tokenizer.sha256}, but the tokenizer in use has sha256 {other}"
    )
    with pytest.raises(TokenShardsError, match=re.escape(message)):
        open_source(SourceSpec("tokens", str(out)), tokenizer_sha256=other)
    assert len(open_source(SourceSpec("tokens", str(out)), tokenizer_sha256=tokenizer.sha256))


def test_truncated_or_changed_shards_are_detected(data, tokenizer, tmp_path):
    out = tmp_path / "out"
    tokenize(data, tokenizer, out)
    first = out / "shard-00000.tokens"
    original = first.read_bytes()
    first.write_bytes(original[:-2])
    with pytest.raises(TokenShardsError, match=rf"{first}: {len(original) - 2} bytes, .* says"):
        TokenShards(out)
    first.write_bytes(original[:10] + bytes([original[10] ^ 1]) + original[11:])
    shards = TokenShards(out)  # same size: opening is cheap and does not notice
    with pytest.raises(TokenShardsError, match=rf"{first}: sha256 .* differs"):
        shards.verify()
    (out / "shard-00001.offsets.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard-00001\.offsets\.npy"):
        TokenShards(out)


def test_output_is_atomic_and_never_overwritten_by_accident(data, tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match=f"{out}: output already exists; pass --force"):
        tokenize(data, tokenizer, out)
    assert (out / "keep.txt").read_text() == "mine"
    tokenize(data, tokenizer, out, force=True)
    assert not (out / "keep.txt").exists() and len(TokenShards(out)) == 58

    broken = tmp_path / "in" / "z.txt"
    broken.write_bytes(b"\xff")  # the last document fails, after shards were written
    with pytest.raises(InputError, match=f"{broken}: not valid UTF-8"):
        tokenize(data, tokenizer, tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # nothing partial left behind


def test_output_bytes_do_not_depend_on_the_number_of_workers(data, tokenizer, tmp_path):
    outputs = {}
    for workers in (0, 1, 2):
        out = tmp_path / f"w{workers}"
        tokenize(data, tokenizer, out, workers=workers, shard_tokens=300)
        outputs[workers] = {path.name: path.read_bytes() for path in sorted(out.iterdir())}
    assert len(outputs[0]) > 4
    assert outputs[0] == outputs[1] == outputs[2]


def test_large_vocabularies_use_uint32(tmp_path):
    assert token_dtype(65535) == np.dtype("<u2") and token_dtype(65536) == np.dtype("<u4")
    with TokenShardWriter(tmp_path / "big", vocab_size=70_000, shard_tokens=10) as writer:
        writer.add(np.array([1, 65_535, 69_999, 2]), 7)
        manifest = writer.commit({"tokenizer": {"sha256": "x"}})
    assert manifest["token_dtype"] == "uint32"
    assert TokenShards(tmp_path / "big")[0].tolist() == [1, 65_535, 69_999, 2]
    with (
        TokenShardWriter(tmp_path / "bad", vocab_size=100, shard_tokens=10) as writer,
        pytest.raises(ValueError, match=r"token ids must be in \[0, 100\)"),
    ):
        writer.add(np.array([1, 100, 2]), 0)
    assert not (tmp_path / "bad").exists()


def test_cli_tokenizes_and_reports(data, tokenizer, tmp_path, capsys):
    jsonl = tmp_path / "in" / "part.jsonl"
    with jsonl.open("a") as f:
        f.write("{broken\n")
    args = ["data", "tokenize", f"jsonl:{jsonl}", "--tokenizer", str(tokenizer.path)]
    args += ["--out", str(tmp_path / "out"), "--text-field", "body"]
    assert main([*args, "--workers", "1"]) == 2
    assert f"{jsonl}:41: not valid JSON" in capsys.readouterr().err
    assert main([*args, "--skip-bad-lines"]) == 0
    out = capsys.readouterr().out
    assert "documents        38" in out and "skipped records  1" in out and "tokens/s" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["documents"], manifest["skipped_records"]) == (38, 1)
    assert main(args) == 2
    assert "output already exists" in capsys.readouterr().err


def test_cli_names_a_missing_path(tokenizer, tmp_path, capsys):
    missing = tmp_path / "nope" / "*.jsonl"
    args = ["data", "tokenize", f"jsonl:{missing}", "--tokenizer", str(tokenizer.path)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert f"no file or directory matches '{missing}'" in capsys.readouterr().err
    args = ["data", "tokenize", "stdlib", "--tokenizer", str(tmp_path / "no.model")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert f"tokenizer model not found: {tmp_path / 'no.model'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
