"""Pretraining on jsonl text records: every token once, empty docs counted, errors named."""

import collections
import json

import pytest
from helpers.batches import ByteTokenizer

from jaxlm.data.jsonl import JsonlError
from jaxlm.data.packing import document_tokens
from jaxlm.data.text_records import DocumentStats, jsonl_pretrain_dataset

TEXTS = ["hello world", "", "a much longer document " * 6, "   ", "短い文書 🙂", "last one"]


def write(tmp_path, records, name="pre.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return path


@pytest.mark.parametrize("packer", ["first_fit", "concat_then_split"])
def test_one_pass_keeps_every_token_and_counts_empty_documents(tmp_path, packer):
    path = write(tmp_path, [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    tok, stats = ByteTokenizer(), DocumentStats()
    ds = jsonl_pretrain_dataset(
        [path], tok, seq_len=32, batch_size=2, packer=packer, shuffle=False, repeat=False,
        stats=stats,
    )  # fmt: skip
    seen = collections.Counter()
    for batch in ds:
        seen.update(batch["tokens"][batch["segment_ids"] != 0].tolist())
    expected = collections.Counter()
    for t in TEXTS:
        if t.strip():
            expected.update(document_tokens(t, tok).tolist())
    assert seen == expected
    assert (stats.documents, stats.empty) == (6, 2)


def test_custom_text_field_and_missing_field_error(tmp_path):
    path = write(tmp_path, [{"content": "abc"}, {"content": "def"}])
    batches = list(
        jsonl_pretrain_dataset(
            [path], ByteTokenizer(), seq_len=16, batch_size=1, text_field="content",
            shuffle=False, repeat=False,
        )
    )  # fmt: skip
    (batch,) = batches  # both short documents fit one row
    assert sorted(set(batch["segment_ids"][0].tolist()) - {0}) == [1, 2]
    with pytest.raises(
        JsonlError, match=rf"{path}:1: expected an object with a string field 'text'"
    ):
        list(
            jsonl_pretrain_dataset([path], ByteTokenizer(), seq_len=16, batch_size=1, repeat=False)
        )
