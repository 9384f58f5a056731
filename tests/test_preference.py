"""Preference pairs: [B, 2, T] batches whose loss mask covers only the final response."""

import json

import numpy as np
import pytest
from helpers.batches import ByteTokenizer

from jaxlm.data.chat import ChatFormatError, Message
from jaxlm.data.preference import PreferenceStats, parse_preference, preference_dataset
from jaxlm.data.tokenizer import IM_END_ID


def msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


SHARED = (("user", "hi"), ("assistant", "hey"), ("user", "joke?"))
MINIMIND = {
    "chosen": msgs(*SHARED, ("assistant", "good one")),
    "rejected": msgs(*SHARED, ("assistant", "no")),
}
PROMPT_FORMAT = {"prompt": "capital of France?", "chosen": "Paris", "rejected": "Rome"}


def decode(tok_ids):
    return bytes(t - 10 for t in tok_ids if t >= 10).decode("utf-8")


def batch_of(tmp_path, records, **kwargs):
    path = tmp_path / "pref.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    kwargs = {"seq_len": 96, "batch_size": 2, "shuffle": False, "repeat": False, **kwargs}
    return list(preference_dataset([path], ByteTokenizer(), **kwargs)), path


def test_both_formats_parse():
    chosen, rejected = parse_preference(PROMPT_FORMAT)
    assert chosen == [Message("user", "capital of France?"), Message("assistant", "Paris")]
    assert rejected[-1] == Message("assistant", "Rome")
    chosen, rejected = parse_preference(MINIMIND)
    assert len(chosen) == 4 and chosen[:3] == rejected[:3]


def test_batch_masks_exactly_the_final_response(tmp_path):
    (batch,), _ = batch_of(tmp_path, [MINIMIND, PROMPT_FORMAT])
    wheres = batch.pop("_where")  # which line each pair came from
    assert [w.rsplit(":", 1)[1] for w in wheres] == ["1", "2"]
    assert all(v.shape == (2, 2, 96) for v in batch.values())
    responses = [["good one", "no"], ["Paris", "Rome"]]
    for b in range(2):
        for c in range(2):
            targets = batch["targets"][b, c][batch["loss_mask"][b, c] == 1].tolist()
            assert targets[-1] == IM_END_ID
            assert decode(targets[:-1]) == responses[b][c]  # earlier "hey" is prompt
    # chosen and rejected share the prompt token for token
    first_trained = np.argmax(batch["loss_mask"][0, 0])
    assert (batch["tokens"][0, 0, :first_trained] == batch["tokens"][0, 1, :first_trained]).all()


def test_short_last_batch_is_padded_with_empty_pairs(tmp_path):
    (batch,), _ = batch_of(tmp_path, [PROMPT_FORMAT], batch_size=2)
    assert batch["loss_mask"][1].sum() == 0 and batch["segment_ids"][1].sum() == 0
    assert batch["loss_mask"][0].sum() > 0


def test_truncated_away_response_is_skipped_and_counted(tmp_path):
    stats = PreferenceStats()
    long_prompt = {"prompt": "x" * 200, "chosen": "a", "rejected": "b"}
    batches, _ = batch_of(tmp_path, [long_prompt, PROMPT_FORMAT], stats=stats)
    assert (stats.pairs, stats.encoded, stats.skipped) == (2, 1, 1)
    assert sum(int(b["loss_mask"].sum() > 0) for b in batches) == 1


def test_bad_records_name_file_and_line(tmp_path):
    with pytest.raises(ChatFormatError, match=r"pref\.jsonl:2: a preference record needs"):
        batch_of(tmp_path, [PROMPT_FORMAT, {"chosen": "only"}])
    no_answer = {"chosen": msgs(("user", "q")), "rejected": msgs(("user", "q"))}
    with pytest.raises(
        ChatFormatError, match=r"pref\.jsonl:1: 'chosen' must end with an assistant"
    ):
        batch_of(tmp_path, [no_answer])
