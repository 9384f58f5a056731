"""Weighted mixtures of chat and preference sources: shares in the batches, resume, eval.

`jsonl:main.jsonl@1,jsonl:identity.jsonl@3` draws records like a text mixture does;
without any written weight the files stay one pool (each record equally likely).
"""

import collections
import itertools
import json
import math

import numpy as np
import pytest
from helpers.batches import ByteTokenizer, byte_decode

from jaxlm.config import Config, apply_overrides
from jaxlm.data import posttrain_inputs, run_inputs
from jaxlm.data.preference import WHERE_KEY
from jaxlm.errors import InputError

MAIN, IDENTITY = 40, 4  # conversations per file: a small identity set among SFT data


def _chat(tag: str, i: int) -> dict:
    """A multi-turn MiniMind conversation whose system prompt names its file (`tag`)."""
    return {
        "conversations": [
            {"role": "system", "content": f"{tag}"},
            {"role": "user", "content": f"问题{i} 🙂"},
            {"role": "assistant", "content": f"答{i}"},
        ]
    }


def _pair(tag: str, i: int) -> dict:
    prompt = [{"role": "system", "content": tag}, {"role": "user", "content": f"问{i}?"}]
    return {
        "chosen": [*prompt, {"role": "assistant", "content": f"好{i} 👍"}],
        "rejected": [*prompt, {"role": "assistant", "content": f"坏{i}"}],
    }


def _files(tmp_path, make):
    for name, count in (("main", MAIN), ("identity", IDENTITY)):
        lines = [json.dumps(make(name, i), ensure_ascii=False) for i in range(count)]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _config(tmp_path, data_format: str, sources: str) -> Config:
    return apply_overrides(
        Config(),
        [
            f"data.format={data_format}",
            f"data.sources={sources.format(d=tmp_path)}",
            "data.seq_len=96",
            "data.batch_size=4",
            "data.val_fraction=0.1",
        ],
    )


def _stream(cfg, pipeline):
    return posttrain_inputs.posttrain_train_stream(
        cfg, ByteTokenizer(), 0, 1, cfg.data.batch_size, pipeline=pipeline
    )


def _conversations_by_file(batches) -> collections.Counter:
    """How many packed conversations of each file the batches hold (by system prompt)."""
    found = collections.Counter()
    for batch in batches:
        for row, segments in enumerate(batch["segment_ids"]):
            for segment in np.unique(segments[segments != 0]):
                text = byte_decode(batch["tokens"][row][segments == segment])
                found["identity" if text.startswith("system\nidentity") else "main"] += 1
    return found


def _within_bound(count: int, n: int, p: float, held: int) -> bool:
    """`count` of `n` records is what share `p` gives, within a sound bound.

    Grain's weighted mix interleaves deterministically (its count never strays more
    than a record or two from n * p), so drawing independently is the worse case:
    there the count is Binomial(n, p), and 5 standard deviations leave a chance
    below 1e-6 of a false failure. `held` adds what the packer may still hold back
    when the batches are cut off (records read but not yet in a batch).
    """
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + held


def test_chat_batches_follow_the_weights(tmp_path):
    _files(tmp_path, _chat)
    cfg = _config(tmp_path, "chat", "jsonl:{d}/main.jsonl@1,jsonl:{d}/identity.jsonl@3")
    found = _conversations_by_file(
        itertools.islice(_stream(cfg, posttrain_inputs.chat_pipeline), 50)
    )
    n = sum(found.values())
    assert n >= 150, found  # enough records for the bound to tell 3/4 from the pool's share
    # The packer fills batch_size rows at a time; at most a batch's worth is held back.
    held = cfg.data.batch_size * 4
    assert _within_bound(found["identity"], n, 3 / 4, held), found
    # An unweighted pool would give the identity set 4/40 of the records: far outside.
    assert not _within_bound(found["identity"], n, IDENTITY / (IDENTITY + MAIN), held)


def test_unweighted_chat_files_stay_one_pool(tmp_path):
    _files(tmp_path, _chat)
    cfg = _config(tmp_path, "chat", "jsonl:{d}/main.jsonl,jsonl:{d}/identity.jsonl")
    found = _conversations_by_file(
        itertools.islice(_stream(cfg, posttrain_inputs.chat_pipeline), 150)
    )
    n = sum(found.values())
    # Training lines only: the held-out tenth is never read (stable per line).
    lines = posttrain_inputs.lines_per_file(cfg)
    assert list(lines) == [f"{tmp_path}/main.jsonl", f"{tmp_path}/identity.jsonl"]
    p = IDENTITY / (IDENTITY + MAIN)
    assert _within_bound(found["identity"], n, p, cfg.data.batch_size * 4), found


def test_preference_batches_follow_the_weights(tmp_path):
    _files(tmp_path, _pair)
    cfg = _config(tmp_path, "preference", "jsonl:{d}/main.jsonl@1,jsonl:{d}/identity.jsonl@1")
    batches = itertools.islice(_stream(cfg, posttrain_inputs.pair_pipeline), 50)
    found = collections.Counter(
        where.split(":")[0].rsplit("/", 1)[1] for b in batches for where in b[WHERE_KEY]
    )
    n = sum(found.values())
    assert n == 200  # pairs are not packed: batch_size pairs per batch
    # Equal weights: half each (the pool would give the identity set 1/11).
    assert _within_bound(found["identity.jsonl"], n, 1 / 2, 0), found


def test_a_weighted_chat_stream_resumes_exactly(tmp_path):
    _files(tmp_path, _chat)
    cfg = _config(tmp_path, "chat", "jsonl:{d}/main.jsonl@2,jsonl:{d}/identity.jsonl@1")
    uninterrupted = list(itertools.islice(_stream(cfg, posttrain_inputs.chat_pipeline), 30))
    first = iter(_stream(cfg, posttrain_inputs.chat_pipeline))
    for _ in range(17):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    resumed = iter(_stream(cfg, posttrain_inputs.chat_pipeline))
    resumed.set_state(state)
    for expected in uninterrupted[17:]:
        got = next(resumed)
        for key in ("tokens", "loss_mask", "segment_ids", "positions", "targets"):
            np.testing.assert_array_equal(got[key], expected[key])


def test_evaluation_reads_every_held_out_pair_once_and_weights_are_fingerprinted(tmp_path):
    _files(tmp_path, _pair)
    cfg = _config(tmp_path, "preference", "jsonl:{d}/main.jsonl@5,jsonl:{d}/identity.jsonl@1")
    held_out = [
        where
        for batch in posttrain_inputs.posttrain_eval_batches(
            cfg, ByteTokenizer(), 0, 1, 4, pipeline=posttrain_inputs.pair_pipeline
        )
        for where in batch.get(WHERE_KEY, [])
    ]
    assert len(held_out) == len(set(held_out))
    # A resume with other weights would read other records: the weights are in the keys.
    assert list(posttrain_inputs.lines_per_file(cfg)) == [
        f"{tmp_path}/main.jsonl@5",
        f"{tmp_path}/identity.jsonl@1",
    ]
    saved = posttrain_inputs.jsonl_fingerprint(cfg, "tok")
    other = _config(tmp_path, "preference", "jsonl:{d}/main.jsonl@4,jsonl:{d}/identity.jsonl@1")
    now = posttrain_inputs.jsonl_fingerprint(other, "tok")
    with pytest.raises(InputError, match=r"main.jsonl@5: \d+ -> absent documents"):
        run_inputs.check_fingerprint(saved, now, "ckpt", other, print)
