"""Packing: no token lost or duplicated, segments and positions reset, targets after packing."""

import collections

import grain
import numpy as np
import pytest
from helpers.batches import BOS, EOS, ByteTokenizer

from jaxlm.data import packing

PACKERS = list(packing.PACKERS)


def _documents(lengths, seed=0):
    """Token documents [BOS, body..., EOS] with distinct, recognisable bodies."""
    rng = np.random.default_rng(seed)
    documents = []
    for length in lengths:
        body = rng.integers(10, 1000, size=length - 2, dtype=np.int32)
        documents.append(np.concatenate([[BOS], body, [EOS]]).astype(np.int32))
    return documents


def _batches(documents, **kwargs):
    source = grain.MapDataset.source(documents).map(lambda tokens: {"tokens": tokens})
    return list(packing.packed_batches(source.to_iter_dataset(), **kwargs))


def _segments(batches):
    """Every (tokens, positions) run of one segment, in row order."""
    runs = []
    for batch in batches:
        for tokens, segment_ids, positions in zip(
            batch["tokens"], batch["segment_ids"], batch["positions"], strict=True
        ):
            for segment in np.unique(segment_ids[segment_ids != 0]):
                where = segment_ids == segment
                (indices,) = np.nonzero(where)
                assert np.all(np.diff(indices) == 1), "a segment must be contiguous"
                runs.append((tokens[where], positions[where]))
    return runs


MIXED_LENGTHS = [3, 17, 40, 5, 64, 2, 33, 31, 9, 64, 12, 50, 7, 28, 61, 4, 19, 45]


@pytest.mark.parametrize("packer", PACKERS)
def test_no_token_lost_or_duplicated(packer):
    documents = _documents([*MIXED_LENGTHS, 150, 200])  # two longer than seq_len
    batches = _batches(documents, seq_len=64, batch_size=3, packer=packer)
    packed = collections.Counter()
    for batch in batches:
        packed.update(batch["tokens"][batch["segment_ids"] != 0].tolist())
    assert packed == collections.Counter(np.concatenate(documents).tolist())


@pytest.mark.parametrize("packer", ["first_fit", "best_fit"])
def test_documents_that_fit_stay_whole_in_one_segment(packer):
    documents = _documents(MIXED_LENGTHS)
    runs = _segments(_batches(documents, seq_len=64, batch_size=4, packer=packer))
    assert sorted(tuple(tokens) for tokens, _ in runs) == sorted(tuple(d) for d in documents)


@pytest.mark.parametrize("packer", PACKERS)
def test_batch_schema_shapes_and_dtypes(packer):
    batches = _batches(_documents(MIXED_LENGTHS), seq_len=32, batch_size=5, packer=packer)
    for batch in batches:
        assert sorted(batch) == sorted(packing.BATCH_KEYS)
        for value in batch.values():
            assert value.shape == (5, 32) and value.dtype == np.int32


@pytest.mark.parametrize("packer", PACKERS)
def test_positions_restart_at_every_segment(packer):
    batches = _batches(_documents([*MIXED_LENGTHS, 100]), seq_len=32, batch_size=4, packer=packer)
    runs = _segments(batches)
    assert len(runs) > len(MIXED_LENGTHS)  # documents were cut into several segments
    for _, positions in runs:
        np.testing.assert_array_equal(positions, np.arange(len(positions)))
    for batch in batches:  # segment ids count up from 1 along each row
        for segment_ids in batch["segment_ids"]:
            real = segment_ids[segment_ids != 0]
            if real.size:  # rows added to fill the last batch are all padding
                assert real[0] == 1 and np.all(np.diff(real) >= 0)


@pytest.mark.parametrize("packer", PACKERS)
def test_targets_are_the_next_token_of_the_same_segment(packer):
    batches = _batches(_documents([*MIXED_LENGTHS, 90]), seq_len=32, batch_size=4, packer=packer)
    for batch in batches:
        for row in range(batch["tokens"].shape[0]):
            tokens, targets, mask, segments = (
                batch[key][row] for key in ("tokens", "targets", "loss_mask", "segment_ids")
            )
            for t in range(len(tokens)):
                next_in_segment = (
                    t + 1 < len(tokens) and segments[t] != 0 and segments[t + 1] == segments[t]
                )
                assert mask[t] == int(next_in_segment)
                assert targets[t] == (tokens[t + 1] if next_in_segment else 0)


