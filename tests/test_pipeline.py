"""The pretraining pipeline: coverage, sharding, determinism and checkpointable iterators."""

import collections
import itertools
import json
import re

import grain
import numpy as np
import pytest
from helpers.batches import BOS, EOS, ByteTokenizer

from jaxlm.data import corpus, packing, pipeline
from jaxlm.data.counters import COUNTS_KEY
from jaxlm.data.packing import BATCH_KEYS, document_tokens, split_long_document
from jaxlm.data.tokenizer import train_tokenizer

PACKERS = list(packing.PACKERS)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """40 small documents of varied length (a few longer than seq_len), one per file."""
    root = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(40):
        words = rng.integers(1, 60 if index % 9 else 400)
        text = f"doc {index:02d}:" + "".join(f" w{index}_{k}" for k in range(words)) + "\n"
        path = root / f"doc_{index:02d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    (root / "empty.txt").write_text("")
    return [*paths, root / "empty.txt"]


def _pieces_in(batches):
    """Every segment of every batch, as a tuple of tokens."""
    pieces = collections.Counter()
    for batch in batches:
        for tokens, segments in zip(batch["tokens"], batch["segment_ids"], strict=True):
            for segment in np.unique(segments[segments != 0]):
                pieces[tuple(tokens[segments == segment].tolist())] += 1
    return pieces


def _expected_pieces(files, seq_len):
    """The pieces each non-empty file should become: [BOS] + bytes + [EOS], cut by seq_len."""
    pieces = collections.Counter()
    for path in files:
        if text := path.read_text():
            tokens = document_tokens(text, ByteTokenizer())
            pieces.update(tuple(piece.tolist()) for piece in split_long_document(tokens, seq_len))
    return pieces


def _eval_batches(files, **kwargs):
    kwargs = {"seq_len": 64, "batch_size": 4, "shuffle": False, "repeat": False, **kwargs}
    return list(pipeline.pretrain_dataset(files, ByteTokenizer(), **kwargs))


def _assert_same_batches(expected, actual):
    """Same batch schema arrays; counts (COUNTS_KEY) depend on read-ahead and are not compared."""
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        assert sorted(want) == sorted(got)
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(want[key], got[key], err_msg=key)


@pytest.mark.parametrize("packer", ["first_fit", "best_fit"])
def test_eval_mode_covers_every_document_exactly_once(text_files, packer):
    expected = _expected_pieces(text_files, 128)
    assert any(len(piece) == 128 for piece in expected)  # some documents were cut
    batches = _eval_batches(text_files, packer=packer, seq_len=128)
    assert _pieces_in(batches) == expected
    assert all(batch["tokens"].shape == (4, 128) for batch in batches)


@pytest.mark.parametrize("packer", PACKERS)
def test_eval_mode_token_multiset_matches_the_documents(text_files, packer):
    tokenizer = ByteTokenizer()
    batches = _eval_batches(text_files, packer=packer)
    seen = collections.Counter()
    for batch in batches:
        seen.update(batch["tokens"][batch["segment_ids"] != 0].tolist())
    expected = collections.Counter()
    for path in text_files:
        if text := path.read_text():
            expected.update([BOS, *tokenizer.encode(text), EOS])
    assert seen == expected


def test_eval_mode_pads_the_last_batch_with_empty_rows(text_files):
    batches = _eval_batches(text_files, batch_size=7)
    assert all(batch["tokens"].shape == (7, 64) for batch in batches)
    rows_used = (batches[-1]["segment_ids"] != 0).any(axis=1)
    assert not rows_used.all(), "this file set should not fill the last batch exactly"
    assert rows_used.tolist() == sorted(rows_used.tolist(), reverse=True)


def test_process_shards_are_disjoint_and_cover_every_document(text_files):
    per_process = [
        _pieces_in(_eval_batches(text_files, process_index=index, process_count=3))
        for index in range(3)
    ]
    assert all(per_process)
    assert sum(per_process, collections.Counter()) == _expected_pieces(text_files, 64)


def _paths(files):
    return grain.MapDataset.source([str(path) for path in files])


def test_training_shards_are_disjoint_within_each_epoch(text_files):
    def epochs(index):
        stream = pipeline.document_stream(
            _paths(text_files), seed=3, shuffle=True, repeat=True, process_index=index,
            process_count=2,
        )  # fmt: skip
        return [stream[i] for i in range(2 * len(text_files))]

    # Process i owns positions i, i + 2, ... of each epoch's permutation.
    sizes = [len(range(index, len(text_files), 2)) for index in range(2)]
    first, second = epochs(0), epochs(1)
    for epoch in range(2):
        a = first[epoch * sizes[0] : (epoch + 1) * sizes[0]]
        b = second[epoch * sizes[1] : (epoch + 1) * sizes[1]]
        assert sorted(a + b) == sorted(str(path) for path in text_files)


