"""Two JAX processes on 127.0.0.1 read disjoint shards that cover the
data, and every process yields the same number of evaluation batches."""

import json

import pytest
from test_multihost import launch

from jaxlm.config import Config, DataConfig
from jaxlm.data.sources import open_source
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.source_spec import parse_source

WORKER = "tests/helpers/multihost_data.py"


def _write_jsonl(path, count, long_every_other: bool):
    with path.open("w") as f:
        for i in range(count):
            words = 300 if long_every_other and i % 2 == 0 else 5
            f.write(json.dumps({"text": f"doc {i:03d}: " + "lorem ipsum " * words}) + "\n")


@pytest.mark.timeout(300)
def test_two_processes_read_disjoint_shards_with_equal_batch_counts(tmp_path):
    train_path, eval_path = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    _write_jsonl(train_path, 400, long_every_other=False)  # 3 batches: far less than an epoch
    # Even documents are long: process 0 (documents 0, 2, ...) needs more batches.
    _write_jsonl(eval_path, 21, long_every_other=True)
    texts = [line for line in eval_path.read_text().splitlines()]
    tokenizer = train_tokenizer(texts, tmp_path / "tok", vocab_size=300, max_chars=100_000)
    cfg = Config(
        data=DataConfig(
            sources=f"jsonl:{train_path}",
            eval_sources=f"jsonl:{eval_path}",
            tokenizer=str(tokenizer.path),
            tokenizer_vocab_size=300,
            seq_len=64,
            batch_size=4,
            shuffle_window=4,
        )
    )
    config_path = tmp_path / "config.json"
    config_path.write_text(cfg.to_json())
    first, second = launch(2, tmp_path, worker=WORKER, args=[str(config_path)])

    assert first["eval_batches"] == second["eval_batches"]
    assert first["eval_batches_with_data"] > second["eval_batches_with_data"]  # padded
    assert set(first["eval_documents"]).isdisjoint(second["eval_documents"])
    assert sorted(first["eval_documents"] + second["eval_documents"]) == list(range(21))
    # Three training batches are less than an epoch: no document on both processes.
    assert set(first["train_documents"]).isdisjoint(second["train_documents"])
    trained = len(open_source(parse_source(f"jsonl:{train_path}")))
    assert 0 < len(set(first["train_documents"]) | set(second["train_documents"])) <= trained
