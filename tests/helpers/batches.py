"""Synthetic batches in the batch schema (jaxlm.data.packing), for step and sharding tests."""

import numpy as np


def packed_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0):
    """Rows packing documents of uneven length (2-8 tokens), padding (segment 0) at the end
    of some rows, targets shifted within each document, loss_mask 0 on padding and on
    each document's last token."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab_size, (batch_size, seq_len)).astype(np.int32)
    segment_ids = np.zeros((batch_size, seq_len), np.int32)
    positions = np.zeros((batch_size, seq_len), np.int32)
    for b in range(batch_size):
        start, seg = 0, 1
        while start < seq_len - 2:
            n = min(int(rng.integers(2, 9)), seq_len - start)
            segment_ids[b, start : start + n] = seg
            positions[b, start : start + n] = np.arange(n)
            start, seg = start + n, seg + 1
    targets = np.roll(tokens, -1, axis=1)
    next_same = np.roll(segment_ids, -1, axis=1) == segment_ids
    next_same[:, -1] = False
    loss_mask = ((segment_ids != 0) & next_same).astype(np.int32)
    return {
        "tokens": tokens,
        "targets": targets,
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
    }


BOS, EOS = 1, 2


class ByteTokenizer:
    """Stand-in tokenizer for data tests: one token per UTF-8 byte, past the special ids."""

    pad_id, bos_id, eos_id = 0, BOS, EOS

    def encode(self, text):
        return [byte + 10 for byte in text.encode("utf-8")]

    encode_literal = encode  # bytes never spell a special id


def byte_decode(ids) -> str:
    """Inverse of ByteTokenizer.encode; special ids decode to nothing."""
    return bytes(i - 10 for i in ids if i >= 10).decode("utf-8", errors="replace")