def test_each_epoch_is_a_new_permutation(text_files):
    stream = pipeline.document_stream(
        _paths(text_files), seed=0, shuffle=True, repeat=True, process_index=0, process_count=1
    )
    n = len(text_files)
    epoch_one = [stream[i] for i in range(n)]
    epoch_two = [stream[i] for i in range(n, 2 * n)]
    assert sorted(epoch_one) == sorted(epoch_two) == sorted(str(path) for path in text_files)
    assert epoch_one != epoch_two
    unshuffled = pipeline.document_stream(
        _paths(text_files), seed=0, shuffle=False, repeat=False, process_index=0, process_count=1
    )
    assert list(unshuffled) == [str(path) for path in text_files]


def _first_batches(files, count, **kwargs):
    dataset = pipeline.pretrain_dataset(files, ByteTokenizer(), seq_len=64, batch_size=4, **kwargs)
    return list(itertools.islice(dataset, count))


def test_same_seed_same_batches_other_seed_other_batches(text_files):
    first = _first_batches(text_files, 6, seed=1)
    _assert_same_batches(first, _first_batches(text_files, 6, seed=1))
    other = _first_batches(text_files, 6, seed=2)
    assert not all(
        np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other, strict=True)
    )


def test_training_stream_repeats_past_one_epoch(text_files):
    tokens_per_epoch = sum(path.stat().st_size + 2 for path in text_files if path.stat().st_size)
    batches_per_epoch = tokens_per_epoch // (4 * 64) + 1
    batches = _first_batches(text_files, 3 * batches_per_epoch)
    assert len(batches) == 3 * batches_per_epoch


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize(("num_threads", "window"), [(0, 2048), (2, 2048), (0, 5)])
def test_state_round_trip_through_json_at_every_step(text_files, packer, num_threads, window):
    kwargs = {"packer": packer, "num_threads": num_threads, "seed": 5, "seq_len": 32}
    kwargs["shuffle_window"] = window  # 5: resumes land inside and across windows
    dataset = pipeline.pretrain_dataset(text_files, ByteTokenizer(), batch_size=3, **kwargs)
    iterator = iter(dataset)
    states, batches = [], []
    for _ in range(16):
        states.append(json.dumps(iterator.get_state()))  # as Grain's checkpointer stores it
        batches.append(next(iterator))
    for step in range(0, 16, 3):
        resumed = iter(dataset)
        resumed.set_state(json.loads(states[step]))
        _assert_same_batches(batches[step:], [next(resumed) for _ in range(16 - step)])


@pytest.mark.parametrize("packer", PACKERS)
def test_eval_state_round_trip_mid_stream(text_files, packer):
    dataset = pipeline.pretrain_dataset(
        text_files, ByteTokenizer(), seq_len=48, batch_size=2, packer=packer, shuffle=False,
        repeat=False,
    )  # fmt: skip
    everything = list(dataset)
    iterator = iter(dataset)
    for _ in range(len(everything) // 2):
        next(iterator)
    resumed = iter(dataset)
    resumed.set_state(json.loads(json.dumps(iterator.get_state())))
    _assert_same_batches(everything[len(everything) // 2 :], list(resumed))


def test_real_tokenizer_on_the_stdlib(tmp_path):
    train_files = corpus.stdlib_files("train")[:60]
    tokenizer = train_tokenizer(
        (corpus.read_text(path) for path in train_files),
        tmp_path / "tok",
        vocab_size=512,
        max_chars=200_000,
    )
    validation = corpus.stdlib_files("validation")[:6]
    batches = list(
        pipeline.pretrain_dataset(
            validation, tokenizer, seq_len=128, batch_size=8, shuffle=False, repeat=False
        )
    )
    for batch in batches:
        assert sorted(batch) == sorted([*BATCH_KEYS, COUNTS_KEY])
        assert all(batch[k].shape == (8, 128) and batch[k].dtype == np.int32 for k in BATCH_KEYS)
    token_bytes = tokenizer.token_bytes()
    counted = sum(int(token_bytes[batch["tokens"]].sum()) for batch in batches)
    assert counted == sum(len(path.read_bytes()) for path in validation)
    assert pipeline.real_token_fraction(batches[0]) > 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 1}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"packer": "next_fit"}, "next_fit"),
        ({"process_index": 2, "process_count": 2}, "process_index"),
        ({"num_threads": -1}, "num_threads"),
    ],
)
def test_bad_arguments_are_refused(text_files, kwargs, message):
    arguments = {"seq_len": 16, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipeline.pretrain_dataset(text_files, ByteTokenizer(), **arguments)


def test_more_processes_than_files_is_refused(text_files):
    with pytest.raises(ValueError, match="2 documents"):
        pipeline.pretrain_dataset(
            text_files[:2], ByteTokenizer(), seq_len=16, batch_size=2, process_count=3
        )


def test_unreadable_file_error_names_it(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    dataset = pipeline.pretrain_dataset([bad], ByteTokenizer(), seq_len=16, batch_size=2)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        next(iter(dataset))
