"""Pretraining on jsonl text records through the spec-driven pipeline (`jsonl:PATH`):
every token once, empty documents counted, a wrong text field named with file:line."""

import collections
import json

import pytest
from helpers.batches import ByteTokenizer

from jaxlm.data.counters import DataTotals
from jaxlm.data.packing import document_tokens
from jaxlm.data.pipeline import dataset_from_specs
from jaxlm.errors import InputError

TEXTS = ["hello world", "", "a much longer document " * 6, "   ", "短い文書 🙂", "last one"]


def write(tmp_path, records, name="pre.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return path


def _one_pass(path, **kwargs):
    kwargs = {"seq_len": 32, "batch_size": 2, "shuffle": False, "repeat": False, **kwargs}
    return dataset_from_specs(f"jsonl:{path}", ByteTokenizer(), split="all", **kwargs)


@pytest.mark.parametrize("packer", ["first_fit", "concat_then_split"])
def test_one_pass_keeps_every_token_and_counts_empty_documents(tmp_path, packer):
    path = write(tmp_path, [{"text": t, "id": i} for i, t in enumerate(TEXTS)])
    seen, totals = collections.Counter(), DataTotals()
    for batch in _one_pass(path, packer=packer):
        batch = totals.pop_from(batch)
        seen.update(batch["tokens"][batch["segment_ids"] != 0].tolist())
    expected = collections.Counter()
    for t in TEXTS:
        if t.strip():
            expected.update(document_tokens(t, ByteTokenizer()).tolist())
    assert seen == expected
    assert totals.as_dict()["documents"] == 4
    assert totals.as_dict()["empty_documents"] == 2


def test_custom_text_field_and_missing_field_error(tmp_path):
    path = write(tmp_path, [{"content": "abc"}, {"content": "def"}])
    (batch,) = list(_one_pass(path, seq_len=16, batch_size=1, text_field="content"))
    assert sorted(set(batch["segment_ids"][0].tolist()) - {0}) == [1, 2]  # both in one row
    with pytest.raises(InputError, match=rf"{path}:1\b.*'text'"):
        list(_one_pass(path, seq_len=16, batch_size=1))
