"""Documents to packed, fixed-shape batches: the stages between tokenizer and train step.

Batch schema (numpy int32, every array [B, T]):

    tokens       token ids; PAD_ID on padding
    targets      the next token of the same segment, 0 where there is none
    loss_mask    1 exactly where `targets` holds a real next token (float32 weights
                 instead when a chat run down-weights reasoning: jaxlm.data.think)
    segment_ids  1, 2, ... per packed piece within a row; 0 = padding
    positions    position within the piece, 0 at every piece start and on padding

A document is `[BOS] + encode(text) + [EOS]`. Documents longer than T are cut into
pieces of at most T tokens before packing; every piece is its own segment (positions
restart), so attention never crosses a piece boundary. Grain's packers place pieces
into rows; targets and the mask are derived only after packing, from `segment_ids`,
so the last token of every segment is never trained to predict its neighbour.
"""

import functools
import sys
from collections.abc import Sequence
from typing import Literal, Protocol

import grain
import numpy as np

from jaxlm.data.long_text import encode_ids

PackerName = Literal["first_fit", "best_fit", "concat_then_split"]
PACKERS: tuple[str, ...] = ("first_fit", "best_fit", "concat_then_split")
BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions")

Row = dict[str, np.ndarray]
Batch = dict[str, np.ndarray]


class TextEncoder(Protocol):
    """What packing needs from a tokenizer (jaxlm.data.tokenizer.Tokenizer has it)."""

    bos_id: int | None  # None: the tokenizer's documents start without one (Qwen)
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


def document_prefix(tokenizer: TextEncoder) -> list[int]:
    """What starts every document: [BOS], or nothing for tokenizers without one."""
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]


def document_tokens(text: str, tokenizer: TextEncoder) -> np.ndarray:
    """`[BOS] + encode(text) + [EOS]` as int32 (no BOS when the tokenizer has none)."""
    prefix = document_prefix(tokenizer)
    ids = encode_ids(text, tokenizer)
    # Filled in place: unpacking `ids` into a list would hold ~36 bytes a token as
    # Python ints, where the int32 array needs 4 (one long line can be ~10^6 tokens).
    tokens = np.empty(len(prefix) + len(ids) + 1, dtype=np.int32)
    tokens[: len(prefix)] = prefix
    tokens[len(prefix) : -1] = ids
    tokens[-1] = tokenizer.eos_id
    return tokens


