"""train.epochs over chat and preference data: one epoch counts what one pass packs.

The text case runs end to end in tests/test_cli_from_flags.py; here the post-training
pipelines are counted without a run (no JAX): every preference pair is one sequence,
and a chat epoch packs every conversation once.
"""

import json

from helpers.runs import make_tokenizer

from jaxlm.config import Config, apply_overrides
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.training.epochs import count_sequences, steps_for_epochs
from jaxlm.training.tasks import task_for


def turns(i: int, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": "简短回答。"},
        {"role": "user", "content": f"{i}加{i}等于几？"},
        {"role": "assistant", "content": answer},
    ]


def config(tmp_path, fmt: str, source: str, tokenizer) -> Config:
    return apply_overrides(
        Config(),
        [
            f"data.format={fmt}",
            f"data.sources=jsonl:{source}",
            f"data.eval_sources=jsonl:{source}",
            f"data.tokenizer={tokenizer.path}",
            f"model.vocab_size={tokenizer.vocab_size}",
            "data.batch_size=4",
            "train.epochs=1.5",
        ],
    )


def write(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def test_a_preference_epoch_is_every_pair_once(tmp_path):
    tokenizer = Tokenizer.load(make_tokenizer(tmp_path))
    pairs = [{"chosen": turns(i, f"{2 * i} 🙂"), "rejected": turns(i, "不知道")} for i in range(13)]
    write(tmp_path / "dpo.jsonl", pairs)
    cfg = config(tmp_path, "preference", tmp_path / "dpo.jsonl", tokenizer)
    assert count_sequences(task_for(cfg).one_epoch(tokenizer)) == 13
    assert steps_for_epochs(1.5, 13, 4) == 5  # 19.5 pairs / 4 = 4.875, rounded up


def test_a_chat_epoch_packs_every_conversation_once(tmp_path):
    tokenizer = Tokenizer.load(make_tokenizer(tmp_path))
    conversations = [{"conversations": turns(i, f"等于{2 * i}。")} for i in range(20)]
    write(tmp_path / "sft.jsonl", conversations)
    cfg = config(tmp_path, "chat", tmp_path / "sft.jsonl", tokenizer)
    batches = list(task_for(cfg).one_epoch(tokenizer))
    rows = count_sequences(batches)
    # Short conversations are never cut: each is one segment of one row, exactly once,
    # and the rows counted are those that hold any.
    segments = sum(len(set(row[row != 0].tolist())) for b in batches for row in b["segment_ids"])
    filled = sum(int(row.any()) for b in batches for row in b["segment_ids"])
    assert segments == 20 and rows == filled and 0 < rows < 20
