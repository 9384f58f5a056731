"""Data inputs that used to hang, pass silently, escape their directory or eat memory.

Issue 17, items 2 (nothing to train on: an endless stream spun forever; an empty
chat or preference file ended in a raw StopIteration), 12 (bad lines in small files
skipped without a word, named out of file order, listed twice), 15 (a token-shard
manifest naming a file outside its directory) and 17 (one long line of text cost
memory in proportion to its length, many times over).
"""

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from helpers.batches import ByteTokenizer
from helpers.runs import REPO, TINY, environment, jaxlm, make_tokenizer, run, tail, train_args

from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.data.jsonl import JsonlError
from jaxlm.data.packing import document_tokens
from jaxlm.data.pipeline import dataset_from_specs
from jaxlm.data.preference import preference_dataset
from jaxlm.data.sft import sft_dataset
from jaxlm.data.sources import TokenShards
from jaxlm.data.sources.token_shard_writer import TokenShardWriter
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import InputError
from jaxlm.prep.clean import CleanSettings, clean_corpus, report_path
from jaxlm.prep.filters import QUALITY_FILTER_NAMES


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def chat(*turns):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


def first_batches_in_subprocess(datasets: dict[str, str], timeout: float = 90) -> str:
    """Takes one batch of each dataset (name -> the expression that builds it) in a
    process that a hang cannot outlive (the hang guarded against ignored SIGTERM
    too); returns its output, one "name: InputError: ..." line per refused dataset."""
    script = textwrap.dedent(
        """
        from helpers.batches import ByteTokenizer
        from jaxlm.data.pipeline import dataset_from_specs
        from jaxlm.data.preference import preference_dataset
        from jaxlm.data.sft import sft_dataset
        from jaxlm.errors import InputError
        """
    )
    for name, expression in datasets.items():
        script += textwrap.dedent(
            f"""
            try:
                next(iter({expression}))
            except InputError as error:
                print({name!r} + ": InputError: " + str(error).splitlines()[0])
            """
        )
    env = environment(1, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no batch and no error within {timeout}s: the stream spins") from None
    return done.stdout + done.stderr[-2000:]


# Item 2: nothing to train on ---------------------------------------------------------


def test_streams_with_nothing_to_learn_end_in_an_error_naming_the_file_not_a_hang(tmp_path):
    no_answers = write_lines(tmp_path / "no_answers.jsonl", [chat(("user", "why?"))] * 5)
    # Every response is cut away by seq_len: no pair has anything to compare.
    pair = json.dumps({"prompt": "x" * 200, "chosen": "yes", "rejected": "no"})
    pairs = write_lines(tmp_path / "pairs.jsonl", [pair] * 3)
    blank = write_lines(tmp_path / "blank.jsonl", [json.dumps({"text": t}) for t in " \n"])
    output = first_batches_in_subprocess(
        {
            "chat": f"sft_dataset([{str(no_answers)!r}], ByteTokenizer(), seq_len=64, "
            "batch_size=2)",
            "pairs": f"preference_dataset([{str(pairs)!r}], ByteTokenizer(), seq_len=32, "
            "batch_size=2)",
            "text": f"dataset_from_specs('jsonl:{blank}', ByteTokenizer(), split='all', "
            "seq_len=32, batch_size=2)",
        }
    )
    assert f"chat: InputError: {no_answers}: no record has trainable tokens" in output, output
    assert f"pairs: InputError: {pairs}: no record is a usable pair" in output, output
    assert f"text: InputError: jsonl:{blank}: no document has text" in output, output


@pytest.mark.slow  # ~20 s: a whole `jaxlm train` process
def test_chat_training_on_a_file_without_an_assistant_turn_exits_with_one_line(tmp_path):
    path = write_lines(tmp_path / "no_answers.jsonl", [chat(("user", f"q{i}")) for i in range(20)])
    good = write_lines(tmp_path / "eval.jsonl", [chat(("user", "q"), ("assistant", "a"))] * 4)
    overrides = [
        *TINY,
        "data.format=chat",
        f"data.sources=jsonl:{path}",
        f"data.eval_sources=jsonl:{good}",
        f"data.tokenizer={make_tokenizer(tmp_path)}",
        "train.steps=3",
    ]
    from jaxlm.data.sft import NOTHING_TO_LEARN

    log = tmp_path / "log"
    assert run(jaxlm(*train_args(tmp_path / "run", overrides)), environment(1), log, 120) == 2
    assert tail(log, 1) == f"jaxlm: error: {path}: {NOTHING_TO_LEARN}"


@pytest.mark.parametrize("kind", ["chat", "preference"])
def test_empty_chat_or_preference_file_is_an_error_naming_it(tmp_path, kind):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    dataset = sft_dataset if kind == "chat" else preference_dataset
    with pytest.raises(InputError, match=rf"{path}: no line to read"):
        next(iter(dataset([path], ByteTokenizer(), seq_len=32, batch_size=2)))


# Item 12: bad lines ------------------------------------------------------------------


GOOD = [json.dumps({"text": f"document number {i}"}) for i in range(4)]


def test_skipping_one_bad_line_of_four_aborts_naming_it(tmp_path):
    lines = [*GOOD[:2], "{broken", GOOD[3]]
    path = write_lines(tmp_path / "small.jsonl", lines)
    ds = dataset_from_specs(
        f"jsonl:{path}", ByteTokenizer(), split="all", on_error="skip", seq_len=32, batch_size=2
    )
    with pytest.raises(InputError, match=rf"lines were malformed .*{path}:3: not valid JSON"):
        for _, _batch in zip(range(3), ds, strict=False):  # a short run: one or two epochs
            pass


@pytest.mark.parametrize("seed", range(6))
def test_error_names_the_first_bad_line_in_file_order_whatever_the_shuffle(tmp_path, seed):
    lines = [GOOD[0], '{"body": "no text field"}', "{broken", *GOOD[1:]]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    ds = dataset_from_specs(
        f"jsonl:{path}", ByteTokenizer(), split="all", seed=seed, seq_len=32, batch_size=2
    )
    with pytest.raises(InputError) as raised:
        next(iter(ds))
    assert str(raised.value).startswith(f"{path}:2: no field 'text'"), str(raised.value)


def test_chat_error_names_the_first_bad_line_in_file_order(tmp_path):
    good = chat(("user", "hi"), ("assistant", "hello"))
    lines = [good, "{broken 2", "{broken 3", good, "{broken 5", good]
    path = write_lines(tmp_path / "chat.jsonl", lines)
    for seed in range(6):
        ds = sft_dataset([path], ByteTokenizer(), seq_len=64, batch_size=2, seed=seed)
        with pytest.raises(JsonlError, match=rf"^{path}:2: not valid JSON"):
            for _, _batch in zip(range(5), ds, strict=False):
                pass


def test_conversation_error_names_the_first_bad_record_in_file_order(tmp_path):
    good = chat(("user", "hi"), ("assistant", "hello"))
    wizard = chat(("wizard", "?"), ("assistant", "!"))
    path = write_lines(tmp_path / "chat.jsonl", [good, wizard, wizard, good, wizard, good])
    for seed in range(6):
        ds = sft_dataset([path], ByteTokenizer(), seq_len=64, batch_size=2, seed=seed)
        with pytest.raises(InputError, match=rf"^{path}:2: messages\[0\]: unknown role"):
            for _, _batch in zip(range(5), ds, strict=False):
                pass


def test_abort_lists_each_bad_line_once_in_file_order_and_skips_are_reported(tmp_path, capsys):
    good = chat(("user", "hi"), ("assistant", "hello"))
    lines = [good] * 10
    lines[7], lines[2] = "{broken 8", "{broken 3"
    path = write_lines(tmp_path / "chat.jsonl", lines)
    ds = sft_dataset([path], ByteTokenizer(), seq_len=64, batch_size=2, on_error="skip", seed=1)
    with pytest.raises(JsonlError) as raised:
        for _, _batch in zip(range(50), ds, strict=False):
            pass
    message = str(raised.value)
    listed = message.split("the first in file order: ")[1]
    assert [entry.split(": ")[0] for entry in listed.split("; ")] == [f"{path}:3", f"{path}:8"]
    assert f"jaxlm: warning: skipping {path}:" in capsys.readouterr().err


def test_a_few_bad_lines_of_a_large_file_are_skipped_and_reported(tmp_path, capsys):
    lines = [json.dumps({"text": f"document {i}"}) for i in range(300)]
    lines[150] = "{broken"
    path = write_lines(tmp_path / "big.jsonl", lines)
    ds = dataset_from_specs(
        f"jsonl:{path}", ByteTokenizer(), split="all", on_error="skip", seq_len=64,
        batch_size=4, repeat=False,
    )  # fmt: skip
    assert sum(1 for _ in ds) > 0
    assert f"jaxlm: warning: skipping {path}:151: not valid JSON" in capsys.readouterr().err


def test_clean_that_skips_every_line_fails_and_writes_nothing(tmp_path):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(b'{"text": "caf\xe9"}\n' * 3)
    out = tmp_path / "out.jsonl"
    settings = CleanSettings(skip_bad_lines=True, disabled=QUALITY_FILTER_NAMES)
    with pytest.raises(InputError, match=rf"{src}:1: not valid UTF-8"):
        clean_corpus([src], out, settings)
    assert not out.exists() and not report_path(out).exists()


def test_clean_of_a_small_file_past_the_threshold_fails(tmp_path):
    text = "a perfectly ordinary sentence that is long enough to pass every filter. "
    lines = [json.dumps({"text": f"{i} {text}"}) for i in range(3)] + ["{broken"]
    src = write_lines(tmp_path / "small.jsonl", lines)
    settings = CleanSettings(skip_bad_lines=True, disabled=QUALITY_FILTER_NAMES)
    with pytest.raises(InputError, match=rf"1 of 4 lines were malformed.*{src}:4"):
        clean_corpus([src], tmp_path / "out.jsonl", settings)
    assert not (tmp_path / "out.jsonl").exists()


def test_clean_that_keeps_nothing_fails(tmp_path):
    src = write_lines(tmp_path / "short.jsonl", [json.dumps({"text": "tiny"})] * 2)
    with pytest.raises(InputError, match=rf"{src}: kept no document \(2 read"):
        clean_corpus([src], tmp_path / "out.jsonl", CleanSettings())
    assert not (tmp_path / "out.jsonl").exists()


# Item 15: token-shard manifest names -------------------------------------------------


@pytest.fixture
def shard_dir(tmp_path):
    out = tmp_path / "shards"
    with TokenShardWriter(out, vocab_size=300, shard_tokens=1000) as writer:
        for i in range(3):
            writer.add(np.asarray([1, 10 + i, 11 + i, 2], np.int32), i)
        writer.commit({"tokenizer": {"sha256": "0" * 64}})
    secret = tmp_path / "outside" / "SECRET.tokens"
    secret.parent.mkdir()
    secret.write_bytes((out / "shard-00000.tokens").read_bytes())
    return out, secret


def point_tokens_at(directory, name):
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["files"]["tokens"]["name"] = name
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


@pytest.mark.parametrize("escape", ["relative", "absolute", "symlink"])
def test_manifest_name_leaving_the_shard_directory_is_refused(shard_dir, escape):
    directory, secret = shard_dir
    name = {"relative": "../outside/SECRET.tokens", "absolute": str(secret)}.get(escape)
    if escape == "symlink":
        (directory / "link.tokens").symlink_to(secret)
        name = "link.tokens"
    manifest = point_tokens_at(directory, name)
    with pytest.raises(InputError, match=rf"{manifest}: shards\[0\]\.files\.tokens\.name") as e:
        TokenShards(directory)[0]
    assert repr(name) in str(e.value)


# Item 17: long documents in bounded memory -------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    files = stdlib_files("validation")[:20]
    prefix = tmp_path_factory.mktemp("tok") / "small"
    return train_tokenizer((read_text(f) for f in files), prefix, vocab_size=400, max_chars=300_000)


def long_line(chars: int) -> str:
    text = " ".join(" ".join(read_text(f).split()) for f in stdlib_files("validation")[:60])
    return (text * (chars // len(text) + 1))[:chars]


def test_long_text_encodes_to_the_same_ids_in_pieces(tokenizer):
    from jaxlm.data.long_text import encode_ids

    text = "".join(read_text(f) for f in stdlib_files("validation")[:8])  # code: runs of spaces
    whole = np.asarray(tokenizer.encode(text), np.int32)
    for max_chars in (300, 2000):
        assert np.array_equal(encode_ids(text, tokenizer, max_chars), whole)


def test_tokenizing_one_long_line_takes_memory_bounded_by_its_int32_tokens(tokenizer):
    text = long_line(1 << 19)  # one 512 KB line, no newline
    tracemalloc.start()
    try:
        tokens = document_tokens(text, tokenizer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The int32 pieces and their join, plus a bounded working set (one piece's Python
    # ids, ~2.4 MB); encoding it whole held ~36 bytes a token as a Python list (~15 MB).
    assert peak < 2 * tokens.nbytes + (6 << 20), (peak >> 20, tokens.nbytes >> 20)