@pytest.mark.parametrize("packer", PACKERS)
def test_loss_mask_is_off_at_segment_ends_and_on_padding(packer):
    batches = _batches(_documents([5, 9, 3]), seq_len=20, batch_size=2, packer=packer)
    batch = batches[0]
    padding = batch["segment_ids"] == 0
    assert padding.any()
    assert np.all(batch["tokens"][padding] == 0)
    assert np.all(batch["targets"][padding] == 0)
    assert np.all(batch["positions"][padding] == 0)
    assert np.all(batch["loss_mask"][padding] == 0)
    # Each document's EOS is the last token of its segment: never a prediction source.
    eos = (batch["tokens"] == EOS) & ~padding
    assert eos.sum() == 3 and np.all(batch["loss_mask"][eos] == 0)
    # A document of n tokens gives n - 1 supervised positions.
    assert batch["loss_mask"].sum() == (5 - 1) + (9 - 1) + (3 - 1)


def test_long_document_is_split_into_full_pieces_then_remainder():
    (document,) = _documents([70])
    batches = _batches([document], seq_len=32, batch_size=4, packer="first_fit", shuffle_bins=False)
    (batch,) = batches
    runs = _segments(batches)
    assert [len(tokens) for tokens, _ in runs] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate([tokens for tokens, _ in runs]), document)
    assert runs[0][0][0] == BOS and runs[-1][0][-1] == EOS
    # The last token of a piece has no target: its successor is in another segment.
    assert batch["loss_mask"][0, 31] == 0 and batch["loss_mask"][1, 31] == 0
    assert batch["loss_mask"].sum() == 31 + 31 + 5
    assert np.all(batch["segment_ids"][3] == 0)  # the batch is filled with a padding row


def test_split_long_document_pieces():
    tokens = np.arange(10, dtype=np.int32)
    pieces = packing.split_long_document(tokens, 4)
    assert [piece.tolist() for piece in pieces] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [piece.tolist() for piece in packing.split_long_document(tokens, 10)] == [
        tokens.tolist()
    ]


def test_document_tokens_wraps_text_in_bos_and_eos():
    tokens = packing.document_tokens("hi", ByteTokenizer())
    assert tokens.dtype == np.int32
    assert tokens.tolist() == [BOS, ord("h") + 10, ord("i") + 10, EOS]
    assert packing.document_tokens("", ByteTokenizer()).tolist() == [BOS, EOS]


@pytest.mark.parametrize("packer", PACKERS)
def test_last_partial_batch_is_filled_with_padding_rows(packer):
    documents = _documents([30, 30, 30, 30, 30])  # five rows' worth at seq_len 32
    batches = _batches(documents, seq_len=32, batch_size=4, packer=packer)
    assert len(batches) == 2
    last = batches[-1]
    assert last["tokens"].shape == (4, 32)
    rows_with_tokens = (last["segment_ids"] != 0).any(axis=1)
    assert rows_with_tokens.tolist() == [True, False, False, False]


def test_padding_uses_the_tokenizer_pad_id():
    documents = _documents([5, 7])
    (batch,) = _batches(documents, seq_len=16, batch_size=3, packer="first_fit", pad_id=99)
    padding = batch["segment_ids"] == 0
    assert np.all(batch["tokens"][padding] == 99)
    assert np.all(batch["targets"][padding] == 0)


def test_concat_then_split_leaves_no_padding_before_the_end():
    documents = _documents(MIXED_LENGTHS * 3)
    batches = _batches(documents, seq_len=32, batch_size=4, packer="concat_then_split")
    assert all(packing.real_token_fraction(batch) == 1.0 for batch in batches[:-1])


def test_more_packing_bins_waste_less_padding():
    documents = _documents(list(np.random.default_rng(1).integers(2, 64, size=300)))

    def padding_share(bins):
        batches = _batches(documents, seq_len=64, batch_size=4, num_packing_bins=bins)
        return 1 - np.mean([packing.real_token_fraction(batch) for batch in batches])

    assert padding_share(64) < padding_share(4)


def test_real_token_fraction():
    batch = packing.padding_batch(2, 4)
    assert packing.real_token_fraction(batch) == 0.0
    batch["segment_ids"][0, :3] = 1
    assert packing.real_token_fraction(batch) == 3 / 8


def test_padding_batch_has_the_schema_and_nothing_to_learn():
    batch = packing.padding_batch(3, 8, pad_id=0)
    assert sorted(batch) == sorted(packing.BATCH_KEYS)
    assert all(value.shape == (3, 8) and value.dtype == np.int32 for value in batch.values())
    assert batch["loss_mask"].sum() == 0 and batch["segment_ids"].sum() == 0


def test_unknown_packer_is_refused():
    with pytest.raises(ValueError, match="next_fit"):
        _batches(_documents([5]), seq_len=8, batch_size=1, packer="next_fit")