def split_long_document(tokens: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Cuts `tokens` into consecutive pieces of at most `max_len` tokens."""
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return [tokens[start : start + max_len] for start in range(0, len(tokens), max_len)]


class SplitLongDocuments(grain.experimental.FlatMapTransform):
    """Grain flat-map stage: one document to pieces that fit in a row.

    Every feature of the document (`tokens`, and `train_token` for SFT) is cut at the
    same places, so a piece's flags still line up with its tokens.
    """

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        # Only MapDataset flat-maps use max_fan_out (to index outputs); the IterDataset
        # flat-map used here accepts any number of pieces, as a long document needs.
        self.max_fan_out = sys.maxsize

    def flat_map(self, element: Row) -> list[Row]:
        n, T = len(element["tokens"]), self.seq_len
        return [{k: v[start : start + T] for k, v in element.items()} for start in range(0, n, T)]


def packed_batches(
    documents: grain.IterDataset,
    *,
    seq_len: int,
    batch_size: int,
    packer: PackerName = "first_fit",
    pad_id: int = 0,
    num_packing_bins: int | None = None,
    seed: int = 0,
    shuffle_bins: bool = True,
    shuffle_window: int = 0,
    features: Sequence[str] = ("tokens",),
) -> grain.IterDataset:
    """Documents `{"tokens": [BOS, ..., EOS]}` -> batches of the schema above.

    SFT documents also carry `train_token` (name it in `features`); the loss mask
    then covers only the tokens the model should learn to produce.

    Chains the stages below: split long documents -> (shuffle pieces) -> pack -> batch
    -> targets and mask. `num_packing_bins` (first_fit / best_fit) defaults to
    `batch_size`. `shuffle_window` > 0 shuffles pieces within windows of that many.
    """
    pieces = split_long_documents(documents, seq_len)
    if shuffle_window > 1:
        pieces = shuffle_pieces(pieces, window=shuffle_window, seed=seed)
    rows = pack_pieces(
        pieces,
        packer=packer,
        seq_len=seq_len,
        num_packing_bins=num_packing_bins or batch_size,
        pad_id=pad_id,
        seed=seed,
        shuffle_bins=shuffle_bins,
        features=features,
    )
    return batch_rows(rows, batch_size=batch_size, pad_id=pad_id)


def split_long_documents(documents: grain.IterDataset, seq_len: int) -> grain.IterDataset:
    """Stage: documents -> pieces of at most `seq_len` tokens."""
    return grain.experimental.FlatMapIterDataset(documents, SplitLongDocuments(seq_len))


def shuffle_pieces(pieces: grain.IterDataset, *, window: int, seed: int) -> grain.IterDataset:
    """Stage: shuffle pieces within windows of `window`.

    A long file becomes many consecutive pieces; packed as they come, one batch (and
    the next several) would hold slices of the same file, and the gradient noise of
    such correlated batches slows training markedly. Mixing pieces of ~`window` /
    (pieces per file) files decorrelates batches at the cost of `window` pieces held.
    """
    return grain.experimental.WindowShuffleIterDataset(pieces, window_size=window, seed=seed)


def pack_pieces(
    pieces: grain.IterDataset,
    *,
    packer: PackerName,
    seq_len: int,
    num_packing_bins: int,
    pad_id: int,
    seed: int = 0,
    shuffle_bins: bool = True,
    features: Sequence[str] = ("tokens",),
) -> grain.IterDataset:
    """Stage: pieces -> rows `{"tokens", "segment_ids", "positions"}` of length `seq_len`.

    `features` names the per-token arrays of each piece; besides `tokens` only
    `train_token` (SFT: 1 where the model learns to produce the token) is carried.

    first_fit / best_fit fill `num_packing_bins` rows at a time and pad what is left;
    concat_then_split fills rows completely, cutting a piece across two rows (the
    second part then starts a new segment at position 0).
    """
    length_struct = {name: seq_len for name in features}
    if packer in ("first_fit", "best_fit"):
        packer_cls = {
            "first_fit": grain.experimental.FirstFitPackIterDataset,
            "best_fit": grain.experimental.BestFitPackIterDataset,
        }[packer]
        packed = packer_cls(
            pieces,
            length_struct=length_struct,
            num_packing_bins=num_packing_bins,
            seed=seed,
            shuffle_bins=shuffle_bins,
        )
    elif packer == "concat_then_split":
        packed = grain.experimental.ConcatThenSplitIterDataset(pieces, length_struct=length_struct)
        packed = RestoreSliceTuples(packed)
    else:
        raise ValueError(f"unknown packer {packer!r}; choose one of {PACKERS}")
    return packed.map(functools.partial(packed_row, pad_id=pad_id))


class RestoreSliceTuples(grain.IterDataset):
    """Makes ConcatThenSplit state survive a JSON round trip (as Grain's checkpointing does).

    Grain 0.2.18's ConcatThenSplit iterator tests `slice != (-1, -1)` to know whether it
    holds a remainder; after JSON the slice is a list, so a restored iterator without a
    remainder would invent an empty one and drop a document. Turning the lists back
    into tuples on `set_state` fixes that and changes nothing else.
    """

    def __iter__(self) -> grain.DatasetIterator:
        return _RestoreSliceTuplesIterator(self._parent.__iter__())


class _RestoreSliceTuplesIterator(grain.DatasetIterator):
    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        slices = state["remainder_slices"]
        state = {**state, "remainder_slices": {key: tuple(sl) for key, sl in slices.items()}}
        self._parent.set_state(state)


def packed_row(element: Row, *, pad_id: int) -> Row:
    """Renames Grain's packed features to the batch schema and writes PAD_ID on padding."""
    segment_ids = element["tokens_segment_ids"].astype(np.int32)
    # Grain pads with zeros whatever the packer; the schema promises pad_id.
    tokens = np.where(segment_ids == 0, pad_id, element["tokens"]).astype(np.int32)
    row = {
        "tokens": tokens,
        "segment_ids": segment_ids,
        "positions": element["tokens_positions"].astype(np.int32),
    }
    if "train_token" in element:
        train_token = element["train_token"]  # int32 flags, or float32 loss weights
        row["train_token"] = np.where(segment_ids == 0, 0, train_token).astype(train_token.dtype)
    return row


def stack_rows(rows: Sequence[Row], *, batch_size: int, pad_id: int) -> Row:
    """Stacks packed rows; a short final batch is filled with all-padding rows."""
    batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    missing = batch_size - len(rows)
    if missing > 0:
        seq_len = batch["tokens"].shape[1]
        filler = padding_rows(missing, seq_len, pad_id=pad_id)
        for key in batch.keys() - filler.keys():  # e.g. train_token: nothing to train
            filler[key] = np.zeros((missing, seq_len), dtype=np.int32)
        batch = {key: np.concatenate([value, filler[key]]) for key, value in batch.items()}
    return batch


def padding_rows(num_rows: int, seq_len: int, *, pad_id: int) -> Row:
    """Rows with no real token: tokens PAD_ID, segment 0, position 0."""
    return {
        "tokens": np.full((num_rows, seq_len), pad_id, dtype=np.int32),
        "segment_ids": np.zeros((num_rows, seq_len), dtype=np.int32),
        "positions": np.zeros((num_rows, seq_len), dtype=np.int32),
    }


def padding_batch(batch_size: int, seq_len: int, *, pad_id: int = 0) -> Batch:
    """A full batch with no real token (loss_mask all 0), e.g. to keep hosts in step."""
    return add_targets_and_mask(padding_rows(batch_size, seq_len, pad_id=pad_id))


def add_targets_and_mask(rows: Row) -> Batch:
    """Adds `targets` and `loss_mask`: the next token wherever it is in the same segment.

    With a `train_token` feature (SFT), position t is trained only when token t + 1 is
    one the model should learn to produce; `train_token` itself is dropped, so every
    objective sees the same batch schema. A float `train_token` (loss weights, e.g. a
    down-weighted reasoning span: jaxlm.data.think) gives a float32 `loss_mask` holding
    the weight of each position's target; the losses multiply by it.
    """
    rows = dict(rows)
    train_token = rows.pop("train_token", None)
    tokens, segment_ids = rows["tokens"], rows["segment_ids"]
    has_next = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] != 0)
    weighted = train_token is not None and train_token.dtype.kind == "f"
    if train_token is None:
        trained = has_next
    elif weighted:
        trained = np.where(has_next, train_token[:, 1:], 0)
    else:
        trained = has_next & (train_token[:, 1:] != 0)
    loss_mask = np.zeros_like(segment_ids, dtype=np.float32 if weighted else np.int32)
    loss_mask[:, :-1] = trained
    targets = np.zeros_like(tokens, dtype=np.int32)
    targets[:, :-1] = np.where(has_next, tokens[:, 1:], 0)
    return {**rows, "targets": targets, "loss_mask": loss_mask}


def batch_rows(rows: grain.IterDataset, *, batch_size: int, pad_id: int) -> grain.IterDataset:
    """Stage: packed rows -> full batches of the schema (last one padded, never dropped)."""
    batches = rows.batch(
        batch_size, batch_fn=functools.partial(stack_rows, batch_size=batch_size, pad_id=pad_id)
    )
    return batches.map(add_targets_and_mask)


def real_token_fraction(batch: Batch) -> float:
    """Share of positions that hold a real token (segment_ids != 0)."""
    return float(np.mean(batch["segment_ids"] != 0))
