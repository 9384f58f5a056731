"""`data.think_loss_weight` through the training loop: SFT and DPO runs on reasoning data.

A fractional weight makes loss_mask float32; the jitted, sharded steps, the eval
batches (with their all-padding fillers) and the reported token counts must all carry
it: the held-out "tokens" of an SFT run is the weight sum, computed here on its own.
"""

import json

import numpy as np
import pytest
from helpers.runs import make_tokenizer
from test_train_loop import SMALL

from jaxlm.config import Config, apply_overrides
from jaxlm.data.chat import encode_conversation, parse_conversation
from jaxlm.data.sources.split import kept_indices, record_keys
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.training.loop import train

BASE = [*SMALL, "model.max_seq_len=64", "data.seq_len=64"]


def _reasoning(i: int) -> list[dict]:
    return [
        {"role": "system", "content": "先想后答 🙂"},
        {"role": "user", "content": f"{i}+1?"},
        {"role": "assistant", "content": f"<think>{i} 加 1</think>{i + 1}"},
    ]


@pytest.fixture
def tokenizer_path(tmp_path):
    return make_tokenizer(tmp_path)


# ~40-80 s on 2 busy cores (compiling the steps). By default, test_think_weight.py checks
# the weighted loss_mask of SFT batches and the loss sums it gives.
@pytest.mark.slow
def test_sft_reports_the_weighted_held_out_tokens(tokenizer_path, tmp_path):
    records = [{"conversations": _reasoning(i)} for i in range(30)]
    data = tmp_path / "r1.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    overrides = [
        *BASE,
        "data.format=chat",
        f"data.sources=jsonl:{data}",
        "data.val_fraction=0.3",
        "data.think_loss_weight=0.25",
        f"data.tokenizer={tokenizer_path}",
        "train.steps=3",
    ]
    result = train(apply_overrides(Config(), overrides), tmp_path / "sft")
    tokenizer = Tokenizer.load(tokenizer_path)
    expected = 0.0
    for i in kept_indices(record_keys("r1.jsonl", len(records)), "validation", 0.3):
        messages = parse_conversation(records[i])
        enc = encode_conversation(messages, tokenizer, max_len=64, think_weight=0.25)
        expected += float(np.sum(enc.train_token))
    assert expected % 1 != 0  # some think tokens held out: a weight sum, not a count
    assert result.final_eval["tokens"] == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(result.final_eval["loss"])


# ~60 s on 2 busy cores. By default, test_think_weight.py checks the weights of pair
# responses and the float32 fillers of preference eval sets.
@pytest.mark.slow
def test_dpo_trains_with_a_fractional_think_weight(tokenizer_path, tmp_path):
    pairs = []
    for i in range(24):
        turns = _reasoning(i)
        wrong = {"role": "assistant", "content": f"<think>猜</think>{i + 2}"}
        pairs.append({"chosen": turns, "rejected": [*turns[:2], wrong]})
    data = tmp_path / "dpo.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    overrides = [
        *BASE,
        "data.format=preference",
        f"data.sources=jsonl:{data}",
        "data.val_fraction=0.3",
        "data.think_loss_weight=0.5",
        f"data.tokenizer={tokenizer_path}",
        "train.steps=2",
    ]
    result = train(apply_overrides(Config(), overrides), tmp_path / "dpo")
    assert result.final_eval["pairs"] > 0 and np.isfinite(result.final_eval["loss"])
